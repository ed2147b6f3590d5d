"""The daemon's view of one acquisition run, shared by its threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .metrics import LagTracker, RunCounters
from lowdose.wire.protocol import End, Start

if TYPE_CHECKING:
    from .store import RunStore


@dataclass
class RunState:
    """One run: its announcement, its store, who to answer, how far it got.

    ``identity`` is the ROUTER identity of the hook that spoke last for this run;
    after a hook reconnects (new socket, new identity) replies follow it.
    """

    start: Start
    store: RunStore
    identity: bytes
    counters: RunCounters
    lag: LagTracker = field(default_factory=LagTracker)
    end: End | None = None
    raw_complete: bool = False  # end received and every seq below end.frames written
    finished: bool = False  # raw complete, restored complete (or given up), store finalized
    summary: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def run(self) -> str:
        return self.start.run


class RunRegistry:
    """Runs by id; guarded because the I/O, write and restore threads all look runs up."""

    def __init__(self) -> None:
        self._runs: dict[str, RunState] = {}
        self._lock = threading.Lock()

    def get(self, run: str) -> RunState | None:
        with self._lock:
            return self._runs.get(run)

    def add(self, state: RunState) -> None:
        with self._lock:
            self._runs[state.run] = state

    def all(self) -> list[RunState]:
        with self._lock:
            return list(self._runs.values())

    def active(self) -> list[RunState]:
        return [r for r in self.all() if not r.finished]
