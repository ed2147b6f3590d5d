"""Camera noise model: Poisson-Gaussian counts and how to estimate its parameters.

A scientific camera reports ``y = offset + gain * (Poisson(photons) + N(0, read_noise^2))``
in ADU. Denoisers that do not know the camera estimate ``gain`` and ``offset``
from the frames themselves: the noise variance grows linearly with the mean,
``var = gain * (mean - offset) + (gain * read_noise)^2``, and the quieter of many
small blocks at each brightness show it where texture would add to it. The read
noise is measured on the darkest blocks, where it makes a visible share of the
variance (``fit_noise``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class NoiseParams:
    gain: float  # ADU per photo-electron
    offset: float  # ADU
    read_noise: float = 0.0  # e- rms
    measured: bool = True  # False: the frames could not tell (flat, too small, no clear slope); a guess


# A second-difference kernel cancels constant, linear and quadratic signal (so edges and smooth
# texture add little), and it has unit gain on white noise: its mean square is the noise variance.
RESIDUAL_KERNEL = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]) / 6.0
BLOCK_QUANTILE = 0.25  # of block variances: texture only adds variance, so the quieter blocks are the noise


def block_noise(frame: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block: mean signal and mean squared high-pass residual (the noise variance, plus texture)."""
    frame = np.asarray(frame, np.float64)
    r = ndimage.convolve(frame, RESIDUAL_KERNEL, mode="reflect")[1:-1, 1:-1]
    m = ndimage.uniform_filter(frame, 3, mode="reflect")[1:-1, 1:-1]
    h, w = (r.shape[0] // block) * block, (r.shape[1] // block) * block
    shape = (h // block, block, w // block, block)
    return m[:h, :w].reshape(shape).mean(axis=(1, 3)).ravel(), (r[:h, :w] ** 2).reshape(shape).mean(axis=(1, 3)).ravel()


@cache  # a constant per block size; computing it costs a 0.26-megapixel filter on every frame
def quantile_of_unit_noise(block: int) -> float:
    """The ``BLOCK_QUANTILE`` of block variances of unit white noise: divides it out of the measured one."""
    white = np.random.default_rng(1234).standard_normal((64 * block + 2, 64 * block + 2))
    return float(np.quantile(block_noise(white, block)[1], BLOCK_QUANTILE))


def block_statistics(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block means and block noise variances of frames (N, Y, X), scaled so that the
    ``BLOCK_QUANTILE`` of the variances of blocks with the same mean reads the noise variance."""
    f = np.asarray(frames, np.float64)
    f = f[None] if f.ndim == 2 else f
    block = 8 if min(f.shape[1:]) >= 96 else 4
    stats = [block_noise(x, block) for x in f]
    saturated = _saturated_blocks(f, block)
    m = np.concatenate([s[0] for s in stats])[~saturated]
    v = np.concatenate([s[1] for s in stats])[~saturated] / quantile_of_unit_noise(block)
    return m, v


def _saturated_blocks(f: np.ndarray, block: int) -> np.ndarray:
    """Blocks touching the frames' top value where it repeats (clipped at the camera's full scale):
    clipping takes their noise away, and they would pull the variance line down."""
    top = float(f.max())
    if np.count_nonzero(f == top) <= max(2, f.size // 1000):
        return np.zeros(sum(((x.shape[0] - 2) // block) * ((x.shape[1] - 2) // block) for x in f), bool)
    hit = [ndimage.maximum_filter(x == top, 3)[1:-1, 1:-1] for x in f]
    out = []
    for x in hit:
        h, w = (x.shape[0] // block) * block, (x.shape[1] // block) * block
        out.append(x[:h, :w].reshape(h // block, block, w // block, block).any(axis=(1, 3)).ravel())
    return np.concatenate(out)


def variance_line(
    m: np.ndarray, v: np.ndarray, bins: int = 16, *, trim: float = 0.01, texture: float = 1.25, rounds: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (mean, noise variance) per brightness bin and which of them lie on the camera's line.

    Bins hold equal numbers of blocks (a dark background must not leave the bright end
    to a handful); a bin whose quiet blocks still lie ``texture`` times above a line through
    the others is texture everywhere (tissue, chromatin) and is left out of the fit.
    """
    lo, hi = np.quantile(m, [trim, 1.0 - trim])
    inside = (m >= lo) & (m <= hi)
    edges = np.quantile(m[inside], np.linspace(0.0, 1.0, bins + 1))
    xs, ys = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = inside & (m >= a) & (m <= b)
        if sel.sum() >= 8:
            xs.append(float(np.median(m[sel])))
            ys.append(float(np.quantile(v[sel], BLOCK_QUANTILE)))
    x, y = np.array(xs), np.array(ys)
    keep = np.ones(len(x), bool)
    if len(x) < 3:
        return x, y, keep
    for _ in range(rounds):
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        pred = slope * x + intercept
        keep = y <= texture * pred + 1e-9
        if keep.sum() < 3:
            keep = np.zeros(len(x), bool)
            keep[np.argsort(y / np.maximum(pred, 1e-9))[:3]] = True
    return x, y, keep


def estimate_noise_params(frames: np.ndarray) -> NoiseParams:
    """Fit the mean-variance line ``var = gain * (mean - offset)`` over small blocks of ``frames`` (N, Y, X).

    A second-difference residual removes the signal, so each block's variance is the noise's
    plus what texture survives; the quieter blocks at each brightness are the noise. Read noise
    cannot be told apart from the offset with one line: the offset returned absorbs it
    (``offset - gain * read_noise^2``), which is the pair that predicts the variance right, and
    what variance-stabilising and noise-map denoisers need.
    """
    f = np.asarray(frames, np.float32)
    f = f[None] if f.ndim == 2 else f
    if min(f.shape[1:]) < 8:
        return _fallback(f)
    m, v = block_statistics(f)
    if m.size < 24 or np.ptp(m) < 1e-3:
        return _fallback(f)
    x, y, keep = variance_line(m, v)
    if len(x) < 3 or np.ptp(x[keep]) <= 0:
        return _fallback(f)
    slope, intercept = np.polyfit(x[keep], y[keep], 1)
    if not np.isfinite(slope) or slope <= 1e-3 or not _slope_is_clear(x[keep], y[keep], slope, intercept):
        # read noise swamps the shot noise over the frames' range (dim, or a noisy CCD): the slope
        # is anyone's guess, and a near-zero gain would tell a denoiser there is no noise at all
        return _fallback(f)
    # the darkest blocks cannot hold fewer than zero photons on average; their pixels can lie well
    # below the offset (by the read noise), so a percentile of pixels is no bound
    offset = float(min(max(-intercept / slope, float(f.min()) - 3 * np.sqrt(max(float(y[0]), 1.0))), float(x[0])))
    return NoiseParams(gain=float(slope), offset=offset)


def _slope_is_clear(x: np.ndarray, y: np.ndarray, slope: float, intercept: float) -> bool:
    """Whether the line's slope is more than twice its standard error."""
    if len(x) < 4:
        return True
    resid = y - (slope * x + intercept)
    se = np.sqrt(np.sum(resid**2) / (len(x) - 2) / max(float(np.sum((x - x.mean()) ** 2)), 1e-12))
    return bool(slope > 2.0 * se)


TYPICAL_READ_NOISE_E = 1.5  # a scientific CMOS camera's, e- rms


@dataclass(frozen=True)
class NoiseFit:
    """What the frames say of their own noise, given the camera's offset and gain."""

    read_noise: float  # e- rms (with the camera's rounding to whole ADU)
    data_gain: float  # slope of the frames' own variance-vs-mean line, ADU per e-
    variance_ratio: float  # measured / predicted noise variance in the brighter blocks (1: the model holds)
    blocks: int  # how many blocks it was measured on
    gain_ratio: float = 1.0  # data_gain / the camera's gain, where shot noise dominates the brighter blocks
    dark_electrons: float = 0.0  # signal of the darkest blocks the read noise was read from, e-

    def usable_read_noise(self, typical: float = TYPICAL_READ_NOISE_E, dark_limit: float = 4.0) -> float:
        """The measured read noise where the frames have blocks dark enough to show it. Where even the
        darkest hold more than ``dark_limit`` e-, their excess over the shot noise is read noise plus
        fine texture (or the sample's own grain), which no statistic of one frame tells apart: then
        a typical camera's, never more than the excess allows. Taking the whole excess for noise
        would make every smoothing restoration look better than it is."""
        if self.dark_electrons <= dark_limit:
            return self.read_noise
        return min(self.read_noise, typical)

    def agrees(self, low: float = 0.75, high: float = 1.7) -> bool:
        """Whether the camera model predicts the frames' noise: less noise than predicted is a wrong
        gain or offset (or noise correlated between pixels); more can also be texture, so allow more."""
        return (self.blocks >= 24 and low <= self.variance_ratio <= high
                and low * 0.8 <= self.gain_ratio <= high)


def fit_noise(frames: np.ndarray, offset: float, gain: float) -> NoiseFit:
    """Read noise and the apparent gain of frames (N, Y, X) from their own pixel statistics.

    The high-pass residual of each small block measures the local noise variance
    (plus texture); in bins of brightness the quieter blocks lie on the camera's
    line ``var = gain * (mean - offset) + (gain * read_noise)^2``. Bins far above
    a robust line through them are texture and left out; the darkest half of
    what is left gives the read noise, the brighter half whether the gain holds.
    """
    m, v = block_statistics(frames)
    bins = int(np.clip(m.size // 24, 1, 16))
    if m.size < 24 or np.ptp(m) <= 0:
        return NoiseFit(0.0, gain, 1.0, int(m.size))
    x, y, keep = variance_line(m, v, bins, trim=0.0, rounds=3)
    if len(x) < 3:
        return NoiseFit(0.0, gain, 1.0, int(m.size))
    slope = float(np.polyfit(x[keep], y[keep], 1)[0])
    kept = np.flatnonzero(keep)
    dark, bright = kept[: max(1, len(kept) // 2)], kept[len(kept) // 2 :]
    # texture can only add to a bin's excess over the shot noise, so a low quantile of the excess is
    # the read noise; the least excess of a dozen bins is read low by their scatter (by 7 % on four
    # 61x57 slices, where a blend then lost 1.4 dB), the lower quartile is not
    r2 = max(float(np.quantile(y[kept] - gain * (x[kept] - offset), 0.25)) / gain**2, 0.0)
    predicted = gain * (x[bright] - offset) + gain**2 * r2
    ratio = float(np.median(y[bright] / np.maximum(predicted, 1e-12)))
    # the slope says something only where shot noise, not read noise, makes most of the variance
    shot = float(np.median(gain * (x[bright] - offset)))
    gain_ratio = float(slope) / gain if shot >= gain**2 * r2 else 1.0
    dark_e = float((x[kept[0]] - offset) / gain)
    return NoiseFit(float(np.sqrt(r2)), float(slope), ratio, int(m.size), gain_ratio, dark_e)


def camera_or_estimate(frames: np.ndarray, offset: float | None, gain: float | None) -> tuple[float, float]:
    """The camera's (offset, gain) as given; what is not given, estimated from the frames."""
    if offset is None or gain is None:
        est = estimate_noise_params(frames)
        offset = est.offset if offset is None else offset
        gain = est.gain if gain is None else gain
    return float(offset), float(gain)


def offset_for_gain(frames: np.ndarray, gain: float) -> float | None:
    """The offset that puts the frames' noise on the line of a camera of known ``gain`` (absorbing
    the read noise, as :func:`estimate_noise_params` does); None where the frames cannot tell."""
    f = np.asarray(frames, np.float32)
    f = f[None] if f.ndim == 2 else f
    if min(f.shape[1:]) < 8:
        return None
    m, v = block_statistics(f)
    if m.size < 24:
        return None
    x, y, keep = variance_line(m, v)
    if not keep.any():
        return None
    return float(np.median(x[keep] - y[keep] / gain))


def _fallback(f: np.ndarray) -> NoiseParams:
    return NoiseParams(gain=1.0, offset=float(np.percentile(f, 0.5)), measured=False)


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
