"""The daemon's view of one acquisition run, shared by its threads.

A run's phase (:class:`RunPhase`) changes in one place, :meth:`RunState.advance`,
which refuses any move ``phase.TRANSITIONS`` does not list; every other flag
(``raw_complete``, ``finished``) is read from the phase, never kept beside it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING

from .metrics import LagTracker, RunCounters, RunSnapshot
from .phase import TRANSITIONS, PhaseError, RunPhase
from lowdose.wire.protocol import End, Start

if TYPE_CHECKING:
    from .store import RunStore

log = logging.getLogger("lowdose.daemon")


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
    initial_phase: InitVar[RunPhase] = RunPhase.RECEIVING  # RESUMED: found on disk at start-up
    lag: LagTracker = field(default_factory=LagTracker)
    end: End | None = None
    summary: dict = field(default_factory=dict)
    # re-entrant: finalize holds it across store.finalize and the move to FINISHED
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self, initial_phase: RunPhase) -> None:
        if initial_phase not in (RunPhase.RECEIVING, RunPhase.RESUMED):
            raise PhaseError(f"run {self.start.run}: a run begins receiving or resumed, not {initial_phase}")
        self.counters._phase = initial_phase

    @property
    def run(self) -> str:
        return self.start.run

    @property
    def phase(self) -> RunPhase:
        return self.counters.state

    @property
    def raw_complete(self) -> bool:
        """End received and every seq below ``end.frames`` written."""
        return self.phase in (RunPhase.RESTORING, RunPhase.FINISHED)

    @property
    def finished(self) -> bool:
        """Raw complete, restored (or given up on), store finalized."""
        return self.phase is RunPhase.FINISHED

    def advance(self, to: RunPhase) -> None:
        """Move the run to ``to``; :class:`PhaseError` if ``phase.TRANSITIONS`` has no such move."""
        with self.lock:
            current = self.counters.state
            if to not in TRANSITIONS[current]:
                raise PhaseError(f"run {self.run}: no transition from {current} to {to}")
            self.counters._phase = to
        log.debug("run %s: %s -> %s", self.run, current, to)

    def heard_from(self, identity: bytes) -> None:
        """A hook spoke for this run: replies now go to it, and a resumed run has its hook back."""
        self.identity = identity
        with self.lock:
            if self.phase is RunPhase.RESUMED:
                self.advance(RunPhase.RECEIVING)

    def snapshot(self, *, restore_queue: int, frames_skipped: int) -> RunSnapshot:
        return self.counters.snapshot(restore_queue=restore_queue, frames_skipped=frames_skipped)


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
