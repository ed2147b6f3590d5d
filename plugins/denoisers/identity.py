"""The identity "denoiser": restored = raw. For throughput tests and as a pass-through.

``delay_ms`` makes it pretend to be a slow model (per frame), to exercise the
live policies and backfill without a GPU.
"""

from __future__ import annotations

import time

import numpy as np

from lowdose import __version__

from .interface import DenoiserInfo, Restoration, check_frames


class IdentityDenoiser:
    def __init__(self, device: str = "cpu", delay_ms: float = 0.0):
        self.delay_ms = float(delay_ms)
        self.info = DenoiserInfo(
            name="identity",
            version=__version__,
            parameters={"delay_ms": self.delay_ms},
            preferred_batch=64,
            device="cpu",
        )

    def restore(self, frames: np.ndarray, *, offset: float | None = None, gain: float | None = None) -> Restoration:
        frames = check_frames(frames)
        if self.delay_ms:
            time.sleep(self.delay_ms * len(frames) / 1000.0)
        return Restoration(frames=frames.copy())
