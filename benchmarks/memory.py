"""Memory: resident memory of the hook and the daemon over a long run stays flat.

A `lowdose serve` process (identity denoiser, fifo, fsync on) receives N frames
from a FrameSender in this process, fed at a steady pace. RSS of both
processes is sampled every 500 frames; the baseline is each process's RSS
after the warm-up (the first sample), the figure is the last sample over it.

    python benchmarks/memory.py --frames 5000 --size 512

``--store-only N`` measures the run store's own per-frame bookkeeping instead: N tiny (16x16) frames over
two channels go straight into a RunStore (fsync off), each batch restored as the restore loop would
(the last batch left pending), and tracemalloc reports the bytes still held per frame after a warm-up.

    python benchmarks/memory.py --store-only 50000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_daemon import start_daemon  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--denoiser", default="identity")
    ap.add_argument("--store-only", type=int, default=0, metavar="N", help="measure RunStore bookkeeping over N tiny frames")
    args = ap.parse_args()
    if args.store_only:
        store_only(args.store_only)
        return

    from lowdose.daemon.client import query_status
    from lowdose.wire.protocol import FrameIndex, Start
    from lowdose.plugins.acquisition.sender import FrameSender

    tmp = Path(tempfile.mkdtemp(prefix="lowdose-mem-"))
    cfg, daemon = start_daemon(tmp, denoiser=args.denoiser)
    daemon.wait_ready()
    me, dp = psutil.Process(), psutil.Process(daemon.proc.pid)
    rng = np.random.default_rng(0)
    frames = [(100 + rng.poisson(8, (args.size, args.size))).astype(np.uint16) for _ in range(8)]
    sender = FrameSender(cfg.hook, Start(run="mem", shape=(args.size, args.size), dtype="uint16"))
    sender.start()
    samples = []
    t0 = time.perf_counter()
    for i in range(args.frames):
        sender.submit(frames[i % len(frames)].copy(), FrameIndex(t=i))
        while sender.counters().unacked > 64:  # a camera's steady pace, not a burst
            time.sleep(0.001)
        if (i + 1) % 500 == 0:
            samples.append((i + 1, me.memory_info().rss / 2**20, dp.memory_info().rss / 2**20))
    report = sender.close(timeout=120)
    elapsed = time.perf_counter() - t0
    st = query_status(daemon.endpoint)
    daemon.stop()
    print(f"{args.frames} frames {args.size}x{args.size} uint16 in {elapsed:.1f} s "
          f"({args.frames / elapsed:.0f} frames/s); acked {report.acked}, unacked {report.unacked}; "
          f"daemon wrote {st['runs'][0]['frames_written']}")
    print(f"{'frames':>7s} {'hook RSS MiB':>13s} {'daemon RSS MiB':>15s}")
    for n, h, d in samples:
        print(f"{n:7d} {h:13.1f} {d:15.1f}")
    (_, h0, d0), (_, h1, d1) = samples[0], samples[-1]
    print(f"growth after warm-up: hook {h1 / h0:.3f}x ({h1 - h0:+.1f} MiB), daemon {d1 / d0:.3f}x ({d1 - d0:+.1f} MiB)")
    print("target: flat (ratio ~1.0, growth not proportional to frames)")
    print(f"memory: {d1 / d0:.3f} daemon RSS last/first sample over {args.frames} frames (hook {h1 / h0:.3f})")


def store_only(n: int, batch: int = 50, warmup: int = 2000) -> None:
    from lowdose.daemon.config import StorageConfig
    from lowdose.wire.protocol import End, Frame, FrameIndex, Start
    from lowdose.daemon.store import RunStore
    from lowdose.plugins.denoisers.interface import DenoiserInfo

    # RAM-backed where possible: this measures bookkeeping, and deleting 10^5 chunk files on a busy disk takes minutes
    tmp = Path(tempfile.mkdtemp(prefix="lowdose-store-mem-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    shape = (16, 16)
    start = Start(run="mem", shape=shape, dtype="uint16", sizes={"c": 2})
    info = DenoiserInfo(name="identity", version="0")
    px = np.full(shape, 100, np.uint16)
    rss = psutil.Process()
    tracemalloc.start()
    store = RunStore.open(tmp, start, StorageConfig(fsync=False), "bench")
    base = base_rss = base_n = 0
    t0 = time.perf_counter()
    for s0 in range(0, n, batch):
        seqs = range(s0, min(n, s0 + batch))
        frames = [(Frame(run="mem", seq=s, index=FrameIndex(t=s // 2, c=s % 2), shape=shape, dtype="uint16"), px) for s in seqs]
        store.write_raw(frames)
        if seqs.stop < n:  # the restore loop keeps up; the last batch stays pending
            store.write_restored([(f.index, px, None) for f, _ in frames], info, "live")
        if s0 < warmup <= seqs.stop:
            base, base_rss, base_n = tracemalloc.get_traced_memory()[0], rss.memory_info().rss, seqs.stop
    elapsed = time.perf_counter() - t0
    held = tracemalloc.get_traced_memory()[0]
    end_rss = rss.memory_info().rss
    summary = store.finalize(End(run="mem", frames=n))
    store.close()
    tracemalloc.stop()
    grown = n - base_n
    print(f"{n} frames 16x16 uint16, 2 channels, into a RunStore (fsync off) in {elapsed:.1f} s; "
          f"written {summary['frames_written']}, restored {summary['frames_restored']}")
    print(f"after frame {base_n}: traced Python heap {(held - base) / 2**20:+.2f} MiB over {grown} frames "
          f"= {(held - base) / grown:.1f} B/frame; RSS {(end_rss - base_rss) / 2**20:+.2f} MiB "
          f"= {(end_rss - base_rss) / grown:.1f} B/frame (tracemalloc's own tables included)")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"memory_store: {held / max(base, 1):.3f} traced heap at frame {n} / at frame {base_n} "
          f"({(held - base) / grown:.1f} B/frame)")


if __name__ == "__main__":
    main()
