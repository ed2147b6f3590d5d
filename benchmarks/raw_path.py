"""Raw write path, end to end: hook -> `lowdose serve` -> raw on disk, acked; vs O_DIRECT of the same bytes.

    python benchmarks/raw_path.py [--frames 200] [--size 2048] [--output-dir DIR] [--compression lz4]

For each store layout (``sharded``, ``chunk_per_frame``) and each CPU budget of the daemon (1 core,
all cores; set with the daemon's CPU affinity, which its threads inherit), a real `lowdose serve`
subprocess (identity denoiser, policy ``latest``, no backfill, the shipped fsync) receives ``--frames``
2048x2048 uint16 low-light frames (Poisson at 5-20 photons, offset 100, read noise 2 ADU) from a real
:class:`FrameSender` over ipc. The figure is uncompressed frame bytes acked per second, from the first
submit to the last ack, divided by an O_DIRECT sequential write (+ fsync) of the same number of bytes
measured just before it in the same run (the disk's uncompressed limit). The sender keeps at most
``--in-flight`` frames unacked, so nothing spills to its spool. The restorer runs too (identity,
``latest``), writing the restored stream of the frames it picks beside the raw one, as a daemon does.

Also printed: files per hour and bytes per frame of each stream at 2048^2 and 100 frames/s (computed
from the shard size and the measured compressed sizes), and what the restored stream costs per dtype
(``storage.restored_dtype``: input = uint16, or float32) for a denoised-looking frame.

The last line: ``raw path: <ratio> of O_DIRECT (<MB/s> vs <MB/s>)`` for the default configuration
(sharded, all cores).
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from lowdose.daemon.store.chunks import ChunkCodec
from lowdose.daemon.store.shards import default_shard_frames
from lowdose.plugins.acquisition.sender import FrameSender
from lowdose.wire.hook_config import HookConfig
from lowdose.wire.protocol import FrameIndex, Start

FPS = 100
HOUR_FRAMES = FPS * 3600


def low_light_frames(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for k in range(n):
        photons = 5 + 15 * (0.5 + 0.5 * np.sin(xx / (40 + 5 * k)) * np.cos(yy / 57))  # 5-20 photons
        img = rng.poisson(photons) + 100 + rng.normal(0, 2, (size, size))
        out.append(np.clip(np.rint(img), 0, 65535).astype(np.uint16))
    return out


def o_direct_write(path: Path, nbytes: int, block: int = 8 << 20) -> float:
    """Seconds to write ``nbytes`` with O_DIRECT in ``block``-sized aligned writes, then fsync (dd oflag=direct)."""
    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT requires
    buf.write(np.random.default_rng(0).integers(0, 255, block, dtype=np.uint8).tobytes())
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


class Daemon:
    """`lowdose serve` pinned to ``cores`` CPUs from its first instruction (its threads inherit it)."""

    def __init__(self, work: Path, layout: str, compression: str, cores: set[int]):
        self.endpoint = f"ipc://{work}/daemon.sock"
        self.output = work / "data"
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump({
            "server": {"endpoints": [self.endpoint], "preview_endpoint": None},
            "storage": {"output_dir": str(self.output), "layout": layout, "compression": compression},
            "restore": {"denoiser": "identity", "policy": "latest", "backfill": False, "store_uncertainty": False},
        }))
        self.log = open(work / "daemon.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "lowdose.cli", "serve", "--config", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=lambda: os.sched_setaffinity(0, cores))

    def wait_ready(self, timeout: float = 120.0) -> None:
        from lowdose.daemon.client import DaemonUnreachable, query_status

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited at start-up; see {self.log.name}")
            try:
                query_status(self.endpoint, timeout=0.5)
                return
            except DaemonUnreachable:
                time.sleep(0.2)
        raise RuntimeError(f"the daemon did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def through_daemon(work: Path, frames: list[np.ndarray], n: int, layout: str, compression: str,
                   cores: set[int], in_flight: int) -> tuple[float, dict[str, int]]:
    """Seconds from the first submit to the last ack, and the stored bytes and files per image."""
    daemon = Daemon(work, layout, compression, cores)
    try:
        daemon.wait_ready()
        size = frames[0].shape[0]
        hook = HookConfig(endpoint=daemon.endpoint, spool_dir=work / "spool", window_frames=in_flight,
                          memory_mb=4 * in_flight * frames[0].nbytes / 1e6)
        sender = FrameSender(hook, Start(run="bench", shape=(size, size), dtype="uint16", frame_interval_s=1 / FPS))
        sender.start()
        t0 = time.perf_counter()
        for t in range(n):
            while sender.counters().unacked >= in_flight:
                time.sleep(0.0005)
            sender.submit(frames[t % len(frames)], FrameIndex(t=t))
        report = sender.close(timeout=600)
        dt = time.perf_counter() - t0
        if report is None or report.acked != n or not report.ok or report.counters.spooled:
            raise RuntimeError(f"the hook did not get every frame acked without spooling: {report}")
    finally:
        daemon.stop()
    store = daemon.output / "bench.ome.zarr"
    sizes = {}
    for name in ("raw", "restored"):
        files = [p for p in (store / name / "0" / "c").rglob("*") if p.is_file()] if (store / name).exists() else []
        sizes[f"{name}_bytes"] = sum(p.stat().st_size for p in files)
        sizes[f"{name}_files"] = len(files)
    return dt, sizes


def restored_costs(frames: list[np.ndarray], compression: str) -> dict[str, int]:
    """Compressed bytes per frame of a denoised-looking frame (Gaussian sigma 2 of a raw frame) per dtype."""
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(frames[0].astype(np.float32), 2.0)
    out = {}
    for dtype, px in (("uint16", np.rint(smooth).astype(np.uint16)), ("float32", smooth)):
        codec = ChunkCodec(np.dtype(dtype), px.shape, compression, 1)
        out[dtype] = len(memoryview(codec.encode(px)).cast("B"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--in-flight", type=int, default=16, help="frames the hook keeps unacked at most")
    ap.add_argument("--output-dir", type=Path, default=None, help="a directory on the disk to measure")
    ap.add_argument("--compression", choices=["lz4", "zstd", "none"], default="lz4")
    args = ap.parse_args(argv)

    base = args.output_dir or Path(tempfile.mkdtemp(prefix="lowdose-rawbench-", dir=Path.cwd()))
    base.mkdir(parents=True, exist_ok=True)
    frames = low_light_frames(6, args.size)
    frame_bytes = frames[0].nbytes
    nbytes = args.frames * frame_bytes
    all_cores = os.sched_getaffinity(0)
    budgets = {"1 core": {min(all_cores)}, f"{len(all_cores)} cores": all_cores}
    print(f"{args.frames} frames of {args.size}x{args.size} uint16 ({nbytes / 1e6:.0f} MB) per run, "
          f"{args.compression}, {args.in_flight} in flight, {len(all_cores)} CPUs, dir {base}")
    results: dict[tuple[str, str], tuple[float, float]] = {}
    sizes: dict[str, dict[str, int]] = {}
    try:
        for layout in ("sharded", "chunk_per_frame"):
            for budget, cores in budgets.items():
                work = base / f"{layout}-{len(cores)}"
                work.mkdir()
                d_mbs = nbytes / o_direct_write(base / "odirect.bin", nbytes) / 1e6
                dt, sz = through_daemon(work, frames, args.frames, layout, args.compression, cores, args.in_flight)
                s_mbs = nbytes / dt / 1e6
                results[(layout, budget)] = (s_mbs, d_mbs)
                sizes[layout] = sz
                print(f"{layout:15s} {budget:8s} daemon {s_mbs:6.0f} MB/s ({args.frames / dt:5.1f} frames/s)   "
                      f"O_DIRECT {d_mbs:6.0f} MB/s   ratio {s_mbs / d_mbs:.2f}   raw files {sz['raw_files']}, "
                      f"compression {nbytes / max(1, sz['raw_bytes']):.2f}x")
                shutil.rmtree(work)
    finally:
        if args.output_dir is None:
            shutil.rmtree(base, ignore_errors=True)

    # at 2048^2, 100 frames/s: files per hour per image, and bytes per frame (measured compression)
    big = 2048 * 2048 * 2
    n_shard = default_shard_frames(big)
    raw_per_frame = sizes["sharded"]["raw_bytes"] / args.frames * big / frame_bytes
    print(f"at 2048x2048 uint16, {FPS} frames/s: files per hour per image: sharded {HOUR_FRAMES // n_shard:,} "
          f"({n_shard} frames per shard), chunk_per_frame {HOUR_FRAMES:,}; raw {raw_per_frame / 1e6:.2f} MB per frame "
          f"(+16 B of shard index), {raw_per_frame * FPS / 1e6:.0f} MB/s, {raw_per_frame * HOUR_FRAMES / 1e12:.2f} TB/hour")
    costs = restored_costs(low_light_frames(1, 2048), args.compression)
    for dtype, b in costs.items():
        print(f"restored stream as {dtype:7s} (storage.restored_dtype {'input' if dtype == 'uint16' else 'float32'}): "
              f"{b / 1e6:.2f} MB per frame ({big * (2 if dtype == 'float32' else 1) / b:.2f}x compression), "
              f"{b * FPS / 1e6:.0f} MB/s, {b * HOUR_FRAMES / 1e12:.2f} TB/hour, {HOUR_FRAMES // n_shard:,} files/hour")
    s_mbs, d_mbs = results[("sharded", f"{len(all_cores)} cores")]
    print(f"raw path: {s_mbs / d_mbs:.2f} of O_DIRECT ({s_mbs:.0f} MB/s vs {d_mbs:.0f} MB/s), sharded, "
          f"{len(all_cores)} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
