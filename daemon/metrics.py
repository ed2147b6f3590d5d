"""Counters a facility can scrape (Prometheus) and the per-run numbers `lowdose status` shows.

Each daemon owns its own ``CollectorRegistry`` (no global state), so several
daemons can live in one test process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .phase import RunPhase


@dataclass
class RunCounters:
    """The per-run numbers the daemon's threads update; `lowdose status` shows a :class:`RunSnapshot`."""

    run: str
    instrument: str
    store: str
    policy: str
    frames_received: int = 0
    frames_duplicate: int = 0
    frames_written: int = 0
    frames_restored_live: int = 0
    frames_restored_backfill: int = 0
    frames_skipped: int = 0
    frames_failed: int = 0
    restore_queue: int = 0
    expected_frames: int | None = None
    started_at: float = field(default_factory=time.time)
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    lag_p50_s: float | None = None
    lag_p95_s: float | None = None
    # Written only by RunState.advance, which checks the move against phase.TRANSITIONS;
    # hence no public setter.
    _phase: RunPhase = RunPhase.RECEIVING

    @property
    def state(self) -> RunPhase:
        return self._phase

    @property
    def fps(self) -> float | None:
        if self.first_frame_at is None or self.last_frame_at is None or self.frames_received < 2:
            return None
        span = self.last_frame_at - self.first_frame_at
        return (self.frames_received - 1) / span if span > 0 else None

    def snapshot(self, *, restore_queue: int | None = None, frames_skipped: int | None = None) -> RunSnapshot:
        """A frozen copy for a status reply; the queue numbers, when given, are the scheduler's current ones."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        if restore_queue is not None:
            values["restore_queue"] = restore_queue
        if frames_skipped is not None:
            values["frames_skipped"] = max(self.frames_skipped, frames_skipped)
        return RunSnapshot(state=self._phase.value, fps=self.fps, **values)


@dataclass(frozen=True)
class RunSnapshot:
    """One run as `lowdose status` reports it. The keys of :meth:`as_dict` are the status format
    (the CLI, the demo and scripts read them): rename none."""

    run: str
    instrument: str
    store: str
    policy: str
    state: str  # a RunPhase value
    frames_received: int
    frames_duplicate: int
    frames_written: int
    frames_restored_live: int
    frames_restored_backfill: int
    frames_skipped: int
    frames_failed: int
    restore_queue: int
    expected_frames: int | None
    started_at: float
    first_frame_at: float | None
    last_frame_at: float | None
    lag_p50_s: float | None
    lag_p95_s: float | None
    fps: float | None

    def as_dict(self) -> dict:
        return asdict(self)


class LagTracker:
    """Rolling restoration lag (receipt to restored-on-disk) of the last ``window`` frames."""

    def __init__(self, window: int = 2000):
        self._lags: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, lag_s: float) -> None:
        with self._lock:
            self._lags.append(lag_s)

    def percentiles(self) -> tuple[float | None, float | None]:
        with self._lock:
            if not self._lags:
                return None, None
            arr = np.fromiter(self._lags, dtype=float)
        return float(np.percentile(arr, 50)), float(np.percentile(arr, 95))


RESTORE_MODES = ("live", "backfill")  # the ``mode`` label of lowdose_frames_restored (a scheduler Batch's mode)


class DaemonMetrics:
    """Prometheus instruments of one daemon."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_received = Counter("lowdose_frames_received", "Frames received", ["run"], registry=r)
        self.frames_written = Counter("lowdose_frames_written", "Raw frames durably written", ["run"], registry=r)
        self.frames_restored = Counter(
            "lowdose_frames_restored", "Frames restored", ["run", "mode"], registry=r
        )
        self.frames_skipped = Counter("lowdose_frames_skipped", "Frames skipped live (backfilled later)", ["run"], registry=r)
        self.frames_failed = Counter("lowdose_frames_failed", "Frames that failed to write or restore", ["run"], registry=r)
        self.messages_rejected = Counter("lowdose_messages_rejected", "Invalid messages answered with an error", ["code"], registry=r)
        self.write_queue = Gauge("lowdose_write_queue_frames", "Frames waiting to be written", registry=r)
        self.restore_queue = Gauge("lowdose_restore_queue_frames", "Frames waiting for live restoration", registry=r)
        self.active_runs = Gauge("lowdose_active_runs", "Runs not yet finished", registry=r)
        self.batch_size = Histogram(
            "lowdose_batch_size", "Frames per model call", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64)
        )
        self.inference_seconds = Histogram("lowdose_inference_seconds", "Model time per batch", registry=r)
        self.write_seconds = Histogram("lowdose_write_seconds", "Raw write time per batch", registry=r)
        self.restore_lag_seconds = Histogram(
            "lowdose_restore_lag_seconds",
            "Receipt to restored-on-disk",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )

    def forget_run(self, run: str) -> None:
        """Drop a run's label sets: one per run ever served would grow a months-long daemon's memory
        and every scrape. Called when the run's record leaves the registry, so the numbers stay
        scrapable as long as `lowdose status` still shows the run."""
        for counter in (self.frames_received, self.frames_written, self.frames_skipped, self.frames_failed):
            _remove(counter, run)
        for mode in RESTORE_MODES:
            _remove(self.frames_restored, run, mode)

    def serve_http(self, port: int, address: str) -> None:
        start_http_server(port, addr=address, registry=self.registry)


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:  # never counted for this run: nothing to drop
        pass
