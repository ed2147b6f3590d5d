"""Camera noise model: Poisson-Gaussian counts and how to estimate its parameters.

A scientific camera reports ``y = offset + gain * (Poisson(photons) + N(0, read_noise^2))``
in ADU. Denoisers that do not know the camera estimate ``gain`` and ``offset``
from the frames themselves: in flat regions the variance grows linearly with the
mean, ``var = gain * (mean - offset) + (gain * read_noise)^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NoiseParams:
    gain: float  # ADU per photo-electron
    offset: float  # ADU
    read_noise: float = 0.0  # e- rms


def estimate_noise_params(frames: np.ndarray, block: int = 8) -> NoiseParams:
    """Fit the mean-variance line over many small blocks of ``frames`` (N, Y, X).

    Differences of diagonal neighbours remove the smooth signal, so the variance
    measured is the noise's; the lowest-variance blocks at each brightness level
    are the flat ones. Read noise cannot be told apart from the offset with one
    line, so it is assumed small (sCMOS: ~1-2 e-).
    """
    f = np.asarray(frames, dtype=np.float32)
    if f.ndim == 2:
        f = f[None]
    diff = (f[:, 1:, 1:] - f[:, :-1, :-1]) / np.sqrt(2.0)
    local = (f[:, 1:, 1:] + f[:, :-1, :-1]) / 2.0
    n, h, w = diff.shape
    h, w = (h // block) * block, (w // block) * block
    if h == 0 or w == 0:
        return _fallback(f)
    d = diff[:, :h, :w].reshape(n, h // block, block, w // block, block)
    m = local[:, :h, :w].reshape(n, h // block, block, w // block, block)
    means = m.mean(axis=(2, 4)).ravel()
    variances = d.var(axis=(2, 4)).ravel()
    lo, hi = np.percentile(means, [1, 99])
    if hi - lo < 1e-3:
        return _fallback(f)
    edges = np.linspace(lo, hi, 17)
    xs, ys = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = (means >= a) & (means < b)
        if sel.sum() >= 8:
            xs.append(float(np.median(means[sel])))
            ys.append(float(np.percentile(variances[sel], 25)) * 1.2)  # 25th pct of a chi2: flat blocks
    if len(xs) < 3:
        return _fallback(f)
    slope, intercept = np.polyfit(xs, ys, 1)
    if not np.isfinite(slope) or slope <= 1e-3:
        return _fallback(f)
    offset = -intercept / slope
    offset = float(min(max(offset, float(f.min()) - 3 * np.sqrt(max(ys[0], 1.0))), float(np.percentile(f, 1))))
    return NoiseParams(gain=float(slope), offset=offset)


def camera_or_estimate(frames: np.ndarray, offset: float | None, gain: float | None) -> tuple[float, float]:
    """The camera's (offset, gain) as given; what is not given, estimated from the frames."""
    if offset is None or gain is None:
        est = estimate_noise_params(frames)
        offset = est.offset if offset is None else offset
        gain = est.gain if gain is None else gain
    return float(offset), float(gain)


def _fallback(f: np.ndarray) -> NoiseParams:
    return NoiseParams(gain=1.0, offset=float(np.percentile(f, 0.5)))


def anscombe(photons: np.ndarray, read_noise: float) -> np.ndarray:
    """Generalised Anscombe transform: Poisson-Gaussian -> approximately unit-variance Gaussian."""
    return 2.0 * np.sqrt(np.maximum(photons + 3.0 / 8.0 + read_noise**2, 0.0))


def inverse_anscombe(d: np.ndarray, read_noise: float) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse (Makitalo & Foi, 2011/2013).

    The algebraic inverse is biased at low counts; this one is not, which is what
    keeps the restored intensities in the camera's units at a few photons per pixel.
    """
    d = np.maximum(d, 0.8)
    s = np.sqrt(1.5)
    x = 0.25 * d**2 + 0.25 * s / d - 11.0 / 8.0 / d**2 + 5.0 / 8.0 * s / d**3 - 1.0 / 8.0 - read_noise**2
    return np.maximum(x, 0.0)
