"""A real daemon (in-process) with its dashboard on a free port, and real frames for it."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import useq

from lowdose.daemon.config import load_config
from lowdose.daemon.server import Daemon
from lowdose.plugins.acquisition.pymmcore_plus_hook import PymmcorePlusHook
from lowdose.plugins.denoisers.interface import DenoiserInfo, Restoration, check_frames


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_config(tmp_path: Path, port: int, **overrides):
    endpoint = f"ipc://{tmp_path}/d.sock"
    return load_config(None, overrides={
        "server.endpoints": [endpoint],
        "server.preview_endpoint": None,
        "storage.output_dir": str(tmp_path / "data"),
        "storage.fsync": False,
        "restore.denoiser": "identity",
        "dashboard.port": port,
        "hook.endpoint": endpoint,
        "hook.spool_dir": str(tmp_path / "spool"),
        "hook.ack_timeout_s": 1.0,
        "hook.heartbeat_s": 0.3,
        **overrides,
    })


def start_daemon(cfg) -> Daemon:
    d = Daemon(cfg)
    d.start()
    assert d.dashboard is not None, "the dashboard did not start (see the log)"
    return d


def acquire(core, cfg, run: str, frames: int, interval_s: float = 0.0) -> threading.Thread:
    """A real MDA on ``core`` with the pymmcore-plus hook attached, in a thread; join it for the report."""
    hook = PymmcorePlusHook(cfg.hook, run=run, instrument="sim-scope")
    result: dict = {}

    def go() -> None:
        core.mda.run(useq.MDASequence(time_plan={"interval": interval_s, "loops": frames}), output=hook)
        result["report"] = hook.report(timeout=60)

    thread = threading.Thread(target=go, name=f"mda-{run}")
    thread.result = result  # type: ignore[attr-defined]
    thread.start()
    return thread


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def split_preview(message: bytes) -> tuple[dict, bytes]:
    """A binary WebSocket preview: (header, PNG bytes)."""
    n = int.from_bytes(message[:4], "big")
    return json.loads(message[4:4 + n]), message[4 + n:]


class SpreadDenoiser:
    """A real (if simple) denoiser with an uncertainty: a 3x3 box mean, and the frame's deviation from it."""

    info = DenoiserInfo(name="spread", version="1", parameters={}, preferred_batch=4, device="cpu",
                        has_uncertainty=True)

    def restore(self, frames, *, offset=None, gain=None) -> Restoration:
        frames = check_frames(frames)
        f = frames.astype(np.float32)
        pad = np.pad(f, ((0, 0), (1, 1), (1, 1)), mode="edge")
        mean = sum(pad[:, 1 + dy:pad.shape[1] - 1 + dy, 1 + dx:pad.shape[2] - 1 + dx]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
        return Restoration(frames=np.rint(mean).astype(frames.dtype), uncertainty=np.abs(f - mean))
