"""Long run: 100,000 frames through a real daemon; memory of the hook and the daemon, files per image.

    python benchmarks/long_run.py [--frames 100000] [--size 32] [--layout sharded]

A `lowdose serve` process (identity denoiser, fifo, fsync on, the given ``storage.layout``) receives
``--frames`` small uint16 frames from a FrameSender in this process, at the pace its acks allow (at
most 64 unacked). RSS of both processes is sampled every 5,000 frames; the baseline is the first sample
(after warm-up). Once the run is finalized the data files of each image are counted, against the
target of frames / 50 plus a few metadata files (a chunk per frame would be ``frames``).

The last line: ``long run: <daemon RSS last/first> daemon RSS, <files>/<frames> files per image ...``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_daemon import start_daemon  # noqa: E402
from lowdose.plugins.acquisition.sender import FrameSender  # noqa: E402
from lowdose.wire.protocol import FrameIndex, Start  # noqa: E402


def _finalized(store: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "summary" in json.loads((store / "zarr.json").read_text())["attributes"]["lowdose"]:
                return True
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--layout", choices=["sharded", "chunk_per_frame"], default="sharded")
    ap.add_argument("--every", type=int, default=5000, help="frames between RSS samples")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lowdose-long-", dir=Path.cwd()))
    cfg, daemon = start_daemon(tmp, layout=args.layout)
    samples: list[tuple[int, float, float, int, int]] = []
    try:
        daemon.wait_ready()
        me, dp = psutil.Process(), psutil.Process(daemon.proc.pid)
        rng = np.random.default_rng(0)
        frames = [(100 + rng.poisson(8, (args.size, args.size))).astype(np.uint16) for _ in range(8)]
        sender = FrameSender(cfg.hook, Start(run="long", shape=(args.size, args.size), dtype="uint16"))
        sender.start()
        t0 = time.perf_counter()
        for i in range(args.frames):
            while sender.counters().unacked > 64:
                time.sleep(0.0005)
            sender.submit(frames[i % len(frames)], FrameIndex(t=i))
            if (i + 1) % args.every == 0:
                samples.append((i + 1, me.memory_info().rss / 2**20, dp.memory_info().rss / 2**20,
                                dp.num_fds(), dp.num_threads()))
        report = sender.close(timeout=300)
        elapsed = time.perf_counter() - t0
        store = tmp / "data" / "long.ome.zarr"
        finalized = _finalized(store, 600)
    finally:
        daemon.stop()
        if not samples:  # nothing to report: leave no directory behind in the working tree
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.frames} frames {args.size}x{args.size} uint16, {args.layout}, in {elapsed:.0f} s "
          f"({args.frames / elapsed:.0f} frames/s); acked {report.acked}, unacked {report.unacked}; "
          f"finalized {'yes' if finalized else 'NO'}")
    print(f"{'frames':>7s} {'hook RSS MiB':>13s} {'daemon RSS MiB':>15s} {'daemon fds':>11s} {'threads':>8s}")
    for n, h, d, fds, th in samples:
        print(f"{n:7d} {h:13.1f} {d:15.1f} {fds:11d} {th:8d}")
    files = {}
    for name in ("raw", "restored"):
        every = [p for p in (store / name).rglob("*") if p.is_file()]
        files[name] = (len(every), sum(1 for p in every if p.name != "zarr.json"))
        print(f"{name}: {files[name][0]} files ({files[name][1]} data), target <= {args.frames // 50} + a few")
    (_, h0, d0, _, _), (_, h1, d1, _, _) = samples[0], samples[-1]
    print(f"growth after warm-up: hook {h1 / h0:.3f}x ({h1 - h0:+.1f} MiB), daemon {d1 / d0:.3f}x ({d1 - d0:+.1f} MiB)")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"long run: {d1 / d0:.3f} daemon RSS last/first sample (hook {h1 / h0:.3f}), "
          f"{files['raw'][0]}/{args.frames} files per image (raw), {args.layout}")


if __name__ == "__main__":
    main()
