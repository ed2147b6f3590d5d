"""The dashboard's HTTP routes (aiohttp): the page, the JSON API, the PNG previews, the WebSocket.

Read-only: every route is a GET (the WebSocket only takes a page's view settings). With a token
configured, every request must carry it, as ``Authorization: Bearer TOKEN`` or ``?token=TOKEN``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from . import disk
from .history import History, restored
from .live import LiveHub
from .previews import PreviewRenderer, render_array

KINDS = ("raw", "restored", "uncertainty")


def _float(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a number, got {value!r}") from None


def _int(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name, request.match_info.get(name))
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number, got {value!r}") from None


def token_middleware(token: str | None):
    @web.middleware
    async def check(request: web.Request, handler):
        if token is not None:
            given = request.query.get("token", "")
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                given = auth[len("Bearer "):]
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise web.HTTPUnauthorized(
                    text="this dashboard needs its token (dashboard.token): open /?token=TOKEN, "
                         "or send the header Authorization: Bearer TOKEN")
        return await handler(request)

    return check


class DashboardApp:
    """Routes over the daemon's status, the preview renderer and the stores on disk."""

    def __init__(self, *, status: Callable[[], dict[str, Any]], renderer: PreviewRenderer, history: History,
                 hub: LiveHub, pool: ThreadPoolExecutor, token: str | None):
        self.status = status
        self.renderer = renderer
        self.history = history
        self.hub = hub
        self.pool = pool
        self.token = token
        self.latest: dict[str, Any] = {"runs": []}  # the last status sampled (the API answers from it)

    def build(self) -> web.Application:
        app = web.Application(middlewares=[token_middleware(self.token)])
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/api/daemon", self.daemon)
        r.add_get("/api/history", self.daemon_history)
        r.add_get("/api/runs", self.runs)
        r.add_get("/api/runs/{run}", self.run)
        r.add_get("/api/runs/{run}/history", self.run_history)
        r.add_get("/api/runs/{run}/preview/{kind}.png", self.preview)
        r.add_get("/api/runs/{run}/frames", self.frames)
        r.add_get("/api/runs/{run}/frames/{t}/{kind}.png", self.frame)
        r.add_get("/api/ws", self.hub.handle)
        return app

    async def render(self, run: str, kind: str, **kw):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: self.renderer.render(run, kind, **kw))

    # -- views of the status -------------------------------------------------------------

    def run_view(self, r: dict[str, Any]) -> dict[str, Any]:
        run = r["run"]
        versions = {k: self.renderer.version(run, k) for k in KINDS}
        return {**r, "frames_restored": restored(r), "previews": versions}

    def daemon_view(self) -> dict[str, Any]:
        st = self.latest
        return {**{k: v for k, v in st.items() if k != "runs"}, "dashboard": vars(self.hub.counters),
                "renders": self.renderer.renders}

    def page_status(self) -> dict[str, Any]:
        """What the WebSocket sends each second: the daemon, every run, the newest history sample."""
        runs = [self.run_view(r) for r in self.latest.get("runs", [])]
        last = {run: series[-1] for run, series in self.history.runs.items() if series}
        return {"daemon": self.daemon_view(), "runs": runs,
                "sample": {"daemon": self.history.daemon[-1] if self.history.daemon else None, "runs": last}}

    def _find(self, request: web.Request) -> dict[str, Any]:
        run = request.match_info["run"]
        for r in self.latest.get("runs", []):
            if r["run"] == run:
                return r
        raise web.HTTPNotFound(text=f"the daemon has no run {run!r}; GET /api/runs lists them")

    # -- handlers --------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        page = files("lowdose.daemon.dashboard").joinpath("static/index.html").read_text()
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def daemon(self, request: web.Request) -> web.Response:
        return web.json_response(self.daemon_view(), dumps=_dumps)

    async def daemon_history(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.history.daemon), dumps=_dumps)

    async def runs(self, request: web.Request) -> web.Response:
        return web.json_response([self.run_view(r) for r in self.latest.get("runs", [])], dumps=_dumps)

    async def run(self, request: web.Request) -> web.Response:
        return web.json_response(self.run_view(self._find(request)), dumps=_dumps)

    async def run_history(self, request: web.Request) -> web.Response:
        return web.json_response(self.history.of_run(self._find(request)["run"]), dumps=_dumps)

    async def preview(self, request: web.Request) -> web.Response:
        r = self._find(request)
        kind = self._kind(request)
        matched = request.query.get("of") == "restored"
        out = await self.render(r["run"], kind, matched=matched, lo=_float(request, "lo"), hi=_float(request, "hi"),
                                max_px=_int(request, "max_px", 0) or None)
        if out is None:
            raise web.HTTPNotFound(text=f"run {r['run']!r} has no {kind} frame yet")
        return _png(out.png, out.meta)

    async def frames(self, request: web.Request) -> web.Response:
        r = self._find(request)
        loop = asyncio.get_running_loop()
        p = _int(request, "p", 0)
        try:
            shapes = await loop.run_in_executor(self.pool, disk.frames_on_disk, Path(r["store"]), p)
        except (OSError, KeyError, ValueError) as exc:
            raise web.HTTPNotFound(text=f"cannot read the store of run {r['run']!r}: {exc}") from None
        return web.json_response({"run": r["run"], "store": r["store"], "p": p, "shapes": shapes})

    async def frame(self, request: web.Request) -> web.Response:
        r = self._find(request)
        kind = self._kind(request)
        t, c, z, p = (_int(request, k, 0) for k in ("t", "c", "z", "p"))
        lo, hi = _float(request, "lo"), _float(request, "hi")
        max_px = self.renderer.max_px

        def work():
            root = Path(r["store"])
            frame = disk.read_frame(root, kind, t, c, z, p)
            window = (lo, hi) if lo is not None and hi is not None else None
            if window is None and kind == "raw":  # shared with the restored frame, as in the live view
                try:
                    _, window = render_array(disk.read_frame(root, "restored", t, c, z, p), max_px, None, None,
                                             "restored")
                except LookupError:
                    window = None
            png, used = render_array(frame, max_px, *(window or (None, None)), kind)
            return png, used

        loop = asyncio.get_running_loop()
        try:
            png, (wlo, whi) = await loop.run_in_executor(self.pool, work)
        except LookupError as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        except (OSError, ValueError) as exc:
            raise web.HTTPNotFound(text=f"cannot read the store of run {r['run']!r}: {exc}") from None
        return _png(png, {"run": r["run"], "kind": kind, "t": t, "c": c, "z": z, "p": p, "lo": wlo, "hi": whi})

    @staticmethod
    def _kind(request: web.Request) -> str:
        kind = request.match_info["kind"]
        if kind not in KINDS:
            raise web.HTTPNotFound(text=f"no preview {kind!r}: raw, restored or uncertainty")
        return kind


def _png(data: bytes, meta: dict[str, Any]) -> web.Response:
    headers = {"Cache-Control": "no-store", "X-Lowdose-Frame": _dumps(meta)}
    return web.Response(body=data, content_type="image/png", headers=headers)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
