"""The only part of the sender the acquisition thread touches: number the frame, queue it, return.

Rule 1 of ``docs/design.md`` is checked here and nowhere else: :meth:`Handoff.submit` takes a lock
that only other producers and the sender's rare control calls (end, abort, close) ever hold, does
O(1) work on references, and rings an in-process doorbell only when the sender thread is asleep.
Everything the sender thread does with a frame happens after it :meth:`Handoff.take`\\ s it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from lowdose.wire.frame_header import FrameFields


@dataclass(frozen=True)
class EndRequest:
    """:meth:`FrameSender.finish` was called: ``End`` goes after every frame queued before it."""

    reason: str
    frames: int | None  # None: every seq handed over
    deadline: float  # monotonic time after which the unacked frames are left to the spool


class Handoff:
    """Frames (and the end of the run) from the acquisition thread to the sender thread, in order."""

    def __init__(self, run: str, first_seq: int) -> None:
        self.run = run
        self._lock = threading.Lock()
        self._next_seq = first_seq
        self.queued = 0  # frames handed over
        self._submitted_bytes = 0
        self._drained_bytes = 0  # written by the sender thread only
        self._pending: deque[FrameFields | EndRequest] = deque()
        self._end_requested = False
        self._orphaned = False  # the sender thread has stopped for good: nobody will take frames
        self._idle = False  # the sender thread is (about to be) asleep in poll()
        self._wake_addr = f"inproc://lowdose-sender-wake-{id(self):x}-{time.monotonic_ns()}"
        self._wake_tx: zmq.Socket | None = None
        self._wake_rx: zmq.Socket | None = None

    def open(self, ctx: zmq.Context) -> zmq.Socket:
        """The doorbell: returns the end the sender thread polls."""
        rx = ctx.socket(zmq.PAIR)
        rx.bind(self._wake_addr)
        tx = ctx.socket(zmq.PAIR)
        tx.setsockopt(zmq.SNDHWM, 1)
        tx.setsockopt(zmq.LINGER, 0)
        tx.connect(self._wake_addr)
        self._wake_rx, self._wake_tx = rx, tx
        return rx

    def close(self) -> None:
        if self._wake_rx is not None:
            self._wake_rx.close(0)
            self._wake_rx = None
        with self._lock:  # producers use wake_tx under this lock only
            if self._wake_tx is not None:
                self._wake_tx.close(0)
                self._wake_tx = None

    # ---------------------------------------------------------------- producers

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def end_requested(self) -> bool:
        return self._end_requested

    @property
    def pending_bytes(self) -> int:
        """Pixel bytes handed over that the sender thread has not taken yet."""
        return self._submitted_bytes - self._drained_bytes

    @property
    def orphaned(self) -> bool:
        """The sender thread is gone: whoever submits must keep the frame itself (see FrameSender.submit)."""
        return self._orphaned

    def orphan(self) -> None:
        """The sender thread stops; frames handed over from now on are the producers' to keep."""
        with self._lock:
            self._orphaned = True

    def submit(self, pixels: np.ndarray, index: Any, timestamp: float, elapsed_ms: float | None,
               exposure_ms: float | None, metadata: Any) -> int:
        nbytes = pixels.nbytes
        with self._lock:
            if self._end_requested:
                raise RuntimeError(f"run {self.run} has ended; no more frames can be submitted")
            seq = self._next_seq
            self._next_seq = seq + 1
            self.queued += 1
            self._submitted_bytes += nbytes
            self._pending.append(FrameFields(seq, pixels, index, timestamp, elapsed_ms, exposure_ms, metadata))
            self._ring_locked()
        return seq

    def request_end(self, reason: str, frames: int | None, grace_s: float) -> None:
        """Queue the end of the run after every frame so far; later calls change nothing."""
        with self._lock:
            if not self._end_requested:
                self._end_requested = True
                self._pending.append(EndRequest(reason, frames, time.monotonic() + grace_s))
                self._ring_locked()

    def ring(self) -> None:
        """Wake the sender thread (to notice something other than a frame, e.g. an abort)."""
        with self._lock:
            self._ring_locked()

    def _ring_locked(self) -> None:
        # Only when the sender thread sleeps: at most one tiny in-process message
        # per idle-to-busy transition, never blocking (NOBLOCK, HWM 1).
        if self._idle and self._wake_tx is not None:
            self._idle = False
            try:
                self._wake_tx.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a wakeup is already queued

    # ---------------------------------------------------------------- the sender thread

    def take(self) -> Iterator[FrameFields | EndRequest]:
        """Everything handed over so far, oldest first."""
        pending = self._pending
        while pending:
            item = pending.popleft()
            if isinstance(item, FrameFields):
                self._drained_bytes += item.pixels.nbytes
            yield item

    def going_idle(self) -> bool:
        """The sender thread is about to sleep: True if it may (nothing is waiting to be taken).

        The flag goes up before the queue is looked at, so a producer appending after the look
        sees it and rings; one appending before it is seen here.
        """
        self._idle = True
        if self._pending:
            self._idle = False
            return False
        return True

    def awake(self) -> None:
        self._idle = False

    def clear_doorbell(self) -> None:
        rx = self._wake_rx
        if rx is None:
            return
        while rx.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            rx.recv(zmq.NOBLOCK)
