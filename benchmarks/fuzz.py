"""Fuzz: hostile messages at a `lowdose serve` process while a good client streams beside it.

One generator per failure class of the hostile-input issue (deep start maps, deep frame metadata,
indices and sizes that would size huge tables, c and z growing apart, frames after a run's end,
huge echoed fields, unknown runs, size and shape mismatches, wrong kinds and tags) plus random
garbage and randomly mutated valid headers. The daemon must answer each with an error and store
none of it, keep every frame of the good client (a FrameSender) bit-identical, and end with its
memory and thread count where they began.

    python benchmarks/fuzz.py --messages 100000

Last line: ``fuzz: <daemon RSS after/before> ...``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_daemon import start_daemon  # noqa: E402
from lowdose.wire import protocol as p  # noqa: E402

SHAPE = (4, 4)
PIX = b"\1" * 16


def nested_map(depth: int) -> bytes:
    return b"\x81\xa1a" * (depth - 1) + b"\x80"


def pack_with(fields: dict, **raw: bytes) -> bytes:
    out = bytearray(b"\xde" + (len(fields) + len(raw)).to_bytes(2, "big"))
    for k, v in fields.items():
        out += msgpack.packb(k) + msgpack.packb(v, use_bin_type=True)
    for k, v in raw.items():
        out += msgpack.packb(k) + v
    return bytes(out)


def start(run: str, **kw) -> dict:
    return p.Start(run=run, shape=SHAPE, dtype="uint8", **kw).model_dump(mode="json")


def frame(run: str, seq: int, **index) -> dict:
    return p.Frame(run=run, seq=seq, shape=SHAPE, dtype="uint8", index=p.FrameIndex(**index)).model_dump(mode="json")


# Runs the hostile client sets up legitimately (so it can then misuse them); the frames stored in
# them are exactly these, and no other hostile run may appear in the store.
SETUP = {"h-done": 2, "h-sized": 1, "h-apart": 1}


def setup_messages() -> list[list[bytes]]:
    msgs = [start("h-done"), frame("h-done", 0), frame("h-done", 1), p.End(run="h-done", frames=2).model_dump(),
            start("h-sized", sizes={"t": 2, "c": 2, "z": 2}), frame("h-sized", 0),
            start("h-apart"), frame("h-apart", 0, z=9999)]
    return [[p.TAG, msgpack.packb(m)] + ([PIX] if m["kind"] == "frame" else []) for m in msgs]


def g_deep_start(r):  # item 1
    f = start(f"h-deep-{r.randrange(10**6)}")
    del f["summary"]
    return [p.TAG, pack_with(f, summary=nested_map(r.choice([33, 300, 600])))]


def g_deep_sequence(r):  # item 1
    f = start(f"h-seq-{r.randrange(10**6)}")
    del f["sequence"]
    return [p.TAG, pack_with(f, sequence=nested_map(r.choice([33, 300])))]


def g_deep_metadata(r):  # item 2
    f = frame("h-done", 0)
    del f["metadata"]
    return [p.TAG, pack_with(f, metadata=nested_map(r.choice([33, 600, 1000]))), PIX]


def g_huge_index(r):  # item 6
    return [p.TAG, msgpack.packb(frame("h-sized", 1) | {"index": {"t": 0, "p": 0, "c": 255, "z": r.choice([999, 9999])}}), PIX]


def g_huge_sizes(r):  # item 6
    sizes = r.choice([{"c": 100_000}, {"z": 10**6}, {"c": 256, "z": 10_000}, {"p": 10**9}, {"t": 2**50}])
    return [p.TAG, msgpack.packb(start(f"h-sz-{r.randrange(10**6)}") | {"sizes": sizes})]


def g_out_of_declared(r):  # item 6
    return [p.TAG, msgpack.packb(frame("h-sized", 1 + r.randrange(10**6), t=r.choice([0, 2]), z=r.choice([2, 5]))), PIX]


def g_apart(r):  # item 6: c and z grow apart
    return [p.TAG, msgpack.packb(frame("h-apart", 1 + r.randrange(10**6), c=r.choice([255, 100]))), PIX]


def g_after_end(r):  # item 9
    return [p.TAG, msgpack.packb(frame("h-done", 2 + r.randrange(10**6))), PIX]


def g_long_echo(r):  # item 10 (heavy: used rarely)
    kind = r.choice(["heartbeat", "k" * 300_000])
    return [p.TAG, msgpack.packb({"kind": kind, "run": "r" * r.choice([129, 900_000])})]


def g_unknown_run(r):
    return [p.TAG, msgpack.packb(frame(f"h-nobody-{r.randrange(10**6)}", r.randrange(100))), PIX]


def g_mismatch(r):
    f = frame("h-done", 0)
    return r.choice([[p.TAG, msgpack.packb(f), PIX + b"x"], [p.TAG, msgpack.packb(f | {"shape": [2, 8]}), PIX],
                     [p.TAG, msgpack.packb(f)], [p.TAG, msgpack.packb(f), PIX, PIX]])


def g_wrong_kind(r):
    m = r.choice([p.Ack(run="h-done", ranges=[(0, 1)]), p.Error(code="invalid", reason="x"),
                   p.StatusReply(daemon="d", status={})])
    return [r.choice([p.TAG, b"lowdose/9", b"http/1.1"]), msgpack.packb(m.model_dump(mode="json"))]


def g_garbage(r):
    return [r.randbytes(r.randrange(1, 32)) for _ in range(r.randrange(1, 4))]


def _mutate_value(r):
    return r.choice([None, -1, 2**64 - 1, 1.5, float("nan"), "", "x" * 300, [1, [2]], {"a": {}}, b"\0"])


def g_mutated(r):
    base = r.choice([start("h-mut"), frame("h-done", 0), p.End(run="h-done", frames=2).model_dump(),
                     {"kind": "heartbeat", "run": "h-done"}, {"kind": "status"}])
    f = dict(base)
    for _ in range(r.randrange(1, 4)):
        key = r.choice(sorted(f) + ["zz"])
        if r.random() < 0.3:
            f.pop(key, None)
        else:
            f[key] = _mutate_value(r)
    return [p.TAG, msgpack.packb(f, use_bin_type=True)] + ([PIX] if r.random() < 0.5 else [])


GENERATORS = [g_deep_start, g_deep_sequence, g_deep_metadata, g_huge_index, g_huge_sizes, g_out_of_declared,
              g_apart, g_after_end, g_unknown_run, g_mismatch, g_wrong_kind, g_garbage, g_mutated]


def hostile(endpoint: str, n: int, seed: int, counts: dict, only: str | None = None) -> None:
    r = random.Random(seed)
    generators = [g for g in GENERATORS if only is None or g.__name__ == f"g_{only}"]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)

    def drain(block_ms: int = 0) -> None:
        while sock.poll(block_ms):
            sock.recv_multipart()
            counts["replies"] += 1
            block_ms = 0

    for parts in setup_messages():
        sock.send_multipart(parts)
        drain(2000)
    for i in range(n):
        gen = g_long_echo if i % 500 == 499 and only is None else generators[i % len(generators)]
        if i % len(generators) == 0 and r.random() < 0.5:
            gen = r.choice(generators)
        sock.send_multipart(gen(r))
        counts[gen.__name__] = counts.get(gen.__name__, 0) + 1
        counts["sent"] = i + 1
        if i % 64 == 63:
            drain()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and counts["replies"] < n + len(setup_messages()):
        drain(200)
    sock.close(0)


WARMUP_FRACTION = 0.1


def rss_after_warmup(samples: list[tuple[int, int]], n: int) -> tuple[int, float]:
    """RSS once every generator has run many times, and the least-squares growth after it.

    The allocator keeps arenas it grew for the first large refused messages, and the good run's
    per-frame bookkeeping grows with its frames: a one-off step then flat is not a leak, a slope is.
    """
    late = [(m, rss) for m, rss in samples if m >= WARMUP_FRACTION * n] or samples[-1:]
    if len(late) < 2:
        return late[0][1], 0.0
    xs = np.array([m for m, _ in late], float)
    ys = np.array([rss for _, rss in late], float) / 2**20
    slope = float(np.polyfit(xs, ys, 1)[0]) * 10_000 if np.ptp(xs) > 0 else 0.0
    return late[0][1], slope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=[g.__name__[2:] for g in GENERATORS],
                    help="one generator alone (to find which input a memory step comes from)")
    args = ap.parse_args()

    import zarr

    from lowdose.daemon.client import query_status
    from lowdose.plugins.acquisition.sender import FrameSender
    from lowdose.wire.protocol import FrameIndex, Start

    tmp = Path(tempfile.mkdtemp(prefix="lowdose-fuzz-"))
    cfg, daemon = start_daemon(tmp, fsync=False)
    endpoint = daemon.endpoint
    try:
        daemon.wait_ready()
        dp = psutil.Process(daemon.proc.pid)
        rng = np.random.default_rng(args.seed)
        frames = [rng.integers(0, 65535, (64, 64), dtype=np.uint16) for _ in range(16)]
        sender = FrameSender(cfg.hook, Start(run="good", shape=(64, 64), dtype="uint16"))
        sender.start()
        for i in range(50):  # warm-up: every path the good client uses has run once
            sender.submit(frames[i % 16].copy(), FrameIndex(t=i))
        while sender.counters().unacked:
            time.sleep(0.01)
        rss0, threads0 = dp.memory_info().rss, dp.num_threads()
        counts = {"replies": 0, "sent": 0}
        samples: list[tuple[int, int]] = []  # (hostile messages sent, daemon RSS)
        t0 = time.perf_counter()
        attacker = threading.Thread(target=hostile, args=(endpoint, args.messages, args.seed, counts, args.only))
        attacker.start()
        n_good = 50
        while attacker.is_alive():
            sender.submit(frames[n_good % 16].copy(), FrameIndex(t=n_good))
            n_good += 1
            if n_good % 20 == 0:
                samples.append((counts["sent"], dp.memory_info().rss))
            time.sleep(0.005)
        attacker.join()
        elapsed = time.perf_counter() - t0
        report = sender.close(timeout=120)
        time.sleep(1.0)
        rss1, threads1 = dp.memory_info().rss, dp.num_threads()
        st = query_status(endpoint)
        alive = daemon.proc.poll() is None
    finally:
        code = daemon.stop()
    runs = {r["run"]: r for r in st["runs"]}
    raw = zarr.open_array(str(tmp / "data" / "good.ome.zarr" / "raw" / "0"), mode="r")
    intact = sum(bool(np.array_equal(raw[t, 0, 0], frames[t % 16])) for t in range(n_good))
    hostile_stored = sum(r["frames_written"] for name, r in runs.items() if name != "good") - sum(SETUP.values())
    # a mutated start may still be valid (an empty instrument is): a run, but none of its frames
    stray = sorted(n for n, r in runs.items() if n not in {"good", *SETUP} and r["frames_written"])
    print(f"hostile: {args.messages} messages in {elapsed:.1f} s ({args.messages / elapsed:.0f}/s), "
          f"{counts['replies']} replies; per generator: "
          + ", ".join(f"{k[2:]} {v}" for k, v in sorted(counts.items()) if k.startswith("g_")))
    warm_rss, slope = rss_after_warmup(samples, args.messages)
    print(f"daemon RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB, threads {threads0} -> {threads1}, "
          f"alive {alive}, exit {code}")
    print(f"daemon RSS after the first {WARMUP_FRACTION:.0%} of messages {warm_rss / 2**20:.0f} MiB; "
          f"growth over the rest {slope:+.2f} MiB per 10,000 messages")
    print(f"good client: {n_good} frames, acked {report.acked}, rejected {report.rejected}, "
          f"stored {runs['good']['frames_written']}, intact {intact}")
    print(f"hostile stored: {hostile_stored} frames beyond setup, stray runs {stray}")
    ok = alive and intact == n_good == runs["good"]["frames_written"] and hostile_stored == 0 and not stray
    print(f"fuzz: {rss1 / warm_rss:.2f} RSS end/after-warm-up ({rss1 / rss0:.2f} end/start), threads {threads0}->{threads1}, good {intact}/{n_good} "
          f"intact, hostile stored {hostile_stored}, {'OK' if ok else 'FAILED'}")
    shutil.rmtree(tmp, ignore_errors=True)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
