"""Memory: resident memory of the hook and the daemon over a long run stays flat.

A `lowdose serve` process (identity denoiser, fifo, fsync on) receives N frames
from a FrameSender in this process, fed at a steady pace. RSS of both
processes is sampled every 500 frames; the baseline is each process's RSS
after the warm-up (the first sample), the figure is the last sample over it.

    python benchmarks/memory.py --frames 5000 --size 512
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--denoiser", default="identity")
    args = ap.parse_args()

    from lowdose.daemon.client import query_status
    from lowdose.daemon.config import load_config
    from lowdose.daemon.protocol import FrameIndex, Start
    from lowdose.demo import DaemonProcess
    from lowdose.plugins.sender import FrameSender

    tmp = Path(tempfile.mkdtemp(prefix="lowdose-mem-"))
    endpoint = f"ipc://{tmp}/d.sock"
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "server": {"endpoints": [endpoint], "preview_endpoint": None},
        "storage": {"output_dir": str(tmp / "data")},
        "restore": {"denoiser": args.denoiser, "policy": "fifo"},
        "hook": {"endpoint": endpoint, "spool_dir": str(tmp / "spool")},
    }))
    cfg = load_config(cfg_path)
    daemon = DaemonProcess(cfg_path, tmp / "daemon.log", endpoint)
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
    st = query_status(endpoint)
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


if __name__ == "__main__":
    main()
