"""The counters of the daemon and of each run over time, for the dashboard's small charts.

Sampled from the daemon's status map once a second; bounded (``history_s`` samples per series),
and a run's series go when the daemon stops listing the run.
"""

from __future__ import annotations

from collections import deque
from typing import Any

RUN_FIELDS = ("frames_received", "frames_written", "frames_restored", "frames_skipped", "restore_queue",
              "fps", "lag_p50_s", "lag_p95_s")


def restored(run: dict[str, Any]) -> int:
    return int(run.get("frames_restored_live", 0)) + int(run.get("frames_restored_backfill", 0))


class History:
    """Series of samples: ``{"t": ..., field: value, "written_per_s": ..., "restored_per_s": ...}``."""

    def __init__(self, length: int):
        self._length = length
        self.daemon: deque[dict[str, Any]] = deque(maxlen=length)
        self.runs: dict[str, deque[dict[str, Any]]] = {}

    def add(self, now: float, status: dict[str, Any]) -> None:
        runs = status.get("runs", [])
        written = sum(int(r.get("frames_written", 0)) for r in runs)
        done = sum(restored(r) for r in runs)
        sample = {"t": now, "write_queue": status.get("write_queue", 0),
                  "restore_queue": status.get("restore_queue", 0), "frames_written": written,
                  "frames_restored": done, "active_runs": sum(r.get("state") != "finished" for r in runs)}
        self._rates(self.daemon, sample)
        self.daemon.append(sample)
        listed = set()
        for r in runs:
            listed.add(r["run"])
            series = self.runs.setdefault(r["run"], deque(maxlen=self._length))
            s = {"t": now, **{k: r.get(k) for k in RUN_FIELDS if k != "frames_restored"},
                 "frames_restored": restored(r)}
            self._rates(series, s)
            series.append(s)
        for gone in [r for r in self.runs if r not in listed]:
            del self.runs[gone]

    @staticmethod
    def _rates(series: deque[dict[str, Any]], sample: dict[str, Any]) -> None:
        """Frames written and restored per second since the previous sample (None for the first)."""
        prev = series[-1] if series else None
        dt = sample["t"] - prev["t"] if prev else 0.0
        for key, rate in (("frames_written", "written_per_s"), ("frames_restored", "restored_per_s")):
            sample[rate] = (max(0, sample[key] - prev[key]) / dt) if prev and dt > 0 else None

    def of_run(self, run: str) -> list[dict[str, Any]]:
        return list(self.runs.get(run, ()))
