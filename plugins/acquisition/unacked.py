"""The frames a run has not had acknowledged yet: in RAM, then in the spool, forgotten on ack.

This is rule 2 of ``docs/design.md`` as bookkeeping, apart from the socket that moves the frames
so that it can be read (and tested) without a daemon: a frame enters with :meth:`accept`, leaves
only by :meth:`ack`, :meth:`reject` or :meth:`drop`, and past ``memory_limit`` bytes the oldest
frames not on the wire move to the :class:`Spool`. There is no ZeroMQ and no clock in here; the
sender thread says when something was sent and what the daemon answered.

One thread (the sender's) uses an instance; nothing here locks.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from lowdose.wire.protocol import TAG

from .spool import Spool, SpoolError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Unacked:
    """One frame the daemon has not acknowledged. Its pixels are ``None`` once only the spool has them."""

    seq: int
    header: bytes
    pixels: np.ndarray | None
    nbytes: int
    session: int = -1  # the sender's session when it last went out; -1: never sent
    sends: int = 0


class UnackedFrames:
    """One run's unacknowledged frames, in seq order of arrival, with what to send next.

    ``unacked``, ``to_send``, ``in_flight`` and ``mem_order`` are public for reading (counters,
    tests); change them through the methods, which keep the four consistent.
    """

    def __init__(self, spool: Spool, start_header: bytes, memory_limit: int) -> None:
        self.spool = spool
        self.memory_limit = memory_limit
        # A spool holding frames must be replayable by a later process, which needs the Start.
        self._start_header = start_header
        self.unacked: dict[int, Unacked] = {}
        self.to_send: deque[int] = deque()  # seqs waiting for the wire, in sending order
        self.in_flight: dict[int, float] = {}  # seq -> when it was sent
        # Spill order: the oldest in-RAM frames first. It may hold seqs already acked or spooled;
        # spill() skips those and drop() trims them from the head.
        self.mem_order: deque[int] = deque()
        self.in_memory_bytes = 0
        self.spooled = 0  # frames ever written to the spool
        self.spooled_now = 0  # frames only the spool holds right now

    def __len__(self) -> int:
        return len(self.unacked)

    def __contains__(self, seq: int) -> bool:
        return seq in self.unacked

    def get(self, seq: int) -> Unacked | None:
        return self.unacked.get(seq)

    # ---------------------------------------------------------------- frames in

    def accept(self, seq: int, header: bytes, pixels: np.ndarray) -> None:
        """Hold a new frame (by reference when it is C-contiguous) and queue it for sending."""
        if not pixels.flags.c_contiguous:
            pixels = np.ascontiguousarray(pixels)
        self.unacked[seq] = Unacked(seq, header, pixels, pixels.nbytes)
        self.to_send.append(seq)
        self.mem_order.append(seq)
        self.in_memory_bytes += pixels.nbytes

    def keep_unsendable(self, seq: int, pixels: np.ndarray, reason: str) -> None:
        """A frame no header can describe (a 3-D array, an unknown dtype): its raw bytes go to
        ``rejected/`` with a note of what it was, so the data still exists; it is never sent."""
        note = msgpack.packb({"seq": seq, "shape": list(pixels.shape), "dtype": str(pixels.dtype)}, use_bin_type=True)
        self.spool.reject(seq, note, np.ascontiguousarray(pixels).view(np.uint8).ravel(), reason)

    def adopt(self) -> tuple[int, list[str]]:
        """Take over the frames an earlier process left in this run's spool; (how many, errors).

        Each file is read and validated now, so one that cannot be delivered is reported at once
        rather than when its turn comes.
        """
        adopted, errors = 0, []
        for seq in self.spool.seqs():
            try:
                spooled = self.spool.get(seq)
            except SpoolError as exc:
                errors.append(str(exc))
                log.error("lowdose: skipping unreadable spool file: %s", exc)
                continue
            self.unacked[seq] = Unacked(seq, spooled.header, None, spooled.frame.nbytes)
            self.to_send.append(seq)
            self.spooled_now += 1
            adopted += 1
        return adopted, errors

    # ---------------------------------------------------------------- sending

    def next_to_send(self) -> Unacked | None:
        """The frame to send next (still unacked, not on the wire), or None."""
        to_send = self.to_send
        while to_send:
            entry = self.unacked.get(to_send[0])
            if entry is not None and entry.seq not in self.in_flight:
                return entry
            to_send.popleft()  # acked, rejected or already out since it was queued
        return None

    def frame_parts(self, entry: Unacked) -> list[Any]:
        """The frame's multipart message, zero-copy from RAM or read back from the spool.

        Raises :class:`SpoolError` when its spool file is unreadable.
        """
        if entry.pixels is not None:
            return [TAG, entry.header, memoryview(entry.pixels).cast("B")]
        spooled = self.spool.get(entry.seq)
        return [TAG, spooled.header, spooled.pixels]

    def mark_sent(self, entry: Unacked, session: int, now: float) -> None:
        """``entry`` (the one :meth:`next_to_send` gave) is on the wire now."""
        self.to_send.popleft()
        self.in_flight[entry.seq] = now
        entry.session = session
        entry.sends += 1

    def requeue(self, seq: int) -> None:
        """Send ``seq`` again before anything else (the daemon could not store it this time)."""
        self.in_flight.pop(seq, None)
        self.to_send.appendleft(seq)

    def resend_all(self) -> None:
        """Nothing is on the wire any more (a new socket, a daemon that forgot the run)."""
        self.in_flight.clear()
        self.to_send = deque(sorted(self.unacked))

    # ---------------------------------------------------------------- frames out

    def ack(self, first: int, last: int) -> int:
        """Forget every held frame in ``first..last`` (inclusive); how many were held."""
        if last < first:
            return 0
        if last - first + 1 <= len(self.unacked):
            seqs: Any = range(first, last + 1)
        else:  # a cumulative range: walk what we hold rather than the range
            seqs = [s for s in self.unacked if first <= s <= last]
        acked = 0
        for seq in seqs:
            if seq in self.unacked:
                self.drop(seq)
                acked += 1
        return acked

    def reject(self, seq: int, reason: str) -> None:
        """The daemon refused ``seq`` for good: kept in ``rejected/``, never sent again."""
        entry = self.unacked[seq]
        self.spool.reject(seq, entry.header, entry.pixels, reason)
        self.drop(seq, delete_spool=False)

    def drop(self, seq: int, *, delete_spool: bool = True) -> None:
        """Forget ``seq`` (and delete its spool file unless told not to)."""
        entry = self.unacked.pop(seq, None)
        self.in_flight.pop(seq, None)
        if entry is None:
            return
        if entry.pixels is not None:
            self.in_memory_bytes -= entry.nbytes
            entry.pixels = None
        else:
            self.spooled_now -= 1
            if delete_spool:
                self.spool.delete(seq)
        # Acks mostly arrive in order, so the head of the spill order is what was just acked: trimming
        # it here keeps the deque at the unacked frames instead of one entry per frame of the run.
        order = self.mem_order
        while order and order[0] not in self.unacked:
            order.popleft()

    # ---------------------------------------------------------------- the spool

    def spill(self) -> None:
        """Past the memory bound, move the oldest unacked frames not on the wire to disk."""
        if self.in_memory_bytes <= self.memory_limit:
            return
        skipped: list[int] = []
        while self.in_memory_bytes > self.memory_limit and self.mem_order:
            seq = self.mem_order.popleft()
            entry = self.unacked.get(seq)
            if entry is None or entry.pixels is None:
                continue
            if seq in self.in_flight:
                skipped.append(seq)  # ZeroMQ holds these buffers until sent anyway
                continue
            self._to_spool(entry)
        self.mem_order.extendleft(reversed(skipped))

    def spool_all(self, end_header: bytes | None) -> None:
        """The run is over here: every held frame to disk, with the ``End`` (encoded) when known,
        so that ``replay_spool`` can finish the run later; an empty spool is removed."""
        for entry in sorted(self.unacked.values(), key=lambda e: e.seq):
            self._to_spool(entry)
        if self.unacked or self.spool.rejected():
            if not self.spool.has_start():
                self.spool.write_start(self._start_header)
            if end_header is not None:
                self.spool.write_end(end_header)
        else:
            self.spool.cleanup()

    def _to_spool(self, entry: Unacked) -> None:
        if entry.pixels is None:
            return
        if not self.spool.has_start():
            self.spool.write_start(self._start_header)
        self.spool.put(entry.seq, entry.header, entry.pixels)
        entry.pixels = None
        self.in_memory_bytes -= entry.nbytes
        self.spooled += 1
        self.spooled_now += 1
