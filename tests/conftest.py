"""Shared fixtures: real MMCores (DemoCamera, simulated camera), a fake daemon, hook configs.

Every core made here is released at teardown (MDA stopped, devices unloaded,
callbacks disconnected and unregistered): a CMMCore left loaded can abort the
interpreter at exit.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import zmq

from lowdose.wire import protocol as p
from lowdose.wire.hook_config import HookConfig

# ----------------------------------------------------------------------------- cores


@pytest.fixture
def demo_core():
    """A real ``CMMCorePlus`` with Micro-Manager's demo configuration (mm-test-adapters)."""
    from pymmcore_plus import CMMCorePlus

    from lowdose.plugins.acquisition.pymmcore_plus_hook import release_core

    core = CMMCorePlus()
    core.loadSystemConfiguration()  # finds MMConfig_demo.cfg in mm-test-adapters
    core.setProperty("Camera", "Mode", "Noise")  # independent frames: bit-identity means something
    # DemoCamera's hardware sequence drops images when the machine is loaded (pymmcore-plus warns
    # "Unexpected number of images returned from sequence"): a camera fault, not a hook fault, that
    # made frame counts flaky in CI. Snapped frames arrive exactly once; the sequenced path is
    # covered by the simulated camera in test_hooks_sim_camera.py, which cannot drop images.
    core.mda.engine.use_hardware_sequencing = False
    yield core
    release_core(core)


@pytest.fixture
def sim_core():
    """``(core, camera)``: a ``UniMMCore`` with the simulated low-light camera, 128x128."""
    from lowdose.plugins.acquisition.sim_camera import close_core, make_sim_core

    core, camera = make_sim_core((128, 128), peak_photons=40.0, exposure_ms=2.0, seed=3)
    yield core, camera
    close_core(core)


@pytest.fixture
def pycromanager_headless():
    """pycromanager's Python backend on the demo configuration; stopped at teardown."""
    import mm_test_adapters
    from pycromanager import start_headless, stop_headless

    start_headless(mm_test_adapters.device_adapter_path(), "MMConfig_demo.cfg", python_backend=True)
    from mmpycorex import Core

    core = Core()
    core.set_property("Camera", "Mode", "Noise")
    yield core
    stop_headless()
    # pycromanager 1.0.2 never forgets its Engine singleton, so a second
    # start_headless in the same process would drive the first (unloaded) core.
    from pycromanager.acquisition.acq_eng_py.internal.engine import Engine

    if hasattr(Engine, "singleton"):
        del Engine.singleton


# ----------------------------------------------------------------------------- fake daemon


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@dataclass
class Received:
    frame: p.Frame
    pixels: bytes


@dataclass
class FakeDaemon:
    """A minimal daemon on a real ROUTER socket, run in a thread, with knobs for misbehaving.

    It keeps ``store`` (run, seq) -> frame, deduplicated by seq like the real one,
    and ``receipts``, every frame message as it arrived (duplicates included).
    ``kill()`` loses everything a process would lose (the socket, the known runs)
    but keeps ``store`` (it is "on disk"); ``restart()`` binds again.
    """

    endpoint: str = field(default_factory=free_tcp_endpoint)
    ack: bool = True  # reply with acks at all
    silent: bool = False  # read messages but never answer, drop frames (a hung daemon)
    reject: set[int] = field(default_factory=set)  # seqs answered with Error(code="invalid")
    ack_delay_s: float = 0.0  # hold acks this long (a slow disk)
    curve_secret: bytes | None = None
    keep_pixels: bool = True  # False: store headers only (throughput tests)
    confirm_end: bool = True  # answer a complete End with Ack(finished=True)
    id: str = field(default_factory=lambda: f"fake-{uuid.uuid4().hex[:6]}")

    def __post_init__(self) -> None:
        self.store: dict[tuple[str, int], Received] = {}
        self.receipts: list[tuple[str, int]] = []
        self.starts: list[p.Start] = []
        self.ends: dict[str, p.End] = {}
        self.errors_sent: list[p.Error] = []
        self.identities: set[bytes] = set()
        self.known_runs: set[str] = set()
        self._ctx = zmq.Context()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # lifecycle ---------------------------------------------------------------

    def start(self) -> FakeDaemon:
        self._stop.clear()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake daemon did not bind")
        return self

    def kill(self) -> None:
        """Like SIGKILL: socket gone, runs forgotten; the stored frames stay."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None
        self.known_runs.clear()

    def restart(self) -> FakeDaemon:
        self.id = f"fake-{uuid.uuid4().hex[:6]}"
        return self.start()

    def close(self) -> None:
        self.kill()
        self._ctx.term()

    # views -------------------------------------------------------------------

    def frames(self, run: str) -> dict[int, Received]:
        with self._lock:
            return {seq: r for (r_run, seq), r in self.store.items() if r_run == run}

    def duplicates(self, run: str) -> int:
        counts = Counter(seq for r_run, seq in self.receipts if r_run == run)
        return sum(n - 1 for n in counts.values())

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    # the server --------------------------------------------------------------

    def _serve(self, ready: threading.Event) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 16)
        if self.curve_secret is not None:
            sock.curve_server = True
            sock.curve_secretkey = self.curve_secret
        for _ in range(200):  # the port may linger a moment after a kill
            try:
                sock.bind(self.endpoint)
                break
            except zmq.ZMQError:
                time.sleep(0.02)
        ready.set()
        held: list[tuple[float, bytes, p.Ack]] = []
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while held and held[0][0] <= now:
                    _, ident, ack = held.pop(0)
                    self._send(sock, ident, ack)
                if not sock.poll(10):
                    continue
                while True:
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    ident, body = parts[0], parts[1:]
                    self.identities.add(ident)
                    for reply in self._handle(body):
                        if isinstance(reply, p.Ack) and self.ack_delay_s > 0:
                            held.append((time.monotonic() + self.ack_delay_s, ident, reply))
                        else:
                            self._send(sock, ident, reply)
        finally:
            sock.close(0)

    def _send(self, sock: zmq.Socket, ident: bytes, msg: Any) -> None:
        if self.silent:
            return
        if isinstance(msg, p.Error):
            self.errors_sent.append(msg)
        try:
            sock.send_multipart([ident, *p.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _handle(self, body: list[bytes]) -> list[Any]:
        try:
            msg, payload = p.decode(body)
        except p.ProtocolError as exc:
            return [p.Error(code=exc.code, reason=exc.reason, run=exc.run, seq=exc.seq, daemon=self.id)]
        if self.silent:
            return []
        if isinstance(msg, p.Start):
            self.starts.append(msg)
            self.known_runs.add(msg.run)
            stored = p.ranges_from_seqs([s for (r, s) in self.store if r == msg.run])
            return [p.Ack(run=msg.run, ranges=stored, daemon=self.id)]
        if isinstance(msg, p.Heartbeat):
            if msg.run is not None and msg.run not in self.known_runs:
                return [p.Error(code="unknown_run", reason="restarted", run=msg.run, daemon=self.id)]
            return [p.Heartbeat(run=msg.run, daemon=self.id)]
        if isinstance(msg, p.Frame):
            if msg.run not in self.known_runs:
                return [p.Error(code="unknown_run", reason="restarted", run=msg.run, seq=msg.seq, daemon=self.id)]
            self.receipts.append((msg.run, msg.seq))
            if msg.seq in self.reject:
                return [p.Error(code="invalid", reason="test rejects it", run=msg.run, seq=msg.seq, daemon=self.id)]
            with self._lock:
                self.store.setdefault((msg.run, msg.seq), Received(msg, bytes(payload) if self.keep_pixels else b""))
            out: list[Any] = [p.Ack(run=msg.run, ranges=[(msg.seq, msg.seq)], daemon=self.id)] if self.ack else []
            return out + self._finished_acks(msg.run)
        if isinstance(msg, p.End):
            if msg.run not in self.known_runs:
                return [p.Error(code="unknown_run", reason="restarted", run=msg.run, daemon=self.id)]
            self.ends[msg.run] = msg
            return self._finished_acks(msg.run)
        return []

    def _finished_acks(self, run: str) -> list[Any]:
        end = self.ends.get(run)
        if end is None or not self.ack or not self.confirm_end:
            return []
        have = {s for (r, s) in self.store if r == run}
        missing = set(range(end.frames)) - have - self.reject
        if missing:
            return []
        return [p.Ack(run=run, ranges=[], daemon=self.id, finished=True)]


@pytest.fixture
def fake_daemon():
    d = FakeDaemon().start()
    yield d
    d.close()


@pytest.fixture
def hook_cfg_factory(tmp_path: Path) -> Callable[..., HookConfig]:
    """HookConfig for tests: spool in tmp_path, quick timeouts. Override any field."""

    def make(endpoint: str, **kw: Any) -> HookConfig:
        base: dict[str, Any] = dict(
            endpoint=endpoint,
            spool_dir=tmp_path / "spool",
            memory_mb=64.0,
            window_frames=8,
            ack_timeout_s=1.0,
            heartbeat_s=0.25,
            close_timeout_s=20.0,
        )
        base.update(kw)
        return HookConfig(**base)

    return make


def frame_pixels(received: Received) -> np.ndarray:
    return np.frombuffer(received.pixels, dtype=received.frame.dtype).reshape(received.frame.shape)


# ----------------------------------------------------------------------------- torch


@pytest.fixture
def one_torch_thread():
    """Tiny models: a second thread only adds synchronisation, which on a shared
    2-core machine costs several times the work itself."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
