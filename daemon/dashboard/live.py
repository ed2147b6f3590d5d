"""One browser's WebSocket: counters as JSON text, previews as binary messages, each conflated.

Messages a page sends (JSON text): ``{"type": "view", "run": RUN or null, "live": bool,
"raw": "matched"|"newest", "lo": number|null, "hi": number|null}``.

Messages it gets: ``{"type": "status", ...}`` about once a second, and binary previews: a 4-byte
big-endian header length, the header (JSON: run, kind, version, t, c, z, p, lo, hi, shape, mode),
then the PNG. Each session sends only when its previous message has gone: a page that stops
reading holds one unsent message and nothing queues behind it (it sees the newest frame when it
reads again, or is cut off after ``SEND_TIMEOUT_S``). Nothing here can wait on the daemon's loops.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, ValidationError

from .previews import PreviewRenderer, Rendered

log = logging.getLogger("lowdose.dashboard")

SEND_TIMEOUT_S = 10.0  # a page that takes no message for this long is cut off (it reconnects)


class View(BaseModel):
    """What a page shows; validated like any input from the network (rule 5)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["view"] = "view"
    run: str | None = None
    live: bool = True
    raw: Literal["matched", "newest"] = "matched"
    lo: float | None = None
    hi: float | None = None


@dataclass
class Counters:
    """The dashboard's own numbers (in ``/api/daemon``), so a test or an operator sees conflation."""

    sessions: int = 0
    sessions_cut: int = 0
    previews_sent: int = 0
    previews_skipped: int = 0  # newer frames arrived before a session could take the older one
    sending: int = 0  # sends under way now: a page that stopped reading holds one here until cut off


@dataclass(eq=False)  # sessions are kept in a set, by identity
class Session:
    ws: web.WebSocketResponse
    request: web.Request
    view: View = field(default_factory=View)
    # (run, kind) -> (version, lo, hi, raw) last sent: a new frame or a new window sends again
    sent: dict[tuple[str, str], tuple] = field(default_factory=dict)
    status_sent: int = -1
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class LiveHub:
    """Every open WebSocket session; the status broadcaster calls :meth:`status_changed`."""

    def __init__(self, renderer: PreviewRenderer, render: Callable, preview_fps: float):
        self.renderer = renderer
        self._render = render  # coroutine: runs PreviewRenderer.render on the render thread
        self.interval = 1.0 / preview_fps
        self.sessions: set[Session] = set()
        self.counters = Counters()
        self.status_seq = 0
        self.status_text = json.dumps({"type": "status"})

    def status_changed(self, status: dict[str, Any]) -> None:
        self.status_seq += 1
        self.status_text = json.dumps({"type": "status", **status}, default=str)
        for s in self.sessions:
            s.wake.set()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=64 * 1024)
        await ws.prepare(request)
        session = Session(ws=ws, request=request)
        self.sessions.add(session)
        self.counters.sessions += 1
        sender = asyncio.create_task(self._send_loop(session))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    session.view = View.model_validate_json(msg.data)
                    session.sent.clear()  # a new view shows the newest frames at once, even if sent before
                except ValidationError as exc:
                    await ws.send_str(json.dumps({"type": "error", "error": str(exc.errors()[:1])}))
                    continue
                session.wake.set()
        finally:
            self.sessions.discard(session)
            sender.cancel()
        return ws

    async def _send_loop(self, s: Session) -> None:
        try:
            while not s.ws.closed:
                try:
                    await asyncio.wait_for(s.wake.wait(), self.interval)
                except asyncio.TimeoutError:
                    pass
                s.wake.clear()
                if s.status_sent != self.status_seq:
                    s.status_sent = self.status_seq
                    await self._send(s, self.status_text)
                if s.view.run is not None and s.view.live:
                    await self._send_previews(s)
                    await asyncio.sleep(self.interval)  # at most preview_fps previews a second
        except (ConnectionError, asyncio.TimeoutError) as exc:
            self.counters.sessions_cut += 1
            log.info("dashboard: a page stopped reading (%s); cut off", type(exc).__name__)
            transport = s.request.transport
            if transport is not None:
                transport.abort()
        except asyncio.CancelledError:
            pass
        except Exception:  # one page's trouble ends its session, never the dashboard
            log.exception("dashboard: a page's session failed")
            await s.ws.close()

    async def _send_previews(self, s: Session) -> None:
        run, matched = s.view.run, s.view.raw == "matched"
        assert run is not None
        for kind in ("restored", "raw", "uncertainty"):
            key = (run, kind)
            version = self.renderer.version(run, kind, matched=matched and kind == "raw")
            shown = (version, s.view.lo, s.view.hi, s.view.raw)
            if version is None or s.sent.get(key) == shown:
                continue
            rendered: Rendered | None = await self._render(run, kind, matched=matched and kind == "raw",
                                                           lo=s.view.lo, hi=s.view.hi)
            if rendered is None:
                continue
            last = s.sent.get(key, (None,))[0]
            if last is not None and rendered.meta["version"] > last + 1:
                self.counters.previews_skipped += rendered.meta["version"] - last - 1
            s.sent[key] = (rendered.meta["version"], *shown[1:])
            header = json.dumps(rendered.meta).encode()
            await self._send(s, len(header).to_bytes(4, "big") + header + rendered.png)
            self.counters.previews_sent += 1

    async def _send(self, s: Session, data: str | bytes) -> None:
        send = s.ws.send_str(data) if isinstance(data, str) else s.ws.send_bytes(data)
        self.counters.sending += 1
        try:
            await asyncio.wait_for(send, SEND_TIMEOUT_S)
        finally:
            self.counters.sending -= 1

    async def close_all(self, timeout: float = 1.0) -> None:
        """Close every session; one that cannot take the close frame in ``timeout`` is cut off."""
        sessions = list(self.sessions)
        closing = [asyncio.create_task(s.ws.close()) for s in sessions]
        if closing:
            await asyncio.wait(closing, timeout=timeout)
        for s, task in zip(sessions, closing):
            if not task.done():
                task.cancel()
                if s.request.transport is not None:
                    s.request.transport.abort()
