"""Dashboard overhead: the daemon's write + restore rate with the dashboard off, on and idle, watched by
pages that read, and watched by pages that stopped reading.

    python benchmarks/dashboard_overhead.py [--frames 300] [--size 512] [--rounds 3] [--pages 3]

A real in-process daemon (identity denoiser, fifo: every frame restored live), fed over ZeroMQ by a bare
protocol client as fast as it takes them; the figure is frames per second from the first frame sent
until every frame is written and restored. Conditions alternate within each round (same machine
state); medians over the rounds. The baseline is the dashboard off, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from wire_client import WireClient  # noqa: E402

from lowdose.daemon.config import load_config  # noqa: E402
from lowdose.daemon.server import Daemon  # noqa: E402
from lowdose.wire import protocol as p  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon(base: Path, dashboard: bool) -> Daemon:
    work = Path(tempfile.mkdtemp(dir=base))
    cfg = load_config(None, overrides={
        "server.endpoints": [f"ipc://{work}/d.sock"], "server.preview_endpoint": None,
        "storage.output_dir": str(work / "data"), "storage.fsync": False,
        "restore.denoiser": "identity", "restore.policy": "fifo",
        "dashboard.enabled": dashboard, "dashboard.port": free_port(),
    })
    d = Daemon(cfg)
    d.start()
    return d


def stream(d: Daemon, run: str, frames: list[np.ndarray], n: int) -> float:
    c = WireClient(d.cfg.server.endpoints[0])
    t0 = time.perf_counter()
    c.send(p.Start(run=run, shape=frames[0].shape, dtype="uint16", instrument="bench", sizes={"t": 0}))
    for seq in range(n):
        c.send_frame(run, seq, frames[seq % len(frames)], t=seq)
    while True:
        r = next((r for r in d.status()["runs"] if r["run"] == run), None)
        if r and r["frames_written"] == n and r["frames_restored_live"] + r["frames_restored_backfill"] == n:
            break
        time.sleep(0.01)
    dt = time.perf_counter() - t0
    c.close()
    return n / dt


def reading_pages(url: str, run: str, k: int) -> tuple[threading.Event, list[int]]:
    stop, got = threading.Event(), [0]

    async def page() -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"type": "view", "run": run}))
            while not stop.is_set():
                try:
                    msg = await ws.receive(timeout=0.2)
                except asyncio.TimeoutError:
                    continue
                if msg.type == aiohttp.WSMsgType.BINARY:
                    got[0] += 1

    async def all_pages() -> None:
        await asyncio.gather(*(page() for _ in range(k)))

    threading.Thread(target=lambda: asyncio.run(all_pages()), daemon=True).start()
    return stop, got


def stalled_page(port: int, run: str) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall((f"GET /api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += s.recv(1)
    payload, mask = json.dumps({"type": "view", "run": run}).encode(), os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))
    return s


def measure(base: Path, condition: str, frames: list[np.ndarray], n: int, pages: int) -> tuple[float, int]:
    d = daemon(base, dashboard=condition != "off")
    stop, got, stalled = None, [0], []
    try:
        stream(d, "warm-up", frames, 20)
        if condition == "reading":
            stop, got = reading_pages(d.dashboard.url.replace("http", "ws") + "api/ws", "run", pages)
        elif condition == "stalled":
            stalled = [stalled_page(d.cfg.dashboard.port, "run") for _ in range(pages)]
        time.sleep(0.5)
        fps = stream(d, "run", frames, n)
        return fps, got[0]
    finally:
        if stop is not None:
            stop.set()
        for s in stalled:
            s.close()
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pages", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    frames = [(rng.poisson(20, (args.size, args.size)) + 100).astype(np.uint16) for _ in range(8)]
    base = Path(tempfile.mkdtemp(prefix="lowdose-dashbench-"))
    conditions = ("off", "idle", "reading", "stalled")
    fps: dict[str, list[float]] = {c: [] for c in conditions}
    previews: list[int] = []
    print(f"{args.frames} frames of {args.size}x{args.size} uint16 per measurement, {args.pages} pages, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs")
    try:
        for r in range(args.rounds):
            for c in conditions:
                f, got = measure(base, c, frames, args.frames, args.pages)
                fps[c].append(f)
                if c == "reading":
                    previews.append(got)
                print(f"round {r + 1} {c:8s} {f:7.1f} frames/s written+restored"
                      + (f"  ({got} previews to {args.pages} pages)" if c == "reading" else ""))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {c: statistics.median(v) for c, v in fps.items()}
    for c in conditions:
        print(f"median {c:8s} {med[c]:7.1f} frames/s  ratio to off {med[c] / med['off']:.2f}")
    print(f"dashboard_overhead: {med['reading'] / med['off']:.2f} frames/s with {args.pages} reading pages / "
          f"dashboard off ({med['idle'] / med['off']:.2f} idle, {med['stalled'] / med['off']:.2f} with "
          f"{args.pages} stalled pages), {args.size}px, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
