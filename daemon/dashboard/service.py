"""The dashboard's own thread and event loop, started and stopped by the daemon.

Nothing here runs on the daemon's loops: the loops offer frames to the mailbox, and this thread
samples the daemon's status once a second, renders previews on one render thread of its own and
serves the browsers. If it cannot bind, :meth:`Dashboard.start` raises :class:`DashboardError`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from aiohttp import web

from .app import DashboardApp
from .config import DashboardConfig
from .history import History
from .live import LiveHub
from .mailbox import PreviewMailbox
from .previews import PreviewRenderer

log = logging.getLogger("lowdose.dashboard")

SAMPLE_S = 1.0
# Kernel send buffer of each browser's connection (accepted sockets inherit the listener's). Small and
# fixed, not autotuned up to megabytes: a browser that stops reading pins at most this much (plus
# aiohttp's own 64 KiB) and its session blocks after a preview or two, i.e. it stops costing renders.
SEND_BUFFER_BYTES = 256 * 1024


class DashboardError(RuntimeError):
    """The dashboard cannot start; the message names the address and the fix."""


class Dashboard:
    def __init__(self, cfg: DashboardConfig, status: Callable[[], dict[str, Any]], mailbox: PreviewMailbox):
        self.cfg = cfg
        self._status = status
        self.mailbox = mailbox
        self.renderer = PreviewRenderer(mailbox, cfg.preview_max_px)
        self.history = History(cfg.history_s)
        # one thread: renders queue up behind each other instead of taking more of the daemon's CPU
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lowdose-dashboard-render")
        self.hub = LiveHub(self.renderer, self._render, cfg.preview_fps)
        self.app = DashboardApp(status=status, renderer=self.renderer, history=self.history, hub=self.hub,
                                pool=self._pool, token=cfg.token)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.cfg.address}]" if ":" in self.cfg.address else self.cfg.address
        return f"http://{host}:{self.cfg.port}/"

    async def _render(self, run: str, kind: str, **kw):
        return await self.app.render(run, kind, **kw)

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._run, name="lowdose-dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise DashboardError(f"the dashboard did not start within {timeout:g} s")
        if self._error is not None:
            self._thread.join(5)
            self._pool.shutdown(wait=False)
            raise DashboardError(
                f"the dashboard cannot listen on {self.cfg.address}:{self.cfg.port} ({self._error}); "
                "choose another dashboard.port, or set dashboard.enabled: false") from None

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start(); after start a failure only ends the dashboard
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("the dashboard stopped")
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        runner = web.AppRunner(self.app.build(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.SockSite(runner, listening_socket(self.cfg.address, self.cfg.port))
            await site.start()
            self.sample()
            self._ready.set()
            sampler = asyncio.create_task(self._sample_forever())
            await self._stopped.wait()
            sampler.cancel()
            await self.hub.close_all()
        finally:
            await runner.cleanup()

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            try:
                self.sample()
            except Exception:  # a viewer's problem must never become the daemon's: log, go on
                log.exception("dashboard: sampling the daemon's status failed")

    def sample(self) -> None:
        status = self._status()
        self.app.latest = status
        self.history.add(time.time(), status)
        self.mailbox.keep_only({r["run"] for r in status.get("runs", [])})
        self.hub.status_changed(self.app.page_status())


def listening_socket(address: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket; OSError if the address or port cannot be had."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted daemon rebinds at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        sock.bind((address, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def start_dashboard(cfg: DashboardConfig, status: Callable[[], dict[str, Any]],
                    mailbox: PreviewMailbox) -> Dashboard | None:
    """The daemon's dashboard, started; None if disabled or if it cannot bind (logged: a viewer is not
    the data path, so the daemon serves on without it)."""
    if not cfg.enabled:
        return None
    dashboard = Dashboard(cfg, status, mailbox)
    try:
        dashboard.start()
    except DashboardError as exc:
        log.error("%s; the daemon runs without it", exc)
        return None
    log.info("dashboard: %s", dashboard.url)
    return dashboard
