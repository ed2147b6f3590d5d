"""Camera-aware normalisation between ADU and the networks' unit range.

ADU -> photo-electrons (subtract the camera offset, divide by the gain) ->
robust percentile scaling per frame. The percentiles are taken on a lightly
smoothed copy of the whole frame, so a frame's scaling does not depend on how
it is later tiled and is not dominated by single noisy pixels at low dose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lowdose.plugins.denoisers.noise_model import camera_or_estimate

MIN_RANGE_E = 1.0  # an (almost) empty frame is scaled as if it held at least 1 e- of signal


@dataclass(frozen=True)
class NormSpec:
    """How a model normalises its input; stored in its checkpoint."""

    p_low: float = 1.0
    p_high: float = 99.8
    smooth_sigma: float = 1.0
    # A second input channel with each pixel's expected shot-noise std in unit range: one
    # network then knows the dose of every frame (1 to 1000 photons) instead of guessing it.
    noise_map: bool = False

    @property
    def channels(self) -> int:
        return 2 if self.noise_map else 1

    def to_dict(self) -> dict[str, float | bool]:
        out: dict[str, float | bool] = {"p_low": self.p_low, "p_high": self.p_high, "smooth_sigma": self.smooth_sigma}
        if self.noise_map:
            out["noise_map"] = True
        return out


@dataclass(frozen=True)
class FrameScale:
    """Per-frame affine map: unit = ((adu - offset) / gain - lo) / (hi - lo)."""

    offset: np.ndarray  # (N,)
    gain: np.ndarray  # (N,)
    lo: np.ndarray  # (N,) electrons
    hi: np.ndarray  # (N,) electrons


def estimate_offset(frames: np.ndarray) -> float:
    """Dark level guess when the camera's offset is not given.

    The darkest smoothed pixels are camera offset plus a little background;
    the remainder is absorbed by the percentile scaling, so a rough value is enough.
    """
    sm = ndimage.uniform_filter(frames[:, ::2, ::2].astype(np.float32), size=(1, 3, 3))
    return float(np.percentile(sm, 0.1))


def fit_scale(
    frames: np.ndarray, spec: NormSpec, offset: float | np.ndarray | None, gain: float | np.ndarray | None
) -> FrameScale:
    """Compute the per-frame scaling of a (N, Y, X) stack in ADU."""
    n = frames.shape[0]
    if gain is None:
        # a gain of 1 ADU/e- would be a guess that is wrong by the camera's gain: the noise map (and
        # so how hard the network smooths) follows from the frames' own mean-variance line instead
        est_offset, gain = camera_or_estimate(frames, None, None)
        offset = est_offset if offset is None else offset
    off = np.broadcast_to(
        np.asarray(estimate_offset(frames) if offset is None else offset, np.float64), (n,)
    )
    g = np.broadcast_to(np.asarray(gain, np.float64), (n,))
    if np.any(g <= 0):
        raise ValueError(f"gain must be > 0 ADU per electron, got {gain}")
    lo = np.empty(n)
    hi = np.empty(n)
    for i in range(n):
        e = (frames[i].astype(np.float32) - off[i]) / g[i]
        if spec.smooth_sigma > 0:
            e = ndimage.gaussian_filter(e, spec.smooth_sigma)
        # Every second pixel is plenty for a percentile and halves the cost on 2048^2 frames.
        lo[i], hi[i] = np.percentile(e[::2, ::2], [spec.p_low, spec.p_high])
        hi[i] = max(hi[i], lo[i] + MIN_RANGE_E)
    return FrameScale(off.copy(), g.copy(), lo, hi)


def to_unit(frames: np.ndarray, s: FrameScale) -> np.ndarray:
    """ADU (N, Y, X) -> normalised float32."""
    a = (1.0 / (s.gain * (s.hi - s.lo)))[:, None, None]
    b = (s.offset / s.gain + s.lo)[:, None, None] * s.gain[:, None, None]
    return ((frames.astype(np.float32) - b.astype(np.float32)) * a.astype(np.float32)).astype(np.float32)


def from_unit(x: np.ndarray, s: FrameScale) -> np.ndarray:
    """Normalised float32 -> ADU float32 (the inverse of :func:`to_unit`)."""
    span = (s.gain * (s.hi - s.lo))[:, None, None].astype(np.float32)
    base = (s.offset + s.gain * s.lo)[:, None, None].astype(np.float32)
    return (x * span + base).astype(np.float32)


NOISE_MAP_SIGMA = 2.0  # px; smooth enough that the map carries the dose, not the pixel's own noise
NOISE_MAP_READ_E = 1.0  # e- rms assumed for the read noise (the interface gives offset and gain only)


def noise_map(frames: np.ndarray, s: FrameScale) -> np.ndarray:
    """Expected noise std per pixel in unit range: sqrt(smoothed electrons + read variance) / (hi - lo)."""
    out = np.empty(frames.shape, np.float32)
    for i in range(frames.shape[0]):
        e = (frames[i].astype(np.float32) - np.float32(s.offset[i])) / np.float32(s.gain[i])
        e = ndimage.gaussian_filter(e, NOISE_MAP_SIGMA)
        var = np.maximum(e, 0.0) + NOISE_MAP_READ_E**2
        out[i] = np.sqrt(var) / np.float32(s.hi[i] - s.lo[i])
    return out


def network_input(frames: np.ndarray, s: FrameScale, spec: NormSpec) -> np.ndarray:
    """ADU (N, Y, X) -> the network's (N, C, Y, X) float32 input: the frame, and its noise map if asked."""
    x = to_unit(frames, s)[:, None]
    if not spec.noise_map:
        return x
    return np.concatenate([x, noise_map(frames, s)[:, None]], axis=1)


def std_from_unit(x: np.ndarray, s: FrameScale) -> np.ndarray:
    """A spread (e.g. an uncertainty map) in normalised units -> ADU."""
    return (x * (s.gain * (s.hi - s.lo))[:, None, None]).astype(np.float32)
