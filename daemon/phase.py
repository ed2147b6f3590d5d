"""Where a run stands in the daemon: one enum, the transitions it may take, nothing else.

Kept apart from ``runs.py`` so that the counters (``metrics.py``) and the status
client can name a phase without importing the run registry.
"""

from __future__ import annotations

from enum import Enum


class RunPhase(str, Enum):
    """A run's phase; its value is the ``state`` that `lowdose status` shows."""

    RECEIVING = "receiving"  # a hook announced it; raw frames may still come
    RESUMED = "resumed"  # found unfinished on disk by a restarted daemon; no hook has spoken since
    RESTORING = "restoring"  # end received and every raw frame written; restoration goes on
    FINISHED = "finished"  # restored (or given up on), store finalized

    def __str__(self) -> str:
        return self.value


#: The only moves a run makes. RESUMED -> RESTORING: a client may end a resumed run without
#: announcing it again (the run is known), so the raw stream can complete straight from RESUMED.
TRANSITIONS: dict[RunPhase, frozenset[RunPhase]] = {
    RunPhase.RECEIVING: frozenset({RunPhase.RESTORING}),
    RunPhase.RESUMED: frozenset({RunPhase.RECEIVING, RunPhase.RESTORING}),
    RunPhase.RESTORING: frozenset({RunPhase.FINISHED}),
    RunPhase.FINISHED: frozenset(),
}


class PhaseError(RuntimeError):
    """A transition the table does not allow: a bug, and the loop that tried it dies of it."""
