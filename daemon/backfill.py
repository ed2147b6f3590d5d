"""Offline restoration of a run store: what the live pass skipped, or everything with another model.

The daemon backfills by itself while it runs; this is for stores whose daemon
is gone, and for a best-quality pass after a live session (e.g. the DDPM with
its full sampler over frames the fast network restored live).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lowdose import __version__
from lowdose.plugins.denoisers.interface import Denoiser

from .config import StorageConfig
from lowdose.wire.protocol import End
from .restoring import read_raw_frames, restore_into_store
from .store import RunStore


@dataclass(frozen=True)
class BackfillResult:
    store: Path
    restored: int
    remaining: int
    summary: dict


def backfill_store(
    path: Path,
    denoiser: Denoiser,
    *,
    storage: StorageConfig,
    batch_size: int = 4,
    redo: bool = False,
    finalize: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> BackfillResult:
    """Restore the frames of ``path`` that lack a restoration (all of them with ``redo``)."""
    store = RunStore.reopen(path, storage, __version__, renamed_ok=True)  # a copy is still its run
    try:
        todo = store.raw_indices() if redo else store.unrestored()
        for i in range(0, len(todo), batch_size):
            restore_into_store(store, denoiser, read_raw_frames(store, todo[i : i + batch_size]), "backfill")
            if progress is not None:
                progress(min(i + batch_size, len(todo)), len(todo))
        stored_end = RunStore.read_state(store.path).get("end")
        summary = store.finalize(End.model_validate(stored_end) if stored_end else None) if finalize else {}
        return BackfillResult(store=store.path, restored=len(todo), remaining=store.unrestored_count(), summary=summary)
    finally:
        store.close()
