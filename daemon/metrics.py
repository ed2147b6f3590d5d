"""Counters a facility can scrape (Prometheus) and the per-run numbers `lowdose status` shows.

Each daemon owns its own ``CollectorRegistry`` (no global state), so several
daemons can live in one test process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


@dataclass
class RunCounters:
    """What `lowdose status` reports per run."""

    run: str
    instrument: str
    store: str
    policy: str
    state: str = "acquiring"  # acquiring -> restoring (end received, raw complete) -> finished
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

    @property
    def fps(self) -> float | None:
        if self.first_frame_at is None or self.last_frame_at is None or self.frames_received < 2:
            return None
        span = self.last_frame_at - self.first_frame_at
        return (self.frames_received - 1) / span if span > 0 else None

    def snapshot(self) -> dict:
        d = asdict(self)
        d["fps"] = self.fps
        return d


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

    def serve_http(self, port: int, address: str) -> None:
        start_http_server(port, addr=address, registry=self.registry)
