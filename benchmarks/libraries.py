"""Sharded append, side by side: lowdose's shard writer vs ome-writers' backends (tensorstore, zarr-python,
zarrs-python, acquire-zarr): speed, memory, and what survives a SIGKILL mid-shard.

    pip install -e ".[bench]" && python benchmarks/libraries.py [--frames 128] [--size 1024] [--shard 64]

Every writer appends ``--frames`` low-light uint16 frames along T, one frame per inner chunk, shards of
``--shard`` frames, blosc lz4 (bit-shuffle for lowdose; ome-writers picks its own shuffle), in its own
process, frame by frame, as an acquisition would. lowdose writes through ``RunStore.write_raw`` with
the shipped fsync (each frame durable before it returns; ``lowdose-nofsync``: ``storage.fsync`` off, the
footing the others are on, as none of them fsyncs); ome-writers through
``create_stream(settings).append(frame)``, as pymmcore-plus does.

* speed: frame bytes / seconds from the first append to the stream closed (everything on disk);
* memory: the writer process's highest RSS after an append, over its RSS before the first frame;
* crash: the writer is SIGKILLed once it has returned from 1.5 shards' worth of appends; the store is
  then read with zarr-python, and ``kept`` counts the frames that returned and read back bit-identical
  (the rest were lost although the writer had accepted them). lowdose's own store is reopened first, as
  a restarted daemon would, so its shard indexes are rebuilt from its records.

The baseline is lowdose's writer in the same run; the last line:
``libraries: <best other MB/s> / <lowdose MB/s> ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BACKENDS = ("tensorstore", "zarr-python", "zarrs-python", "acquire-zarr")


def frames_for(size: int, n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(100 + rng.poisson(8 + k, (size, size))).astype(np.uint16) for k in range(n)]


def frame_at(frames: list[np.ndarray], t: int) -> np.ndarray:
    f = frames[t % len(frames)].copy()
    f[0, 0] = t  # which frame it is
    return f


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


# ---------------------------------------------------------------------- the writer process
def worker(name: str, root: Path, n: int, size: int, shard: int) -> None:
    frames = frames_for(size)
    say = sys.stdout
    if name.startswith("lowdose"):
        from lowdose.daemon.config import StorageConfig
        from lowdose.daemon.store import RunStore
        from lowdose.wire.protocol import Frame, FrameIndex, Start

        start = Start(run="lib", shape=(size, size), dtype="uint16")
        store = RunStore.open(root, start, StorageConfig(shard_frames=shard, fsync=name == "lowdose"), "bench")
        base = peak = rss_mb()
        t0 = time.perf_counter()
        for t in range(n):
            store.write_raw([(Frame(run="lib", seq=t, index=FrameIndex(t=t), shape=(size, size), dtype="uint16"),
                              frame_at(frames, t))])
            peak = max(peak, rss_mb())
            print(f"W {t}", file=say, flush=True)
        store.close()
    else:
        import ome_writers as ow

        dims = [ow.Dimension(name="t", count=n, chunk_size=1, shard_size_chunks=shard, type="time"),
                ow.Dimension(name="y", count=size, chunk_size=size, type="space"),
                ow.Dimension(name="x", count=size, chunk_size=size, type="space")]
        settings = ow.AcquisitionSettings(root_path=str(root / "lib.ome.zarr"), dimensions=dims, dtype="uint16",
                                          compression="blosc-lz4", format=ow.OmeZarrFormat(backend=name),
                                          overwrite=True)
        stream = ow.create_stream(settings)
        base = peak = rss_mb()
        t0 = time.perf_counter()
        for t in range(n):
            stream.append(frame_at(frames, t))
            peak = max(peak, rss_mb())
            print(f"W {t}", file=say, flush=True)
        stream.close()
    dt = time.perf_counter() - t0
    print(f"DONE {dt} {peak - base}", file=say, flush=True)


# ---------------------------------------------------------------------- the parent
def run_worker(name: str, root: Path, n: int, size: int, shard: int, kill_after: int | None) -> tuple[int, str]:
    """Start a writer; SIGKILL it once ``kill_after`` appends returned. The last appended t and its last line."""
    proc = subprocess.Popen([sys.executable, __file__, "--worker", name, "--dir", str(root), "--frames", str(n),
                             "--size", str(size), "--shard", str(shard)], stdout=subprocess.PIPE, text=True)
    last, line = -1, ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("W "):
            last = int(line.split()[1])
            if kill_after is not None and last + 1 >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    return last, line.strip()


def kept_after_kill(name: str, root: Path, last: int, size: int) -> tuple[int, str]:
    """Frames 0..last read back bit-identical after the kill (lowdose: reopened first)."""
    import zarr

    frames = frames_for(size)
    if name.startswith("lowdose"):
        from lowdose.daemon.config import StorageConfig
        from lowdose.daemon.store import RunStore

        RunStore.reopen(root / "lib.ome.zarr", StorageConfig(), "bench").close()
        array = root / "lib.ome.zarr" / "raw" / "0"
    else:
        array = root / "lib.ome.zarr" / "0"
    try:
        data = np.asarray(zarr.open_array(array, mode="r")[:])
    except Exception as exc:  # noqa: BLE001 - an unreadable store is the finding
        return 0, f"unreadable: {type(exc).__name__}"
    data = data.reshape(data.shape[0], size, size) if data.size else np.zeros((0, size, size), np.uint16)
    kept = sum(1 for t in range(last + 1) if t < len(data) and np.array_equal(data[t], frame_at(frames, t)))
    return kept, ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--shard", type=int, default=64)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.dir, args.frames, args.size, args.shard)
        return 0

    base = Path(tempfile.mkdtemp(prefix="lowdose-libs-", dir=Path.cwd()))
    nbytes = args.frames * args.size * args.size * 2
    print(f"{args.frames} frames of {args.size}x{args.size} uint16 ({nbytes / 1e6:.0f} MB), shards of {args.shard} "
          f"frames, blosc lz4, {os.cpu_count()} CPUs")
    print(f"{'writer':14s} {'MB/s':>7s} {'peak RSS MB':>12s} {'killed after':>13s} {'kept':>6s}  notes")
    rows: dict[str, float] = {}
    try:
        for name in ("lowdose", "lowdose-nofsync", *BACKENDS):
            work = base / name
            work.mkdir()
            last, line = run_worker(name, work, args.frames, args.size, args.shard, None)
            if not line.startswith("DONE"):
                print(f"{name:14s} failed: {line}")
                continue
            _, dt, mem = line.split()
            mbs = nbytes / float(dt) / 1e6
            rows[name] = mbs
            shutil.rmtree(work)
            work.mkdir()
            kill_at = args.shard + args.shard // 2
            last, _ = run_worker(name, work, args.frames, args.size, args.shard, kill_at)
            kept, note = kept_after_kill(name, work, last, args.size)
            print(f"{name:14s} {mbs:7.0f} {float(mem):12.0f} {last + 1:13d} {kept:6d}  {note}")
            shutil.rmtree(work)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    others = {k: v for k, v in rows.items() if not k.startswith("lowdose")}
    best = max(others, key=others.get) if others else None
    if best and "lowdose" in rows:
        print(f"libraries: {others[best] / rows['lowdose']:.2f} best other ({best}, {others[best]:.0f} MB/s) / "
              f"lowdose ({rows['lowdose']:.0f} MB/s), sharded append frame by frame")
    print(json.dumps({"MB/s": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
