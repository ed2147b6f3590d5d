"""Kill-and-restart soak: a real hook against a `lowdose serve` that is SIGKILLed again and again.

    python benchmarks/soak.py [--frames 10000] [--kills 20] [--rate 150] [--size 64] [--seed 1]
                              [--layout sharded|chunk_per_frame] [--shard-frames N]

A `lowdose serve` subprocess (identity denoiser, temporary directories, the shipped timeouts and
fsync) is fed by a real :class:`FrameSender` with ``--frames`` frames whose pixels are derived from
their seq. It is SIGKILLed ``--kills`` times at random moments, each followed by a pause of 0.1-3 s
before a fresh daemon starts: some while frames stream, some right after a fresh daemon logs that it
resumed the run (during its start-up), and the last one right after the hook heard the run's
``finished`` ack. Once the run is finalized the daemon is stopped and the store alone is checked:

* lost: seqs below the end with no record in ``frames.jsonl`` (or whose chunk is missing);
* duplicated: seqs recorded more than once (writes are idempotent by seq, rule 2);
* corrupted: raw frames not bit-identical to what was sent;
* index mismatches (sharded stores): shard index entries that are not where the records say the frame's
  bytes are, or that name a frame no record names (the index after recovery must match the data);
* restored: frames the summary counts as restored; finalized: the summary is there;
* spool: frames left in the hook's spool (rule 2: it must end empty).

The last line is ``soak: <intact>/<sent> intact ...``; the exit status is 0 only when every frame is
stored intact, once, restored, the run finalized and the spool empty.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
import zarr

from lowdose.demo import DaemonProcess
from lowdose.plugins.acquisition.sender import FinishReport, FrameSender
from lowdose.wire.hook_config import HookConfig
from lowdose.wire.protocol import Start

RESTART_PAUSE_S = (0.1, 3.0)


def pixels(seq: int, size: int) -> np.ndarray:
    """A frame that says which seq it is: a ramp shifted by an odd multiple of seq (distinct below 2**16),
    and the seq itself in the first two pixels."""
    px = ((np.arange(size * size, dtype=np.uint32) + seq * 131) & 0xFFFF).astype(np.uint16).reshape(size, size)
    px[0, 0], px[0, 1] = seq & 0xFFFF, seq >> 16
    return px


@dataclass
class SoakResult:
    sent: int
    intact: int
    lost: int
    duplicated: int
    corrupted: int
    index_mismatches: int  # shard index entries that disagree with the records (sharded stores)
    restored: int
    finalized: bool
    spooled: int
    kills: int
    kills_during_resume: int
    kill_after_end_ack: bool
    report_ok: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.intact == self.sent and self.lost == self.duplicated == self.corrupted == 0
                and self.index_mismatches == 0
                and self.restored == self.sent and self.finalized and self.spooled == 0)

    def line(self) -> str:
        return (f"soak: {self.intact}/{self.sent} intact ({self.intact / max(1, self.sent):.4f}), "
                f"lost {self.lost}, duplicated {self.duplicated}, corrupted {self.corrupted}, "
                f"index mismatches {self.index_mismatches}, "
                f"restored {self.restored}, finalized {'yes' if self.finalized else 'NO'}, "
                f"spool {self.spooled}, kills {self.kills} ({self.kills_during_resume} during resume, "
                f"{'one' if self.kill_after_end_ack else 'none'} after the end ack), "
                f"hook report {'ok' if self.report_ok else 'NOT ok'}, {self.seconds:.0f} s")


class _Daemons:
    """The daemon of the moment: started, killed and restarted, each with its own log."""

    def __init__(self, work: Path, rng: random.Random, pauses: tuple[float, float], storage: dict | None = None):
        self.work = work
        self.rng = rng
        self.pauses = pauses
        self.endpoint = f"ipc://{work}/daemon.sock"
        self.config = work / "config.yaml"
        self.output = work / "data"
        self.config.write_text(yaml.safe_dump({
            "server": {"endpoints": [self.endpoint], "preview_endpoint": None},
            "storage": {"output_dir": str(self.output), **(storage or {})},
            "restore": {"denoiser": "identity"},
        }))
        self.n = 0
        self.kills = 0
        self.during_resume = 0
        self.proc: DaemonProcess | None = None

    def start(self, wait: bool = True) -> None:
        self.n += 1
        self.proc = DaemonProcess(self.config, self.work / f"daemon-{self.n}.log", self.endpoint)
        if wait:
            self.proc.wait_ready()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.stop(sig=signal.SIGKILL)
        self.kills += 1

    def kill_and_restart(self, during_resume: bool) -> None:
        self.kill()
        time.sleep(self.rng.uniform(*self.pauses))
        if during_resume and self._start_until_resumed():
            self.during_resume += 1
            self.kill()
            time.sleep(self.rng.uniform(*self.pauses))
        self.start()

    def _start_until_resumed(self, timeout: float = 60.0) -> bool:
        """Start a daemon and return as soon as its log says it resumed the run (it is still starting up)."""
        self.start(wait=False)
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.proc.poll() is None:
            if "resumed unfinished run" in self.proc.log_path.read_text():
                return True
            time.sleep(0.005)
        return False

    def stop(self) -> int:
        return self.proc.stop() if self.proc is not None else 0


def soak(frames: int = 10_000, kills: int = 20, *, rate: float = 150.0, size: int = 64, seed: int = 1,
         pauses: tuple[float, float] = RESTART_PAUSE_S, finish_timeout: float = 600.0,
         finalize_timeout: float = 120.0, work: Path | None = None, storage: dict | None = None) -> SoakResult:
    """Run the soak (module docstring); ``pauses`` bound the time between a kill and the next start;
    ``storage``: keys of the config's storage section (``layout``, ``shard_frames``)."""
    rng = random.Random(seed)
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="lowdose-soak-")) if work is None else work
    t0 = time.monotonic()
    daemons = _Daemons(work, rng, pauses, storage)
    run = f"soak-{seed}"
    notes: list[str] = []
    try:
        daemons.start()
        cfg = HookConfig(endpoint=daemons.endpoint, spool_dir=work / "spool")  # shipped timeouts
        sender = FrameSender(cfg, Start(run=run, shape=(size, size), dtype="uint16", instrument="soak",
                                        source="benchmarks/soak.py", sizes={"t": frames}))
        box: dict[str, FinishReport | None] = {}
        producer = threading.Thread(target=_produce, args=(sender, frames, rate, size, finish_timeout, box),
                                    daemon=True)
        sender.start()
        producer.start()
        # spread the kills over the acquisition; the last one waits for the end ack. The gap is
        # drawn from the time left, since each restart itself takes seconds of it.
        acquisition_ends = time.monotonic() + frames / rate
        while daemons.kills < kills - 1 and producer.is_alive():
            gap = max(0.2, (acquisition_ends - time.monotonic()) / max(1, kills - 1 - daemons.kills))
            producer.join(rng.uniform(0.1, 1.2 * gap))
            if producer.is_alive():
                # the first kill always hits a start-up, the others at random
                resume = (daemons.kills == 0 or rng.random() < 0.3) and daemons.kills < kills - 2
                daemons.kill_and_restart(during_resume=resume)
        producer.join()
        report = box.get("report")
        after_end = report is not None and report.finished and daemons.kills < kills
        if after_end:
            daemons.kill_and_restart(during_resume=False)  # at once: the store may not be finalized yet
        if report is None or not report.ok:
            notes.append(f"hook report: {report}")
        finalized = _wait_finalized(daemons.output / f"{run}.ome.zarr", timeout=finalize_timeout)
        code = daemons.stop()
        if code != 0:
            notes.append(f"the last daemon exited with {code}")
        result = _verify(daemons.output / f"{run}.ome.zarr", frames, size, work / "spool")
        return SoakResult(sent=frames, finalized=finalized, kills=daemons.kills,
                          kills_during_resume=daemons.during_resume, kill_after_end_ack=after_end,
                          report_ok=report is not None and report.ok, seconds=time.monotonic() - t0,
                          notes=notes + result.pop("notes"), **result)
    finally:
        if daemons.proc is not None and daemons.proc.proc.poll() is None:
            daemons.proc.stop(sig=signal.SIGKILL)
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def _produce(sender: FrameSender, frames: int, rate: float, size: int, finish_timeout: float, box: dict) -> None:
    t0 = time.monotonic()
    for seq in range(frames):
        delay = t0 + seq / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sender.submit(pixels(seq, size), {"t": seq})
    # long enough to ride out the kills that still come while the last frames drain
    box["report"] = sender.finish(timeout=finish_timeout)


def _wait_finalized(store: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "summary" in _attrs(store):
            return True
        time.sleep(0.2)
    return False


def _attrs(store: Path) -> dict:
    try:
        return json.loads((store / "zarr.json").read_text())["attributes"]["lowdose"]
    except (OSError, ValueError, KeyError):
        return {}


def _records(store: Path) -> Path:
    """The store's frames.jsonl: in lowdose/records/, or where stores before it kept it."""
    new = store / "lowdose" / "records" / "frames.jsonl"
    return new if new.exists() else store / "lowdose" / "frames.jsonl"


def shard_index_mismatches(store: Path, recs: list[dict]) -> int:
    """Frames whose shard index entry is not where their (last) record says their bytes are; 0 unsharded."""
    storage = _attrs(store).get("storage") or {}
    if storage.get("layout") != "sharded":
        return 0
    n = int(storage["shard_frames"])
    last = {(r["t"], r["c"], r["z"]): r["at"] for r in recs if r.get("p", 0) == 0}
    bad = 0
    indexes: dict[Path, np.ndarray] = {}
    for (t, c, z), at in last.items():
        path = store / "raw" / "0" / "c" / str(t // n) / str(c) / str(z) / "0" / "0"
        if path not in indexes:
            indexes[path] = np.frombuffer(path.read_bytes()[: 16 * n], "<u8").reshape(n, 2)
        bad += indexes[path][t % n].tolist() != list(at)
    # and no entry names a frame that has no record
    named = sum(int((ix[:, 1] != 2**64 - 1).sum()) for ix in indexes.values())
    return bad + max(0, named - len(last))


def _verify(store: Path, frames: int, size: int, spool: Path) -> dict:
    """What the store alone says: records, chunks (read with zarr-python), shard indexes, summary; the spool."""
    notes: list[str] = []
    recs = [json.loads(line) for line in _records(store).read_text().splitlines() if line]
    per_seq = Counter(r["seq"] for r in recs)
    at = {r["seq"]: r["t"] for r in recs}
    raw = zarr.open_array(str(store / "raw" / "0"), mode="r")
    data = raw[:, 0, 0] if raw.shape[0] else np.zeros((0, size, size), np.uint16)
    lost = corrupted = intact = 0
    for seq in range(frames):
        if seq not in at or at[seq] >= data.shape[0]:
            lost += 1
            continue
        if at[seq] == seq and np.array_equal(data[seq], pixels(seq, size)):
            intact += 1
        else:
            corrupted += 1
    duplicated = sum(n - 1 for n in per_seq.values() if n > 1)
    mismatched = shard_index_mismatches(store, recs)
    if mismatched:
        notes.append(f"{mismatched} shard index entries disagree with the records")
    summary = _attrs(store).get("summary") or {}
    if summary.get("missing_seq_count"):
        notes.append(f"summary: {summary['missing_seq_count']} seqs missing")
    spooled = sum(1 for p in spool.rglob("*") if p.is_file()) if spool.exists() else 0
    return {"intact": intact, "lost": lost, "duplicated": duplicated, "corrupted": corrupted,
            "index_mismatches": mismatched,
            "restored": int(summary.get("frames_restored", 0)), "spooled": spooled, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--rate", type=float, default=150.0, help="frames per second the hook submits")
    ap.add_argument("--size", type=int, default=64, help="frames are size x size uint16")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--layout", choices=["sharded", "chunk_per_frame"], default=None, help="storage.layout")
    ap.add_argument("--shard-frames", type=int, default=None, help="storage.shard_frames")
    args = ap.parse_args(argv)
    storage = {k: v for k, v in (("layout", args.layout), ("shard_frames", args.shard_frames)) if v is not None}
    result = soak(args.frames, args.kills, rate=args.rate, size=args.size, seed=args.seed, storage=storage)
    for note in result.notes:
        print(f"note: {note}")
    print(result.line())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
