"""The preview renderer: the mailbox's newest frames as PNGs, on the dashboard's render thread.

Raw and restored share one contrast window (the one given, else the auto window of the newest
restored frame, else of the raw frame), so the two sides compare pixel for pixel; the uncertainty
has its own. Renders are cached by (frame version, window, size): a page that asks again, or ten
pages watching one run, cost one render per new frame.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .mailbox import PreviewMailbox
from .render import auto_window, downsample, to_png

Kind = Literal["raw", "restored", "uncertainty"]
CACHE_ENTRIES = 64


@dataclass(frozen=True)
class Rendered:
    png: bytes
    meta: dict[str, Any]  # run, kind, version, t, c, z, p, lo, hi, shape (full frame), mode


class PreviewRenderer:
    def __init__(self, mailbox: PreviewMailbox, max_px: int):
        self.mailbox = mailbox
        self.max_px = max_px
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()  # the render thread and HTTP handlers share the cache
        self.renders = 0

    def version(self, run: str, kind: Kind, matched: bool = False) -> int | None:
        """The version of the frame :meth:`render` would show now, or None if there is none yet."""
        if kind == "raw" and not matched:
            slot = self.mailbox.raw(run)
            return None if slot is None else slot.version
        pair = self.mailbox.restored(run)
        if pair is None or (kind == "uncertainty" and pair.uncertainty is None):
            return None
        return pair.version

    def render(self, run: str, kind: Kind, *, matched: bool = False, lo: float | None = None,
               hi: float | None = None, max_px: int | None = None) -> Rendered | None:
        """The newest ``kind`` frame of ``run`` as a PNG; ``matched`` raw is the raw of the newest restored."""
        max_px = min(max_px or self.max_px, self.max_px)
        raw_slot, pair = self.mailbox.raw(run), self.mailbox.restored(run)
        if kind == "raw" and not matched:
            if raw_slot is None:
                return None
            version, index, frame, mode = raw_slot.version, raw_slot.index, raw_slot.pixels, "raw"
        else:
            if pair is None:
                return None
            frame = {"raw": pair.raw, "restored": pair.restored, "uncertainty": pair.uncertainty}[kind]
            if frame is None:
                return None
            version, index, mode = pair.version, pair.index, pair.mode
        key = (run, kind, matched, version, lo, hi, max_px)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        small = self._small((run, kind, matched, version, max_px), frame, max_px)
        if kind == "uncertainty":
            window = (0.0, auto_window(small)[1]) if lo is None or hi is None else (lo, hi)
        elif lo is not None and hi is not None:
            window = (lo, hi)
        else:
            window = self._shared_window(run, pair, raw_slot, max_px)
        out = Rendered(to_png(small, *window), {
            "run": run, "kind": kind, "matched": matched, "version": version, "t": index.t, "c": index.c,
            "z": index.z, "p": index.p, "lo": window[0], "hi": window[1], "shape": list(np.shape(frame)),
            "mode": mode})
        with self._lock:
            self.renders += 1
            self._put(key, out)
        return out

    def _shared_window(self, run, pair, raw_slot, max_px: int) -> tuple[float, float]:
        if pair is not None:
            small = self._small((run, "restored", True, pair.version, max_px), pair.restored, max_px)
            ref = ("win", run, "restored", pair.version, max_px)
        else:
            small = self._small((run, "raw", False, raw_slot.version, max_px), raw_slot.pixels, max_px)
            ref = ("win", run, "raw", raw_slot.version, max_px)
        with self._lock:
            if ref in self._cache:
                return self._cache[ref]
        window = auto_window(small)
        with self._lock:
            self._put(ref, window)
        return window

    def _small(self, key: tuple, frame: np.ndarray, max_px: int) -> np.ndarray:
        key = ("small", *key)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        small = downsample(frame, max_px)
        with self._lock:
            self._put(key, small)
        return small

    def _put(self, key: tuple, value: Any) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)


def render_array(frame: np.ndarray, max_px: int, lo: float | None, hi: float | None,
                 kind: str) -> tuple[bytes, tuple[float, float]]:
    """A frame read from disk as a PNG, with the window used (auto when not given)."""
    small = downsample(frame, max_px)
    if lo is not None and hi is not None:
        window = (lo, hi)
    elif kind == "uncertainty":
        window = (0.0, auto_window(small)[1])
    else:
        window = auto_window(small)
    return to_png(small, *window), window
