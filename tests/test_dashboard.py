"""The daemon's web dashboard over real sockets: a real daemon, a real hook on a real MMCore, real stores.

What it promises: the JSON API and the PNG previews show what the daemon holds; the WebSocket streams
counters and previews; a token, when set, guards every request; it refuses a non-loopback bind
without one; and a browser that stops reading never slows the daemon's raw writes or restoration.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import threading
import time

import aiohttp
import numpy as np
import pytest
import requests
from dashboard_helpers import SpreadDenoiser, acquire, dashboard_config, free_port, split_preview, start_daemon, wait_for
from PIL import Image

from lowdose.daemon.config import ConfigError, load_config
from lowdose.daemon.server import Daemon
from lowdose.wire import protocol as p
from wire_client import WireClient

TOKEN = "a-test-token-of-24-chars"


def _png(content: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(content))
    assert img.format == "PNG" and img.mode == "L"
    return np.asarray(img)


def _run(base: str, run: str, **kw) -> dict:
    return next(r for r in requests.get(base + "api/runs", timeout=5, **kw).json() if r["run"] == run)


def test_a_non_loopback_bind_needs_a_token():
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides={"dashboard.address": "0.0.0.0"})
    assert "dashboard" in str(info.value) and "dashboard.token" in str(info.value)
    cfg = load_config(None, overrides={"dashboard.address": "0.0.0.0", "dashboard.token": TOKEN})
    assert cfg.dashboard.token == TOKEN
    assert load_config(None).dashboard.address == "127.0.0.1" and load_config(None).dashboard.enabled
    with pytest.raises(ConfigError, match="dashboard.token"):
        load_config(None, overrides={"dashboard.address": "192.168.1.10"})
    # a disabled dashboard binds nothing, so it needs no token
    load_config(None, overrides={"dashboard.address": "0.0.0.0", "dashboard.enabled": False})


def test_every_request_needs_the_token_when_one_is_set(tmp_path):
    cfg = dashboard_config(tmp_path, free_port(), **{"dashboard.token": TOKEN})
    d = start_daemon(cfg)
    try:
        base = d.dashboard.url
        for path in ("", "api/runs", "api/daemon", "api/runs/x/preview/raw.png"):
            assert requests.get(base + path, timeout=5).status_code == 401, path
            assert requests.get(base + path, params={"token": "wrong" * 5}, timeout=5).status_code == 401
        assert "token" in requests.get(base + "api/runs", timeout=5).text
        assert requests.get(base + "api/runs", params={"token": TOKEN}, timeout=5).json() == []
        ok = requests.get(base + "api/runs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert ok.status_code == 200
        assert "lowdose" in requests.get(base, params={"token": TOKEN}, timeout=5).text
        ws = requests.get(base + "api/ws", timeout=5, headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                                "Sec-WebSocket-Key": "x" * 22 + "==",
                                                                "Sec-WebSocket-Version": "13"})
        assert ws.status_code == 401
        # read-only: nothing but GET
        assert requests.post(base + "api/runs", params={"token": TOKEN}, timeout=5).status_code == 405
    finally:
        d.stop()


def test_a_taken_port_leaves_the_daemon_serving_without_a_dashboard(tmp_path, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = dashboard_config(tmp_path, taken.getsockname()[1])
        d = Daemon(cfg)
        d.start()
        try:
            assert d.dashboard is None
            assert any("dashboard cannot listen" in r.getMessage() for r in caplog.records)
            assert d.status()["runs"] == []  # the daemon itself serves on
        finally:
            d.stop()


async def _watch(url: str, run: str, seconds_or_event, out: list) -> None:
    """A well-behaved page: views ``run`` and keeps every message until told to stop."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"type": "view", "run": run}))
            while not seconds_or_event.is_set():
                try:
                    msg = await ws.receive(timeout=0.2)
                except asyncio.TimeoutError:
                    continue
                if msg.type == aiohttp.WSMsgType.BINARY:
                    out.append(split_preview(msg.data))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    out.append((json.loads(msg.data), None))
                else:
                    return


def _watcher(base: str, run: str) -> tuple[threading.Thread, threading.Event, list]:
    stop, got = threading.Event(), []
    url = base.replace("http://", "ws://") + "api/ws"
    t = threading.Thread(target=lambda: asyncio.run(_watch(url, run, stop, got)), daemon=True)
    t.start()
    return t, stop, got


def test_api_and_websocket_follow_a_real_acquisition(tmp_path, sim_core):
    core, _camera = sim_core
    cfg = dashboard_config(tmp_path, free_port(), **{"restore.policy": "fifo"})
    d = start_daemon(cfg)
    try:
        base = d.dashboard.url
        thread, stop, got = _watcher(base, "live-1")
        mda = acquire(core, cfg, "live-1", 40, interval_s=0.03)
        mda.join(60)
        wait_for(lambda: _run(base, "live-1")["state"] == "finished", what="the run to finish on the page's API")
        time.sleep(0.6)  # one more preview tick
        stop.set()
        thread.join(10)

        run = _run(base, "live-1")
        status = next(r for r in d.status()["runs"] if r["run"] == "live-1")
        assert run["frames_written"] == status["frames_written"] == 40
        assert run["frames_restored"] == 40 and run["instrument"] == "sim-scope"
        assert run["store"].endswith("live-1.ome.zarr")

        previews = [(h, png) for h, png in got if png is not None]
        statuses = [h for h, png in got if png is None]
        restored_ts = [h["t"] for h, _ in previews if h["kind"] == "restored"]
        assert len(set(restored_ts)) >= 2, f"the page saw one restored frame only: {restored_ts}"
        assert restored_ts[-1] == 39  # the newest restored frame reached the page
        assert {h["kind"] for h, _ in previews} >= {"raw", "restored"}
        assert all(_png(png).shape == (128, 128) for _, png in previews)
        assert statuses and statuses[-1]["type"] == "status"
        assert any(r["run"] == "live-1" for r in statuses[-1]["runs"])

        raw = requests.get(base + "api/runs/live-1/preview/raw.png", timeout=5)
        rest = requests.get(base + "api/runs/live-1/preview/restored.png", timeout=5)
        matched = requests.get(base + "api/runs/live-1/preview/raw.png", params={"of": "restored"}, timeout=5)
        meta = json.loads(rest.headers["X-Lowdose-Frame"])
        assert meta["t"] == 39 and json.loads(raw.headers["X-Lowdose-Frame"])["t"] == 39
        # shared contrast: identity restoration of the same frame in the same window is the same picture
        assert matched.content == rest.content
        np.testing.assert_array_equal(_png(raw.content), _png(rest.content))
        # an explicit window is applied: everything at or above 0 with lo=hi-1=-1 is white
        white = _png(requests.get(base + "api/runs/live-1/preview/restored.png",
                                  params={"lo": -2, "hi": -1}, timeout=5).content)
        assert white.min() == 255

        # the slider's frames come from the store on disk
        shapes = requests.get(base + "api/runs/live-1/frames", timeout=5).json()["shapes"]
        assert shapes["raw"][0] == shapes["restored"][0] == 40
        a, b = (requests.get(base + f"api/runs/live-1/frames/{t}/raw.png", params={"lo": 100, "hi": 140},
                             timeout=5) for t in (3, 30))
        assert a.status_code == b.status_code == 200 and a.content != b.content
        stored = np.asarray(__import__("zarr").open_group(run["store"], mode="r")["raw/0"][3, 0, 0], float)
        expected = np.clip((stored - 100) * 255 / 40, 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(_png(a.content), expected)
        assert requests.get(base + "api/runs/live-1/frames/99/raw.png", timeout=5).status_code == 404
        assert requests.get(base + "api/runs/nope", timeout=5).status_code == 404
        assert requests.get(base + "api/runs/live-1/preview/nope.png", timeout=5).status_code == 404
        history = requests.get(base + "api/runs/live-1/history", timeout=5).json()
        assert history and history[-1]["frames_written"] == 40
    finally:
        d.stop()


def _send_text(s: socket.socket, text: str) -> None:
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))


def _stalled_websocket(port: int, run: str) -> socket.socket:
    """A page that opens the WebSocket, asks for a run's previews in many windows, and never reads:
    each new window makes the dashboard send the previews again, until its buffers are full."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += s.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    for lo in range(12):
        _send_text(s, json.dumps({"type": "view", "run": run, "lo": lo, "hi": 60 + lo}))
        time.sleep(0.05)
    return s


def _stream_and_time(d: Daemon, run: str, frames: list[np.ndarray]) -> float:
    """Seconds from the first frame sent until every frame is written and restored."""
    c = WireClient(d.cfg.server.endpoints[0])
    try:
        t0 = time.perf_counter()
        c.send(p.Start(run=run, shape=frames[0].shape, dtype="uint16", instrument="bench", sizes={"t": 0}))
        for seq, f in enumerate(frames):
            c.send_frame(run, seq, f, t=seq)

        def done() -> bool:
            r = next((r for r in d.status()["runs"] if r["run"] == run), None)
            return bool(r) and r["frames_written"] == len(frames) and \
                r["frames_restored_live"] + r["frames_restored_backfill"] == len(frames)

        wait_for(done, timeout=120, what=f"run {run} written and restored")
        return time.perf_counter() - t0
    finally:
        c.close()


def test_a_stalled_browser_does_not_slow_writing_or_restoration(tmp_path):
    port = free_port()
    cfg = dashboard_config(tmp_path, port, **{"restore.policy": "fifo", "restore.denoiser_options": {"delay_ms": 2},
                                              "dashboard.preview_fps": 10})
    d = start_daemon(cfg)
    rng = np.random.default_rng(0)
    frames = [rng.poisson(30, (512, 512)).astype(np.uint16) for _ in range(8)]
    frames = [frames[i % 8] for i in range(200)]  # noise: large PNGs, so a stalled reader's buffers fill fast
    stalled: list[socket.socket] = []
    try:
        _stream_and_time(d, "warm-up", frames[:10])
        baseline = _stream_and_time(d, "baseline", frames)
        stalled = [_stalled_websocket(port, "baseline") for _ in range(3)]
        counters = lambda: requests.get(d.dashboard.url + "api/daemon", timeout=5).json()["dashboard"]  # noqa: E731
        wait_for(lambda: counters()["sending"] >= 3, timeout=20, what="three stuck pages")
        thread, stop, got = _watcher(d.dashboard.url, "stalled")
        with_stall = _stream_and_time(d, "stalled", frames)
        time.sleep(0.5)
        after = counters()
        stop.set()
        thread.join(10)
    finally:
        for s in stalled:
            s.close()
        d.stop()
    # the three stalled pages stayed stuck through the run (each holds an unsent preview, or was cut off) ...
    assert after["sending"] + after["sessions_cut"] >= 3, after
    # ... a page that reads still got the run's previews ...
    assert sum(1 for h, png in got if png is not None and h["kind"] == "restored") >= 2
    # ... and the daemon wrote and restored as fast as without them (generously: timing on a shared machine)
    assert with_stall < 2.0 * baseline + 2.0, (baseline, with_stall)


def test_the_uncertainty_is_shown_when_the_model_gives_one(tmp_path):
    cfg = dashboard_config(tmp_path, free_port(), **{"restore.policy": "fifo"})
    d = Daemon(cfg, denoiser_factory=SpreadDenoiser)
    d.start()
    try:
        c = WireClient(cfg.server.endpoints[0])
        c.send(p.Start(run="unc", shape=(32, 40), dtype="uint16", instrument="t", sizes={"t": 0}))
        for seq in range(4):
            c.send_frame("unc", seq, np.random.default_rng(seq).poisson(9, (32, 40)).astype(np.uint16), t=seq)
        c.send(p.End(run="unc", frames=4))
        c.recv_until(lambda m: isinstance(m, p.Ack) and m.finished)
        c.close()
        assert d.wait_idle(30)
        d.dashboard.sample()
        base = d.dashboard.url
        assert _run(base, "unc")["previews"]["uncertainty"] is not None
        live = requests.get(base + "api/runs/unc/preview/uncertainty.png", timeout=5)
        disk = requests.get(base + "api/runs/unc/frames/3/uncertainty.png", timeout=5)
        assert live.status_code == disk.status_code == 200
        assert json.loads(live.headers["X-Lowdose-Frame"])["lo"] == 0.0  # its own window, from zero
        assert _png(live.content).shape == (32, 40) and _png(live.content).max() > 0
    finally:
        d.stop()
