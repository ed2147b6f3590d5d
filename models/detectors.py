"""Randomised detectors for training: sCMOS, EMCCD, CCD and photon counting.

Each exposes a truth image (expected photo-electrons) to camera counts the way
that detector would, and reports the nominal offset and gain a user would give
lowdose (the mean dark level, ADU per photo-electron). What the nominal pair
does not capture (per-pixel offset and gain spread, the EM register's excess
noise, read noise) is what the networks must learn to cope with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("scmos", "ccd", "emccd", "photon_counting")


@dataclass(frozen=True)
class Exposure:
    noisy: np.ndarray  # float32 ADU, rounded to whole counts
    offset: float  # nominal dark level, ADU
    gain: float  # nominal ADU per photo-electron
    kind: str


def expose_random(truth_e: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> Exposure:
    """Counts for expected photo-electrons ``truth_e`` (Y, X) from a randomly drawn detector."""
    kind = kind or str(rng.choice(KINDS, p=[0.45, 0.15, 0.2, 0.2]))
    lam = np.clip(truth_e.astype(np.float64), 0.0, None)
    electrons = rng.poisson(lam).astype(np.float64)
    if kind == "photon_counting":  # hybrid detectors / SPADs: counts, no offset, no read noise
        return Exposure(electrons.astype(np.float32), 0.0, 1.0, kind)
    offset = float(rng.uniform(90, 500))
    gain = float(np.exp(rng.uniform(np.log(0.5), np.log(4.0))))
    if kind == "emccd":
        # Gamma-distributed multiplication (shape n, scale 1 per electron): excess noise factor ~2;
        # read noise referred to the input is far below one electron.
        em = np.where(electrons > 0, rng.gamma(np.maximum(electrons, 1e-9), 1.0), 0.0)
        signal = em + rng.normal(0.0, rng.uniform(0.02, 0.2), lam.shape)
        adu = offset + gain * signal
    else:
        read = rng.uniform(0.8, 3.0) if kind == "scmos" else rng.uniform(2.0, 8.0)
        signal = electrons + rng.normal(0.0, 1.0, lam.shape) * read
        if kind == "scmos":  # per-pixel fixed pattern: offset and gain spread, a few noisy pixels
            pix_gain = gain * (1.0 + rng.normal(0.0, rng.uniform(0.0, 0.03), lam.shape))
            pix_off = offset + rng.normal(0.0, rng.uniform(0.0, 2.0), lam.shape)
            hot = rng.random(lam.shape) < rng.uniform(0, 0.002)
            signal = signal + hot * rng.normal(0.0, 8.0, lam.shape)
            adu = pix_off + pix_gain * signal
        else:
            adu = offset + gain * signal
    adu = np.clip(np.rint(adu), 0, 65535)
    return Exposure(adu.astype(np.float32), offset, gain, kind)


__all__ = ["KINDS", "Exposure", "expose_random"]
