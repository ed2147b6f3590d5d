"""The daemon's view of one acquisition run, shared by its threads.

A run's phase (:class:`RunPhase`) changes in one place, :meth:`RunState.advance`,
which refuses any move ``phase.TRANSITIONS`` does not list; every other flag
(``raw_complete``, ``finished``) is read from the phase, never kept beside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING

from .metrics import LagTracker, RunCounters, RunSnapshot
from .phase import TRANSITIONS, PhaseError, RunPhase
from lowdose.wire.protocol import End, Start, owner_digest

if TYPE_CHECKING:
    from .store import RunStore

log = logging.getLogger("lowdose.daemon")


@dataclass
class RunState:
    """One run: its announcement, its store, who to answer, how far it got.

    ``identity`` is the ROUTER identity bound to the run: the connection whose last ``start``
    proved it the run's owner (:meth:`admit`). Only it may send frames and ``end``, and acks
    go only to it; a hook that reconnects (new socket, new identity) re-announces and is
    bound again. ``start.owner`` holds :func:`owner_digest` of the owner token (never the
    token), and that is what the store keeps, so ownership survives a daemon restart.
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
    owner_key: str | None = None  # CURVE client key of the run's owner (tokenless runs: the first seen)
    last_heard: float = field(default_factory=time.monotonic)  # last admitted message: idle runs are closed

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

    def admit(self, identity: bytes, start: Start, client_key: str | None) -> str | None:
        """A ``start`` for this existing run: bind ``identity`` if it proves to be the owner.

        Returns None when admitted, else the reason for a ``not_owner`` error.
        """
        refusal = owner_refusal(self, start, client_key)
        if refusal is not None:
            return refusal
        if self.owner_key is None:
            self.owner_key = client_key  # a tokenless run resumed from disk: the first key wins (docs/protocol.md)
        self.heard_from(identity)
        self.last_heard = time.monotonic()
        return None

    def owns(self, identity: bytes, client_key: str | None) -> bool:
        """Whether a frame or ``end`` from ``identity`` comes from the connection bound to the run."""
        if identity != self.identity or not identity:
            return False
        return self.owner_key is None or client_key == self.owner_key

    def snapshot(self, *, restore_queue: int, frames_skipped: int) -> RunSnapshot:
        return self.counters.snapshot(restore_queue=restore_queue, frames_skipped=frames_skipped)


@dataclass(frozen=True)
class FinishedRun:
    """What stays of a finished run once its store is closed: enough for ``status`` and for
    answering a hook that re-announces it, and nothing that holds a file or a thread."""

    start: Start
    counters: RunSnapshot
    ranges: tuple[tuple[int, int], ...]
    summary: dict
    end: End | None
    owner_key: str | None
    identity: bytes = b""
    phase: RunPhase = RunPhase.FINISHED
    finished: bool = True
    raw_complete: bool = True
    store: None = None

    @classmethod
    def of(cls, state: RunState, frames_skipped: int) -> "FinishedRun":
        return cls(start=state.start, counters=state.snapshot(restore_queue=0, frames_skipped=frames_skipped),
                   ranges=tuple(state.store.raw_seq_ranges()), summary=state.summary, end=state.end,
                   owner_key=state.owner_key, identity=state.identity)

    @property
    def run(self) -> str:
        return self.start.run

    def admit(self, identity: bytes, start: Start, client_key: str | None) -> str | None:
        return owner_refusal(self, start, client_key)

    def heard_from(self, identity: bytes) -> None:
        pass  # finished: nothing left to redirect

    owns = RunState.owns  # reads identity and owner_key only

    def snapshot(self, *, restore_queue: int, frames_skipped: int) -> RunSnapshot:
        return self.counters


def owner_refusal(run: RunState | FinishedRun, start: Start, client_key: str | None) -> str | None:
    """Why ``start`` does not come from ``run``'s owner, or None if it does.

    A run with a token admits the same token (and CURVE key); a tokenless run (old client)
    admits only tokenless starts, with the CURVE key of the first one when CURVE is on.
    """
    if run.start.owner is not None:
        if owner_digest(start.owner, client_key) != run.start.owner:
            return (f"run {run.run!r} belongs to another client (its start carried a different owner token"
                    " or CURVE key); use your own run id")
    elif start.owner is not None:
        return (f"run {run.run!r} was started without an owner token, so a start with one is not its "
                "client's; use your own run id")
    elif run.owner_key is not None and client_key != run.owner_key:
        return f"run {run.run!r} was started with another CURVE key; use your own run id"
    return None


class RunRegistry:
    """Runs by id; guarded because the I/O, write and restore threads all look runs up."""

    def __init__(self, keep_finished: int = 1000) -> None:
        self._runs: dict[str, RunState | FinishedRun] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()  # oldest first
        self._keep_finished = keep_finished
        self._lock = threading.Lock()

    def get(self, run: str) -> RunState | None:
        with self._lock:
            return self._runs.get(run)

    def add(self, state: RunState) -> None:
        with self._lock:
            self._runs[state.run] = state

    def all(self) -> list[RunState | FinishedRun]:
        with self._lock:
            return list(self._runs.values())

    def active(self) -> list[RunState]:
        return [r for r in self.all() if not r.finished]  # type: ignore[misc]

    def retire(self, record: FinishedRun) -> list[str]:
        """A finished run's store is closed: keep only its record, and only the newest ``keep_finished``
        of those, so a daemon that served thousands of runs holds no more than it did after the first.
        Returns the runs forgotten now, whose per-run counters the caller drops too."""
        dropped = []
        with self._lock:
            self._runs[record.run] = record
            self._finished[record.run] = None
            self._finished.move_to_end(record.run)
            while len(self._finished) > self._keep_finished:
                old, _ = self._finished.popitem(last=False)
                self._runs.pop(old, None)
                dropped.append(old)
        return dropped
