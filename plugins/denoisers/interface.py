"""The denoiser plug-in interface: what the daemon needs of any model, and nothing else.

A denoiser restores a batch of frames given in camera units (ADU) and returns
them in the same shape, dtype and units. The daemon knows nothing else about a
model: anything that satisfies :class:`Denoiser` and is registered in the
``lowdose.denoisers`` entry-point group (see :mod:`.registry`) can be selected
by name in ``config.yaml`` (``restore.denoiser``).

This module imports nothing of lowdose, so the learned models (``lowdose.models``),
the classical back-ends and the daemon all depend on it while it depends on none
of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

@dataclass(frozen=True)
class DenoiserInfo:
    """What a denoiser says about itself; stored as provenance of ``restored``."""

    name: str
    version: str
    checksum: str = ""  # sha256 of the weights file, "" for non-learned methods
    parameters: dict[str, Any] = field(default_factory=dict)
    preferred_batch: int = 1
    tile_size: int | None = None  # None: whole frames
    device: str = "cpu"
    has_uncertainty: bool = False


@dataclass(frozen=True)
class Restoration:
    """A restored batch. ``uncertainty`` (float32, same shape) when the model gives one."""

    frames: np.ndarray
    uncertainty: np.ndarray | None = None


@runtime_checkable
class Denoiser(Protocol):
    """Restores frames of camera counts.

    ``restore`` takes ``frames`` of shape (N, Y, X), uint16 or float, in camera
    units, and returns a :class:`Restoration` whose ``frames`` have the same
    shape, dtype and intensity scale. ``offset`` is the camera's dark level in
    ADU and ``gain`` its ADU per photo-electron; ``None`` lets the denoiser
    estimate them from the frames.
    """

    info: DenoiserInfo

    def restore(
        self, frames: np.ndarray, *, offset: float | None = None, gain: float | None = None
    ) -> Restoration: ...


class DenoiserError(RuntimeError):
    """A denoiser could not be found, built or run."""


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Validate a batch for ``restore``; a clear error beats a shape error deep in torch."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(
            f"restore() expects a batch of 2-D frames shaped (N, Y, X); got an array of rank "
            f"{frames.ndim} with shape {frames.shape}. Wrap a single frame as frames[None]."
        )
    if not (np.issubdtype(frames.dtype, np.integer) or np.issubdtype(frames.dtype, np.floating)):
        raise ValueError(f"restore() expects integer or float camera counts, got dtype {frames.dtype}")
    return frames


def to_input_dtype(restored: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Cast float output back to the input's dtype without wrapping around.

    Integer outputs are rounded and clipped to the dtype's range (a denoised
    dark pixel below zero must not wrap to 65535).
    """
    if np.issubdtype(like.dtype, np.integer):
        lim = np.iinfo(like.dtype)
        return np.clip(np.rint(restored), lim.min, lim.max).astype(like.dtype)
    return restored.astype(like.dtype, copy=False)


class BaseDenoiser:
    """Convenience base: validates input, runs ``_restore_float`` and casts back."""

    name: ClassVar[str] = "base"
    info: DenoiserInfo

    def restore(
        self, frames: np.ndarray, *, offset: float | None = None, gain: float | None = None
    ) -> Restoration:
        frames = check_frames(frames)
        out, unc = self._restore_float(frames.astype(np.float32), offset=offset, gain=gain)
        return Restoration(frames=to_input_dtype(out, frames), uncertainty=unc)

    def _restore_float(
        self, frames: np.ndarray, *, offset: float | None, gain: float | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError


__all__ = [
    "BaseDenoiser",
    "Denoiser",
    "DenoiserError",
    "DenoiserInfo",
    "Restoration",
    "check_frames",
    "to_input_dtype",
]
