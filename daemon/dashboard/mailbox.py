"""The newest frames of each run, handed from the daemon's write and restore loops to the dashboard.

The loops only *offer*: one dict assignment under a lock held for nothing else, no copy, no
rendering, no waiting (rule 1 holds for the daemon's own loops too: a viewer never slows the data
path). A newer frame replaces the older one, so the mailbox holds at most one raw and one restored
frame per run whatever the dashboard does; the dashboard reads the newest when it is ready.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from lowdose.wire.protocol import FrameIndex


@dataclass(frozen=True)
class RawPreview:
    """The newest raw frame written for a run; ``version`` counts the run's raw frames offered so far."""

    version: int
    index: FrameIndex
    pixels: np.ndarray


@dataclass(frozen=True)
class RestoredPreview:
    """The newest restored frame of a run, with the raw frame it was restored from; ``version`` counts
    the run's restored frames offered so far."""

    version: int
    index: FrameIndex
    raw: np.ndarray
    restored: np.ndarray
    uncertainty: np.ndarray | None
    mode: str  # live or backfill


class PreviewMailbox:
    """Per run: the newest :class:`RawPreview` and the :class:`RestoredPreview` of the latest time
    point restored so far; older ones are dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._raw: dict[str, RawPreview] = {}
        self._restored: dict[str, RestoredPreview] = {}
        self._counts: dict[tuple[str, str], int] = {}

    def offer_raw(self, run: str, index: FrameIndex, pixels: np.ndarray) -> None:
        with self._lock:
            n = self._counts[(run, "raw")] = self._counts.get((run, "raw"), 0) + 1
            self._raw[run] = RawPreview(n, index, pixels)

    def offer_restored(self, run: str, index: FrameIndex, raw: np.ndarray, restored: np.ndarray,
                       uncertainty: np.ndarray | None, mode: str) -> None:
        with self._lock:
            old = self._restored.get(run)
            if old is not None and index.t < old.index.t:
                return  # backfill of an earlier time point: the view keeps the run's newest picture
            n = self._counts[(run, "restored")] = self._counts.get((run, "restored"), 0) + 1
            self._restored[run] = RestoredPreview(n, index, raw, restored, uncertainty, mode)

    def raw(self, run: str) -> RawPreview | None:
        with self._lock:
            return self._raw.get(run)

    def restored(self, run: str) -> RestoredPreview | None:
        with self._lock:
            return self._restored.get(run)

    def keep_only(self, runs: set[str]) -> None:
        """Forget the frames of runs the daemon no longer lists (a long-lived daemon must not grow)."""
        with self._lock:
            for slot in (self._raw, self._restored):
                for run in [r for r in slot if r not in runs]:
                    del slot[run]
            for key in [k for k in self._counts if k[0] not in runs]:
                del self._counts[key]
