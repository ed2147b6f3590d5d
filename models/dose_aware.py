"""A dose-aware denoiser: the learned model at low dose, the classical one above a threshold.

Measured on real fluorescence images (benchmarks/real_quality.py), the shipped UNet
gains most where photons are scarce and loses its lead, or falls behind
GAT + NLM, at high photon counts. Each frame's brightest signal in photo-electrons
(its 99.8th minus 1st percentile, lightly smoothed: the dose the models' training
draws) decides which of the two restores it; a batch may be split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowdose.plugins.denoisers.interface import BaseDenoiser, Denoiser, DenoiserInfo
from lowdose.plugins.denoisers.noise_model import camera_or_estimate

from .normalize import NormSpec, fit_scale


def peak_photons(frames: np.ndarray, offset: float, gain: float) -> np.ndarray:
    """Per frame: photo-electrons at the brightest above the darkest (smoothed 99.8th - 1st percentile)."""
    s = fit_scale(frames, NormSpec(), offset, gain)
    return (s.hi - s.lo).astype(np.float64)


def _summary(info: DenoiserInfo) -> dict[str, Any]:
    return {"name": info.name, "version": info.version, "checksum": info.checksum, "parameters": info.parameters}


class DoseAwareDenoiser(BaseDenoiser):
    """``low`` for frames below ``threshold_photons`` at the brightest, ``high`` for the others."""

    name = "dose-aware"

    def __init__(self, low: Denoiser, high: Denoiser, threshold_photons: float) -> None:
        if threshold_photons <= 0:
            raise ValueError(f"threshold_photons must be > 0, got {threshold_photons}")
        self.low, self.high = low, high
        self.threshold = float(threshold_photons)
        self.last_choice: list[str] = []  # per frame of the last batch: which model restored it
        self.info = DenoiserInfo(
            name="dose-aware", version=low.info.version, checksum=low.info.checksum,
            parameters={"below_threshold": _summary(low.info), "at_or_above_threshold": _summary(high.info),
                        "threshold_peak_photons": self.threshold},
            preferred_batch=low.info.preferred_batch, tile_size=low.info.tile_size, device=low.info.device,
        )

    def _restore_float(
        self, frames: np.ndarray, *, offset: float | None, gain: float | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        offset, gain = camera_or_estimate(frames, offset, gain)
        bright = peak_photons(frames, offset, gain) >= self.threshold
        out = np.empty_like(frames)
        for mask, den in ((~bright, self.low), (bright, self.high)):
            if mask.any():
                out[mask] = den.restore(frames[mask], offset=offset, gain=gain).frames
        self.last_choice = [self.high.info.name if b else self.low.info.name for b in bright]
        return out, None
