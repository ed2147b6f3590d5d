"""The identity "denoiser": restored = raw. For throughput tests and as a pass-through."""

from __future__ import annotations

import numpy as np

from lowdose import __version__

from .denoiser import DenoiserInfo, Restoration, check_frames


class IdentityDenoiser:
    def __init__(self, device: str = "cpu"):
        self.info = DenoiserInfo(name="identity", version=__version__, preferred_batch=64, device="cpu")

    def restore(self, frames: np.ndarray, *, offset: float | None = None, gain: float | None = None) -> Restoration:
        return Restoration(frames=check_frames(frames).copy())
