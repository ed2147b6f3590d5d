"""Which frames the model restores next: per-run live queues, policies, fairness, backfill.

The scheduler is pure bookkeeping (no I/O, no model): the write loop offers each
newly written raw frame, the restore loop asks for the next batch. Runs take
turns (round-robin), so one fast microscope cannot starve another.

Policies, per run:

* ``fifo``   -- every frame in arrival order; past ``queue_frames`` the oldest are skipped.
* ``latest`` -- only the newest ``batch_size`` frames are restored; older waiting frames
  are skipped, so the live view stays current when the model is slower than the camera.

A skipped frame is not lost: it stays "unrestored" in the store and the backfill
pass restores it from the raw image when the live queues are idle or the run ends.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lowdose.wire.protocol import FrameIndex

Policy = Literal["fifo", "latest"]


@dataclass(frozen=True)
class LiveItem:
    """A raw frame waiting to be restored live."""

    run: str
    seq: int
    index: FrameIndex
    pixels: np.ndarray
    received_at: float  # time.monotonic() when the daemon received it: restoration lag starts here


@dataclass(frozen=True)
class Batch:
    """Frames of one run to restore in one model call."""

    run: str
    items: tuple[LiveItem, ...]
    mode: Literal["live", "backfill"]


@dataclass
class _RunQueue:
    policy: Policy
    items: deque[LiveItem] = field(default_factory=deque)
    skipped: int = 0


class Scheduler:
    """Thread-safe live queues with round-robin across runs."""

    def __init__(self, *, batch_size: int, queue_frames: int, default_policy: Policy):
        self.batch_size = batch_size
        self.queue_frames = queue_frames
        self.default_policy = default_policy
        self._queues: dict[str, _RunQueue] = {}
        self._order: deque[str] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def add_run(self, run: str, policy: Policy | None = None) -> None:
        with self._cond:
            if run not in self._queues:
                self._queues[run] = _RunQueue(policy or self.default_policy)
                self._order.append(run)

    def remove_run(self, run: str) -> None:
        with self._cond:
            self._queues.pop(run, None)
            if run in self._order:
                self._order.remove(run)

    def offer(self, item: LiveItem) -> None:
        """Queue a freshly written raw frame; O(1), never blocks the write loop."""
        with self._cond:
            q = self._queues.get(item.run)
            if q is None:
                return
            q.items.append(item)
            if len(q.items) > self.queue_frames:
                q.items.popleft()
                q.skipped += 1
            self._cond.notify()

    def next_batch(self, timeout: float) -> Batch | None:
        """The next live batch, taking runs in turn; ``None`` if nothing arrives within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                batch = self._take_locked()
                if batch is not None or self._closed:
                    return batch
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def _take_locked(self) -> Batch | None:
        for _ in range(len(self._order)):
            run = self._order[0]
            self._order.rotate(-1)
            q = self._queues[run]
            if not q.items:
                continue
            if q.policy == "latest":
                newest = [q.items.pop() for _ in range(min(self.batch_size, len(q.items)))]
                q.skipped += len(q.items)
                q.items.clear()
                items = tuple(reversed(newest))
            else:
                items = tuple(q.items.popleft() for _ in range(min(self.batch_size, len(q.items))))
            return Batch(run=run, items=items, mode="live")
        return None

    def pending(self, run: str | None = None) -> int:
        with self._cond:
            if run is not None:
                q = self._queues.get(run)
                return len(q.items) if q else 0
            return sum(len(q.items) for q in self._queues.values())

    def skipped(self, run: str) -> int:
        with self._cond:
            q = self._queues.get(run)
            return q.skipped if q else 0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
