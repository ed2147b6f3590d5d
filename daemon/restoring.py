"""Restore-then-write, the one way: shared by the daemon's restore loop and offline backfill,
the two that between them restore every frame (rule 3).

Both ends must agree on what a restoration is (the camera's offset and gain from the
run's ``start``, the store's restored dtype, the uncertainty beside the frames, the
model's provenance), so neither keeps its own copy of these steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from lowdose.plugins.denoisers.interface import Denoiser, Restoration
from lowdose.wire.protocol import FrameIndex

if TYPE_CHECKING:
    from .store import RunStore


def read_raw_frames(store: RunStore, indices: Sequence[FrameIndex]) -> list[tuple[FrameIndex, np.ndarray]]:
    """``(index, raw pixels)`` of written frames, for a restoration of frames that are not live."""
    return [(index, store.read_raw(index)) for index in indices]


def restore_into_store(
    store: RunStore,
    denoiser: Denoiser,
    frames: Sequence[tuple[FrameIndex, np.ndarray]],
    mode: str,
    *,
    keep_uncertainty: bool = True,
) -> Restoration:
    """Restore ``frames`` as one batch with the run's camera calibration, write them as restored
    (``mode``: ``live`` or ``backfill``) and return the restoration (previews use it)."""
    # denoisers answer in their input's dtype: float32 in when the store keeps float32
    batch = np.stack([pixels for _, pixels in frames]).astype(store.restored_dtype, copy=False)
    start = store.start
    result = denoiser.restore(batch, offset=start.camera_offset, gain=start.camera_gain)
    unc = result.uncertainty if keep_uncertainty else None
    store.write_restored(
        [(index, result.frames[k], None if unc is None else unc[k]) for k, (index, _) in enumerate(frames)],
        denoiser.info,
        mode,
    )
    return result
