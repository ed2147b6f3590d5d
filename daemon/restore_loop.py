"""The restore path: scheduler batch -> denoiser -> restored store -> preview PUB.

Runs in its own thread so a slow model never delays raw writes or acks. When
the live queues are empty it backfills: frames the policy skipped (or that
arrived while the daemon was down) are read back from the raw image and
restored, so every run ends fully restored. A run is finalized once its raw
stream is complete and nothing is left to restore.

A failed model call or restored write is counted and retried (by backfill); any
other exception ends the loop, and the supervisor then ends the daemon (rule 2).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np
import zmq

from lowdose.plugins.denoisers.interface import Denoiser

from .adapting import adaptations_for
from .config import RestoreConfig, ServerConfig
from .dashboard.mailbox import PreviewMailbox
from .metrics import DaemonMetrics
from lowdose.wire.protocol import Preview, encode
from .phase import RunPhase
from .restoring import read_raw_frames, restore_into_store
from .runs import FinishedRun, RunRegistry, RunState
from .scheduler import Batch, LiveItem, Scheduler
from .supervisor import LoopThread

log = logging.getLogger("lowdose.daemon.restore")

MAX_CONSECUTIVE_FAILURES = 3


class RestoreLoop(LoopThread):
    def __init__(
        self,
        *,
        ctx: zmq.Context,
        denoiser_factory: Callable[[], Denoiser],
        runs: RunRegistry,
        scheduler: Scheduler,
        metrics: DaemonMetrics,
        restore_cfg: RestoreConfig,
        server_cfg: ServerConfig,
        idle_close_s: float = 300.0,
        previews: PreviewMailbox | None = None,
    ):
        super().__init__(name="lowdose-restore", role="restore loop")
        self.ctx = ctx
        self.denoiser_factory = denoiser_factory
        self.runs = runs
        self.scheduler = scheduler
        self.metrics = metrics
        self.cfg = restore_cfg
        self.server_cfg = server_cfg
        self.idle_close_s = idle_close_s
        self.previews = previews
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.denoiser: Denoiser | None = None
        self.startup_error: BaseException | None = None
        self._failures: dict[str, int] = {}
        self._backfill_turn = 0
        self.adaptations = adaptations_for(restore_cfg)

    def loop(self) -> None:
        try:
            # built here so a CUDA context belongs to the thread that uses it
            self.denoiser = self.denoiser_factory()
        except BaseException as exc:  # reported by the daemon at start-up
            self.startup_error = exc
            self.ready.set()
            return
        self.ready.set()
        pub = None
        if self.server_cfg.preview_endpoint:
            pub = self.ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.SNDHWM, self.server_cfg.preview_hwm_frames)
            pub.setsockopt(zmq.LINGER, 0)
            pub.bind(self.server_cfg.preview_endpoint)
        try:
            while not self.stopping.is_set():
                batch = self.scheduler.next_batch(timeout=0.05)
                if batch is None:
                    batch = self._backfill_batch()
                if batch is None:
                    self._finalize_ready_runs()
                    self._close_idle_runs()
                    continue
                self._restore(batch, pub)
        finally:
            self.adaptations.close_all()
            if pub is not None:
                pub.close(linger=0)

    # -- work selection ---------------------------------------------------------------

    def _backfill_batch(self) -> Batch | None:
        if not self.cfg.backfill:
            return None
        candidates = [r for r in self.runs.active() if self._failures.get(r.run, 0) < MAX_CONSECUTIVE_FAILURES]
        if not candidates:
            return None
        # take runs in turn so one long backlog does not starve another run's backfill
        for k in range(len(candidates)):
            state = candidates[(self._backfill_turn + k) % len(candidates)]
            todo = state.store.unrestored(limit=self.scheduler.batch_size)
            if not todo:
                todo = self.adaptations.redo_batch(state, self.scheduler.batch_size)
            if not todo:
                continue
            self._backfill_turn += k + 1
            items = tuple(
                LiveItem(run=state.run, seq=state.store.seq_of(index), index=index, pixels=pixels,
                         received_at=time.monotonic())
                for index, pixels in read_raw_frames(state.store, todo)
            )
            return Batch(run=state.run, items=items, mode="backfill")
        return None

    def _finalize_ready_runs(self) -> None:
        for state in self.runs.active():
            if not state.raw_complete or self.scheduler.pending(state.run):
                continue
            gave_up = self._failures.get(state.run, 0) >= MAX_CONSECUTIVE_FAILURES
            if self.cfg.backfill and not gave_up and state.store.unrestored_count():
                continue
            if not gave_up and self.denoiser is not None and not self.adaptations.settled(state, self.denoiser):
                continue
            self.finalize(state)

    def finalize(self, state: RunState) -> None:
        with state.lock:
            if state.finished:
                return
            state.summary = state.store.finalize(state.end)
            state.advance(RunPhase.FINISHED)
            # Nothing writes to a finished store again: release its files and threads, and keep
            # only a small record (a daemon serving runs for months must not grow with them).
            state.store.close()
            record = FinishedRun.of(state, frames_skipped=self.scheduler.skipped(state.run))
        self.scheduler.remove_run(state.run)
        for forgotten in self.runs.retire(record):
            self.metrics.forget_run(forgotten)
        self.adaptations.close(state.run)
        self._failures.pop(state.run, None)
        self.metrics.active_runs.set(len(self.runs.active()))
        log.info("run %s finished: %s", state.run, state.store.path)

    def _close_idle_runs(self) -> None:
        """Close the stores of unfinished runs no hook has written to for ``idle_close_s`` and with
        nothing to restore; the I/O thread reopens one when its hook speaks again."""
        now = time.monotonic()
        for state in self.runs.active():
            if state.store.closed or now - state.last_heard < self.idle_close_s:
                continue
            with state.lock:  # the I/O thread notes the hook's return under the same lock
                if (state.store.closed or now - state.last_heard < self.idle_close_s or state.raw_complete
                        or self.scheduler.pending(state.run) or state.store.unrestored_count()):
                    continue
                state.store.close()
            log.info("run %s: idle for %.0f s, store closed until its hook speaks", state.run, self.idle_close_s)

    # -- the model call ------------------------------------------------------------------

    def _restore(self, batch: Batch, pub: zmq.Socket | None) -> None:
        state = self.runs.get(batch.run)
        if state is None or state.finished:
            return
        assert self.denoiser is not None
        if batch.mode == "live":
            # A frame is acked before it reaches the live queue, and backfill may restore it in between:
            # restoring it again would only cost model time and count it twice.
            items = tuple(it for it in batch.items if not state.store.is_restored(it.index))
            if not items:
                return
            batch = Batch(run=batch.run, items=items, mode=batch.mode)
        denoiser = self.adaptations.denoiser_for(state, self.denoiser)
        t0 = time.perf_counter()
        try:
            with self.adaptations.restoring():
                result = restore_into_store(state.store, denoiser, [(it.index, it.pixels) for it in batch.items],
                                            batch.mode, keep_uncertainty=self.cfg.store_uncertainty)
        except Exception as exc:  # a model or disk failure must not kill the loop
            n = self._failures[state.run] = self._failures.get(state.run, 0) + 1
            state.counters.frames_failed += len(batch.items)
            self.metrics.frames_failed.labels(state.run).inc(len(batch.items))
            log.exception("run %s: restoring %d frames failed (%d in a row): %s", state.run, len(batch.items), n, exc)
            return
        self._failures[state.run] = 0
        elapsed = time.perf_counter() - t0
        self.adaptations.after_restore(state, batch.items, denoiser)
        self.metrics.inference_seconds.observe(elapsed)
        self.metrics.batch_size.observe(len(batch.items))
        now = time.monotonic()
        if batch.mode == "live":
            state.counters.frames_restored_live += len(batch.items)
            for it in batch.items:
                lag = now - it.received_at
                state.lag.add(lag)
                self.metrics.restore_lag_seconds.observe(lag)
            state.counters.lag_p50_s, state.counters.lag_p95_s = state.lag.percentiles()
        else:
            state.counters.frames_restored_backfill += len(batch.items)
        self.metrics.frames_restored.labels(state.run, batch.mode).inc(len(batch.items))
        state.counters.frames_skipped = self.scheduler.skipped(state.run)
        state.counters.restore_queue = self.scheduler.pending(state.run)
        self.metrics.restore_queue.set(self.scheduler.pending())
        if self.previews is not None:  # the newest of the batch, by reference: the dashboard renders it
            last = batch.items[-1]
            unc = None if result.uncertainty is None else result.uncertainty[-1]
            self.previews.offer_restored(state.run, last.index, last.pixels, result.frames[-1], unc, batch.mode)
        if pub is not None:
            self._publish(pub, state, batch, result.frames)

    def _publish(self, pub: zmq.Socket, state: RunState, batch: Batch, restored: np.ndarray) -> None:
        # only the newest frame of a batch: viewers want the current picture, not every frame
        i = len(batch.items) - 1
        it = batch.items[i]
        pixels = np.ascontiguousarray(restored[i])
        msg = Preview(
            run=state.run,
            seq=it.seq,
            index=it.index,
            shape=pixels.shape,
            dtype=str(pixels.dtype),
            mode=batch.mode,
            model=self.denoiser.info.name if self.denoiser else "",
        )
        try:
            pub.send_multipart([state.run.encode(), *encode(msg, memoryview(pixels).cast("B"))], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # a slow viewer loses previews, never the daemon's time
