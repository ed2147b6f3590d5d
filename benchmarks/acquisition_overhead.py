"""Acquisition overhead of the pymmcore-plus hook, and the hook process's memory over a long run.

1. Speed: DemoCamera MDA frames/s with the hook attached (streaming to a ROUTER
   that acks every frame, in another process) against the same MDA without it,
   interleaved in one run. Target: ratio >= 0.98.
2. Memory: resident memory of this (the hook's) process sampled over a long run
   (``--long-frames``, default 5000): it must stay flat.

    python benchmarks/acquisition_overhead.py [--frames 400] [--repeats 3] [--long-frames 5000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import zmq
from pymmcore_plus import CMMCorePlus
from useq import MDASequence

from lowdose.wire import protocol as p
from lowdose.wire.hook_config import HookConfig
from lowdose.plugins.acquisition.pymmcore_plus_hook import PymmcorePlusHook, release_core


def ack_server(endpoint: str, ready: mp.Event, stop: mp.Event) -> None:
    """A stand-in daemon: validates every message, acks each frame, confirms ends."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 16)
    sock.bind(endpoint)
    ready.set()
    seen: dict[str, set[int]] = {}
    while not stop.is_set():
        if not sock.poll(50):
            continue
        ident, *body = sock.recv_multipart(copy=False)
        msg, _ = p.decode(body)
        if isinstance(msg, p.Start):
            seen.setdefault(msg.run, set())
            reply = p.Ack(run=msg.run, ranges=[])
        elif isinstance(msg, p.Frame):
            seen.setdefault(msg.run, set()).add(msg.seq)
            reply = p.Ack(run=msg.run, ranges=[(msg.seq, msg.seq)])
        elif isinstance(msg, p.End):
            reply = p.Ack(run=msg.run, ranges=[], finished=len(seen.get(msg.run, ())) >= msg.frames)
        else:
            reply = p.Heartbeat(daemon="bench")
        sock.send_multipart([ident.bytes, *p.encode(reply)])
    sock.close(0)
    ctx.term()


def run_mda(core: CMMCorePlus, frames: int, hook: PymmcorePlusHook | None) -> tuple[float, float]:
    """(frames/s, CPU µs per frame of this process during the MDA)."""
    seq = MDASequence(time_plan={"interval": 0, "loops": frames})
    c0, t0 = time.process_time(), time.perf_counter()
    core.mda.run(seq, output=hook)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    if hook is not None:
        report = hook.report(timeout=120)
        if report is None or not report.ok:
            raise RuntimeError(f"hook run incomplete: {report}")
    return frames / dt, cpu / frames * 1e6


def speed(core: CMMCorePlus, cfg: HookConfig, frames: int, repeats: int) -> dict:
    run_mda(core, 20, None)  # warm-up: first sequence allocates the circular buffer
    without, with_hook = [], []
    for i in range(repeats):
        # alternate the order so drift (thermal, page cache) does not favour one side
        order = ("off", "on") if i % 2 == 0 else ("on", "off")
        for mode in order:
            if mode == "off":
                without.append(run_mda(core, frames, None))
            else:
                with_hook.append(run_mda(core, frames, PymmcorePlusHook(cfg, run_prefix="bench")))
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    return {
        "without": [x[0] for x in without],
        "with": [x[0] for x in with_hook],
        "ratio": med(with_hook, 0) / med(without, 0),
        "cpu_without_us": med(without, 1),
        "cpu_with_us": med(with_hook, 1),
    }


def memory(core: CMMCorePlus, cfg: HookConfig, frames: int) -> dict:
    proc = psutil.Process()
    samples: list[tuple[int, float]] = []
    count = [0]
    stop = threading.Event()

    class Counter:
        def frameReady(self, img, event, meta) -> None:  # noqa: N802 (pymmcore-plus API)
            count[0] += 1

    def sample() -> None:
        while not stop.is_set():
            samples.append((count[0], proc.memory_info().rss / 2**20))
            time.sleep(0.25)

    hook = PymmcorePlusHook(cfg, run_prefix="bench-long")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    core.mda.run(MDASequence(time_plan={"interval": 0, "loops": frames}), output=[hook, Counter()])
    report = hook.report(timeout=300)
    elapsed = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if report is None or not report.ok:
        raise RuntimeError(f"long run incomplete: {report}")
    # compare the first and last tenth of the run, after the start-up allocations
    warm = [m for n, m in samples if n >= frames * 0.1]
    tenth = max(len(warm) // 10, 1)
    first, last = statistics.median(warm[:tenth]), statistics.median(warm[-tenth:])
    return {
        "frames": frames,
        "fps": frames / elapsed,
        "rss_start_mb": first,
        "rss_end_mb": last,
        "rss_max_mb": max(m for _, m in samples),
        "growth_mb": last - first,
        "counters": report.counters,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=400, help="frames per speed run")
    ap.add_argument("--repeats", type=int, default=3, help="speed runs per side")
    ap.add_argument("--size", type=int, default=512, help="DemoCamera frame side (px)")
    ap.add_argument("--exposure", type=float, default=2.0, help="exposure (ms)")
    ap.add_argument("--long-frames", type=int, default=5000, help="frames of the memory run (0: skip)")
    ap.add_argument("--long-size", type=int, default=256, help="frame side of the memory run")
    ap.add_argument("--endpoint", default=None, help="ZeroMQ endpoint (default: ipc in a temp dir)")
    ap.add_argument("--cpu-bound-camera", action="store_true",
                    help="let DemoCamera compute every image (it then needs ~1 core by itself); default is "
                         "FastImage, a camera limited by its exposure like real hardware")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="lowdose-bench-"))
    endpoint = args.endpoint or f"ipc://{tmp}/bench.sock"
    cfg = HookConfig(endpoint=endpoint, spool_dir=tmp / "spool", close_timeout_s=60)

    ready, stop = mp.Event(), mp.Event()
    server = mp.Process(target=ack_server, args=(endpoint, ready, stop), daemon=True)
    server.start()
    if not ready.wait(30):
        raise RuntimeError("ack server did not start")

    core = CMMCorePlus()
    try:
        core.loadSystemConfiguration()
        core.setProperty("Camera", "OnCameraCCDXSize", args.size)
        core.setProperty("Camera", "OnCameraCCDYSize", args.size)
        core.setExposure(args.exposure)
        core.setProperty("Camera", "FastImage", 0 if args.cpu_bound_camera else 1)
        print(f"# {platform.node()} | {psutil.cpu_count()} CPUs | Python {platform.python_version()} | {endpoint}")
        mode = "computed images (CPU-bound camera)" if args.cpu_bound_camera else "FastImage"
        print(f"speed: DemoCamera {mode}, {args.size}x{args.size} uint16, {args.exposure} ms exposure, "
              f"{args.frames} frames x {args.repeats} runs per side")
        res = speed(core, cfg, args.frames, args.repeats)
        print(f"  without hook fps: {', '.join(f'{x:.1f}' for x in res['without'])}"
              f"  (median {statistics.median(res['without']):.1f})")
        print(f"  with hook    fps: {', '.join(f'{x:.1f}' for x in res['with'])}"
              f"  (median {statistics.median(res['with']):.1f})")
        print(f"  ratio with/without (medians): {res['ratio']:.3f}  (target >= 0.98)")
        print(f"  CPU of the acquisition process per frame: {res['cpu_without_us']:.0f} us without, "
              f"{res['cpu_with_us']:.0f} us with the hook")
        if args.long_frames:
            core.setProperty("Camera", "OnCameraCCDXSize", args.long_size)
            core.setProperty("Camera", "OnCameraCCDYSize", args.long_size)
            mem = memory(core, cfg, args.long_frames)
            print(f"memory: {mem['frames']} frames {args.long_size}x{args.long_size} at {mem['fps']:.0f} fps")
            print(f"  RSS first tenth {mem['rss_start_mb']:.1f} MB, last tenth {mem['rss_end_mb']:.1f} MB, "
                  f"max {mem['rss_max_mb']:.1f} MB, growth {mem['growth_mb']:+.1f} MB")
            c = mem["counters"]
            print(f"  sender: queued {c.queued} sent {c.sent} acked {c.acked} resent {c.resent} "
                  f"spooled {c.spooled} in_memory_bytes {c.in_memory_bytes}")
        growth = f"; hook RSS growth {mem['growth_mb']:+.1f} MB over {mem['frames']} frames" if args.long_frames else ""
        print(f"acquisition_overhead: {res['ratio']:.3f} MDA frames/s with/without the hook (target >= 0.98){growth}")
    finally:
        release_core(core)
        stop.set()
        server.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
