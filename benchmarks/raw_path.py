"""Raw write path: sustained MB/s of RunStore.write_raw vs an O_DIRECT sequential write of the same bytes.

    python benchmarks/raw_path.py [--frames 300] [--batch 8] [--output-dir DIR] [--compression lz4]

Frames are 2048x2048 uint16 low-light images (Poisson at 5-20 photons, offset 100, read noise 2 ADU),
a handful pre-generated and cycled. For fsync on and off, the figure is the uncompressed frame bytes
per second handed to ``write_raw`` (batches as the daemon's writer thread would form them), divided by
the O_DIRECT figure for the same number of bytes measured in the same run (the disk's uncompressed
limit). The output directory defaults to a temporary directory next to the working directory (same
disk as the daemon's default ``lowdose-data``) and is removed afterwards.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lowdose.daemon.config import StorageConfig
from lowdose.wire.protocol import Frame, FrameIndex, Start
from lowdose.daemon.store import RunStore

SHAPE = (2048, 2048)


def low_light_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    out = []
    for k in range(n):
        photons = 5 + 15 * (0.5 + 0.5 * np.sin(xx / (40 + 5 * k)) * np.cos(yy / 57))  # 5-20 photons
        img = rng.poisson(photons) + 100 + rng.normal(0, 2, SHAPE)
        out.append(np.clip(np.rint(img), 0, 65535).astype(np.uint16))
    return out


def o_direct_write(path: Path, nbytes: int, block: int = 8 << 20) -> float:
    """Seconds to write ``nbytes`` of zeros with O_DIRECT in ``block``-sized aligned writes (like dd oflag=direct)."""
    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT requires
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        t0 = time.perf_counter()
        done = 0
        while done < nbytes:
            done += os.write(fd, buf)
        os.fsync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
        buf.close()


def run_store(out: Path, frames: list[np.ndarray], n: int, batch: int, fsync: bool, compression: str) -> tuple[float, int]:
    start = Start(run=f"bench-{'fsync' if fsync else 'nofsync'}", shape=SHAPE, dtype="uint16", frame_interval_s=0.01)
    store = RunStore.open(out, start, StorageConfig(fsync=fsync, compression=compression), "bench")
    msgs = [
        (Frame(run=start.run, seq=s, index=FrameIndex(t=s), shape=SHAPE, dtype="uint16"), frames[s % len(frames)])
        for s in range(n)
    ]
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        store.write_raw(msgs[i : i + batch])
    dt = time.perf_counter() - t0
    store.close()
    on_disk = sum(f.stat().st_size for f in (store.path / "raw" / "0" / "c").rglob("*") if f.is_file())
    return dt, on_disk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8, help="frames per write_raw call")
    ap.add_argument("--output-dir", type=Path, default=None)
    ap.add_argument("--compression", choices=["lz4", "zstd", "none"], default="lz4")
    args = ap.parse_args()

    base = args.output_dir or Path(tempfile.mkdtemp(prefix="lowdose-rawbench-", dir=Path.cwd()))
    base.mkdir(parents=True, exist_ok=True)
    frames = low_light_frames(6)
    nbytes = args.frames * frames[0].nbytes
    print(f"{args.frames} frames of {SHAPE[0]}x{SHAPE[1]} uint16 ({nbytes / 1e6:.0f} MB), batch {args.batch}, "
          f"{args.compression}, {os.cpu_count()} CPUs, dir {base}")
    ratios: dict[bool, float] = {}
    try:
        for fsync in (True, False):
            d_dt = o_direct_write(base / "odirect.bin", nbytes)
            s_dt, on_disk = run_store(base / f"store-{fsync}", frames, args.frames, args.batch, fsync, args.compression)
            d_mbs, s_mbs = nbytes / d_dt / 1e6, nbytes / s_dt / 1e6
            print(f"fsync={'on ' if fsync else 'off'}  O_DIRECT {d_mbs:7.0f} MB/s   write_raw {s_mbs:7.0f} MB/s "
                  f"({args.frames / s_dt:5.0f} frames/s, compression {nbytes / max(on_disk, 1):.2f}x)   "
                  f"ratio {s_mbs / d_mbs:.2f}")
            ratios[fsync] = s_mbs / d_mbs
            shutil.rmtree(base / f"store-{fsync}")
    finally:
        if args.output_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"raw_path: {ratios[True]:.2f} write_raw/O_DIRECT MB/s with fsync ({ratios[False]:.2f} without), "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
