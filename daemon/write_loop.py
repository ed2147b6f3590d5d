"""The raw path: received frames -> raw store (durable) -> ack to the hook -> restore queue.

A frame is acknowledged only after :meth:`RunStore.write_raw` returns, i.e. after
its chunk (and record) are on disk; until then the hook keeps it. ``End``
messages travel through the same queue as frames so a run is declared complete
only after every frame that preceded its end was written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import zmq

from .dashboard.mailbox import PreviewMailbox
from .metrics import DaemonMetrics
from .outbox import OutboxWriter
from lowdose.wire.protocol import Ack, End, Error, ErrorCode, Frame, ranges_from_seqs
from .phase import RunPhase
from .runs import FinishedRun, RunRegistry, RunState
from .scheduler import LiveItem, Scheduler
from .store import StoreError
from .supervisor import LoopThread

log = logging.getLogger("lowdose.daemon.write")

MAX_BATCH = 32


@dataclass(frozen=True)
class Received:
    """A validated frame waiting to be written. ``keepalive`` holds the zmq buffer the pixels view."""

    frame: Frame
    pixels: np.ndarray
    received_at: float
    keepalive: object = None


@dataclass(frozen=True)
class EndReceived:
    end: End


class WriteLoop(LoopThread):
    """Raw frames to disk, then acks. An exception other than :class:`StoreError` ends it, and the
    supervisor then ends the daemon: frames it held were never acked, so the hooks resend them (rule 2)."""

    def __init__(
        self,
        *,
        ctx: zmq.Context,
        outbox_address: str,
        inbox: queue.Queue,
        runs: RunRegistry,
        scheduler: Scheduler,
        metrics: DaemonMetrics,
        daemon_id: str,
        previews: PreviewMailbox | None = None,
    ):
        super().__init__(name="lowdose-write", role="write loop")
        self.ctx = ctx
        self.outbox_address = outbox_address
        self.inbox = inbox
        self.runs = runs
        self.scheduler = scheduler
        self.metrics = metrics
        self.daemon_id = daemon_id
        self.previews = previews
        self.stopping = threading.Event()

    def loop(self) -> None:
        outbox = OutboxWriter(self.ctx, self.outbox_address)
        try:
            while not (self.stopping.is_set() and self.inbox.empty()):
                try:
                    first = self.inbox.get(timeout=0.1)
                except queue.Empty:
                    continue
                items = [first]
                while len(items) < MAX_BATCH:
                    try:
                        items.append(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                self.metrics.write_queue.set(self.inbox.qsize())
                self._handle(items, outbox)
        finally:
            outbox.close()

    def _handle(self, items: list, outbox: OutboxWriter) -> None:
        # keep arrival order, but write consecutive frames of one run as one batch
        pending: list[Received] = []
        for item in items:
            if isinstance(item, Received):
                if pending and pending[-1].frame.run != item.frame.run:
                    self._write(pending, outbox)
                    pending = []
                pending.append(item)
            else:
                if pending:
                    self._write(pending, outbox)
                    pending = []
                self._end(item.end, outbox)
        if pending:
            self._write(pending, outbox)

    def _write(self, batch: list[Received], outbox: OutboxWriter) -> None:
        state = self.runs.get(batch[0].frame.run)
        if state is None:  # cannot happen: the I/O thread checks before queueing
            return
        if isinstance(state, FinishedRun):  # finished while these waited: every frame is in its closed store
            outbox.send(state.identity, Ack(run=state.run, ranges=list(state.ranges), daemon=self.daemon_id,
                                            finished=True))
            return
        t0 = time.perf_counter()
        try:
            before = {r.frame.seq for r in batch if state.store.has_seq(r.frame.seq)}
            stored = state.store.write_raw([(r.frame, r.pixels) for r in batch])
        except StoreError as exc:
            # nothing acked: the hook keeps every one of these frames and resends later
            log.error("run %s: cannot write raw frames: %s", state.run, exc)
            state.counters.frames_failed += len(batch)
            self.metrics.frames_failed.labels(state.run).inc(len(batch))
            for r in batch:
                outbox.send(state.identity, Error(code=ErrorCode.STORE_FAILED, reason=str(exc), run=state.run,
                                                  seq=r.frame.seq, daemon=self.daemon_id))
            return
        self.metrics.write_seconds.observe(time.perf_counter() - t0)
        stored_set = set(stored)
        new: list[Received] = []
        seen: set[int] = set()
        for r in batch:
            seq = r.frame.seq
            if seq in stored_set and seq not in before and seq not in seen:
                seen.add(seq)
                new.append(r)
        state.counters.frames_written += len(new)
        state.counters.frames_duplicate += len(batch) - len(new)
        self.metrics.frames_written.labels(state.run).inc(len(new))
        outbox.send(state.identity, Ack(run=state.run, ranges=ranges_from_seqs(stored), daemon=self.daemon_id))
        if new and self.previews is not None:  # a reference to the newest frame, no copy (rule 1)
            self.previews.offer_raw(state.run, new[-1].frame.index, new[-1].pixels)
        for r in new:
            self.scheduler.offer(
                LiveItem(run=state.run, seq=r.frame.seq, index=r.frame.index, pixels=r.pixels, received_at=r.received_at)
            )
        self._check_complete(state, outbox)

    def _end(self, end: End, outbox: OutboxWriter) -> None:
        state = self.runs.get(end.run)
        if state is None or isinstance(state, FinishedRun):
            return
        state.end = end
        state.counters.expected_frames = end.frames
        self._check_complete(state, outbox)

    def _check_complete(self, state: RunState, outbox: OutboxWriter) -> None:
        if state.end is None or state.raw_complete:
            return
        store = state.store
        if store.raw_count() >= state.end.frames and all(store.has_seq(s) for s in range(state.end.frames)):
            state.advance(RunPhase.RESTORING)
            outbox.send(
                state.identity,
                Ack(run=state.run, ranges=store.raw_seq_ranges(), daemon=self.daemon_id,
                    finished=True),
            )
