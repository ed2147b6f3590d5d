"""Runs picked up again: those a predecessor left unfinished (crash-only, rule 2), and idle runs
whose store was closed to release its files and threads.

Everything comes from the stores themselves: the run's ``start``, the frames written, the ``end``
if the hook had sent it. Finished stores (with a summary) are left alone.
"""

from __future__ import annotations

import logging
import time

from lowdose import __version__
from lowdose.wire.protocol import End

from .metrics import RunCounters
from .phase import RunPhase
from .runs import RunState
from .store import RunStore, StoreError
from .store.config import StorageConfig

log = logging.getLogger("lowdose.daemon")


def resume_unfinished(storage: StorageConfig, policy: str) -> list[RunState]:
    """Pick up runs a previous daemon left unfinished, so their backfill goes on.

    Their hook may never come back (it finished while we were down); the
    restore loop then still restores every written frame. A hook that does
    come back re-announces the run and finds it here. A run whose end was
    stored and whose frames are all written goes on to restoring, so it is
    finalized: its hook heard ``finished`` and will not end it again.
    """
    states: list[RunState] = []
    for path in sorted(storage.output_dir.glob("*.ome.zarr")):
        try:
            attrs = RunStore.read_state(path)
            if "summary" in attrs:
                continue
            end = End.model_validate(attrs["end"]) if attrs.get("end") else None
            store = RunStore.reopen(path, storage, __version__)
        except (StoreError, OSError, ValueError, KeyError) as exc:
            log.warning("not resuming %s: %s", path, exc)
            continue
        start = store.start
        counters = RunCounters(run=start.run, instrument=start.instrument, store=str(store.path),
                               policy=policy)
        counters.frames_written = store.raw_count()
        state = RunState(start=start, store=store, identity=b"", counters=counters,
                         initial_phase=RunPhase.RESUMED, end=end)
        if end is not None:
            counters.expected_frames = end.frames
            ranges = store.raw_seq_ranges()  # ascending: complete when the first covers 0..frames-1
            if end.frames <= 0 or (ranges and ranges[0][0] == 0 and ranges[0][1] >= end.frames - 1):
                state.advance(RunPhase.RESTORING)
        states.append(state)
        log.info("resumed unfinished run %s (%d raw frames, %d to restore)", start.run,
                 store.raw_count(), store.unrestored_count())
    return states


def reopen_if_idle(state: RunState, storage: StorageConfig) -> None:
    """Reopen the store of a run the restore loop closed while it was idle (StoreError if it cannot)."""
    with state.lock:
        state.last_heard = time.monotonic()  # under the lock: the restore loop cannot close it now
        if not state.store.closed:
            return
        state.store = RunStore.reopen(state.store.path, storage, __version__)
    log.info("run %s: reopened its idle store", state.run)
