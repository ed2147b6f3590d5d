"""How far a restoration is from the truth, estimated from the noisy frame alone.

Stein's unbiased risk estimate (SURE), in the form that holds for a camera's
Poisson-Gaussian counts to first order (as PURE, Luisier et al. 2011): for a
restoration ``f`` of the frame ``y`` whose per-pixel noise variance is ``v``,

    E sum_i (f_i - x_i)^2  ~=  E sum_i [ (y_i - f_i)^2 - v_i + 2 v_i df_i/dy_i ]

with ``v_i = gain * (y_i - offset) + (gain * read_noise)^2``, itself unbiased
for the variance. No clean image is needed, so the estimate can judge any
restoration of any sample, including one no model has seen.

Linear in the restoration, the estimate also scores any weighted sum of
candidate restorations; the weights that minimise it (a linear expansion of
restorations, "LET") are found by least squares. The derivative term is
exact for linear filters (their centre tap) and estimated for a network by one
random probe (Monte-Carlo SURE, Ramani et al. 2008).

Pure numpy; nothing here knows about models or the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Literal

import numpy as np
from scipy import ndimage, optimize

Mode = Literal["convex", "affine", "kept"]  # kept: one candidate alone, the blend not shown to be better
MODES: tuple[Mode, ...] = ("convex", "affine")


@dataclass(frozen=True)
class CameraNoise:
    """Poisson-Gaussian noise of a camera: ``y = offset + gain * (Poisson + N(0, read_noise^2))``."""

    offset: float  # ADU
    gain: float  # ADU per photo-electron
    read_noise: float  # e- rms

    def variance(self, y: np.ndarray) -> np.ndarray:
        """Per-pixel noise variance in ADU^2, unbiased (it may dip below 0 in the dark: keep it so)."""
        return self.gain * (np.asarray(y, np.float64) - self.offset) + (self.gain * self.read_noise) ** 2


_RESIDUAL = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]) / 6.0  # unit gain on white noise
_QUANTILE = 0.25  # of block variances: texture only adds variance, so the quieter blocks are the noise


@dataclass(frozen=True)
class NoiseFit:
    """What the frames say of their own noise, given the camera's offset and gain."""

    read_noise: float  # e- rms (with the camera's rounding to whole ADU)
    data_gain: float  # slope of the frames' own variance-vs-mean line, ADU per e-
    variance_ratio: float  # measured / predicted noise variance in the brighter blocks (1: the model holds)
    blocks: int  # how many blocks it was measured on
    gain_ratio: float = 1.0  # data_gain / the camera's gain, where shot noise dominates the brighter blocks

    def agrees(self, low: float = 0.75, high: float = 1.7) -> bool:
        """Whether the camera model predicts the frames' noise: less noise than predicted is a wrong
        gain or offset (or noise correlated between pixels); more can also be texture, so allow more."""
        return (self.blocks >= 24 and low <= self.variance_ratio <= high
                and low * 0.8 <= self.gain_ratio <= high)


def _block_noise(frame: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block: mean signal and mean squared high-pass residual (the noise variance, plus texture)."""
    r = ndimage.convolve(frame, _RESIDUAL, mode="reflect")[1:-1, 1:-1]
    m = ndimage.uniform_filter(frame, 3, mode="reflect")[1:-1, 1:-1]
    h, w = (r.shape[0] // block) * block, (r.shape[1] // block) * block
    shape = (h // block, block, w // block, block)
    return m[:h, :w].reshape(shape).mean(axis=(1, 3)).ravel(), (r[:h, :w] ** 2).reshape(shape).mean(axis=(1, 3)).ravel()


@cache  # a constant per block size; computing it costs a 0.26-megapixel filter on every frame
def _quantile_of_unit_noise(block: int) -> float:
    """The ``_QUANTILE`` of block variances of unit white noise: divides it out of the measured one."""
    white = np.random.default_rng(1234).standard_normal((64 * block + 2, 64 * block + 2))
    return float(np.quantile(_block_noise(white, block)[1], _QUANTILE))


def fit_noise(frames: np.ndarray, offset: float, gain: float) -> NoiseFit:
    """Read noise and the apparent gain of frames (N, Y, X) from their own pixel statistics.

    The high-pass residual of each small block measures the local noise variance
    (plus texture); in bins of brightness the quieter blocks lie on the camera's
    line ``var = gain * (mean - offset) + (gain * read_noise)^2``. Bins far above
    a robust line through them are texture and left out; the darkest half of
    what is left gives the read noise, the brighter half whether the gain holds.
    """
    f = np.asarray(frames, np.float64)
    f = f[None] if f.ndim == 2 else f
    block = 8 if min(f.shape[1:]) >= 96 else 4
    stats = [_block_noise(x, block) for x in f]
    m, v = np.concatenate([s[0] for s in stats]), np.concatenate([s[1] for s in stats]) / _quantile_of_unit_noise(block)
    # v is now in units where the quieter blocks' quantile reads the noise variance itself
    bins = int(np.clip(m.size // 24, 1, 16))
    if m.size < 24 or np.ptp(m) <= 0:
        return NoiseFit(0.0, gain, 1.0, int(m.size))
    edges = np.quantile(m, np.linspace(0.0, 1.0, bins + 1))
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (m >= lo) & (m <= hi)
        if sel.sum() >= 8:
            xs.append(float(np.median(m[sel])))
            ys.append(float(np.quantile(v[sel], _QUANTILE)))
    x, y = np.array(xs), np.array(ys)
    if len(x) < 3:
        return NoiseFit(0.0, gain, 1.0, int(m.size))
    keep = np.ones(len(x), bool)
    for _ in range(3):
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        pred = slope * x + intercept
        keep = y <= 1.25 * pred + 1e-9
        if keep.sum() < 3:
            keep = np.zeros(len(x), bool)
            keep[np.argsort(y / np.maximum(pred, 1e-9))[:3]] = True
    kept = np.flatnonzero(keep)
    dark, bright = kept[: max(1, len(kept) // 2)], kept[len(kept) // 2 :]
    # texture can only add to a bin's excess over the shot noise: the least excess is the read noise
    r2 = max(float(np.min(y[dark] - gain * (x[dark] - offset))) / gain**2, 0.0)
    predicted = gain * (x[bright] - offset) + gain**2 * r2
    ratio = float(np.median(y[bright] / np.maximum(predicted, 1e-12)))
    # the slope says something only where shot noise, not read noise, makes most of the variance
    shot = float(np.median(gain * (x[bright] - offset)))
    gain_ratio = float(slope) / gain if shot >= gain**2 * r2 else 1.0
    return NoiseFit(float(np.sqrt(r2)), float(slope), ratio, int(m.size), gain_ratio)


def gaussian_centre_tap(sigma: float) -> float:
    """The weight a pixel keeps of itself under ``scipy.ndimage.gaussian_filter(., sigma)``."""
    radius = int(4.0 * sigma + 0.5)  # scipy's default truncation
    delta = np.zeros((2 * radius + 1,) * 2)
    delta[radius, radius] = 1.0
    return float(ndimage.gaussian_filter(delta, sigma)[radius, radius])


def probe_divergence(
    restored: np.ndarray, probed: np.ndarray, probe: np.ndarray, step: float, variance: np.ndarray
) -> np.ndarray:
    """Per-pixel ``v_i df_i/dy_i`` of a restoration from one probe: ``probed = f(y + step * probe)``."""
    return variance * probe * (np.asarray(probed, np.float64) - np.asarray(restored, np.float64)) / step


@dataclass(frozen=True)
class Candidates:
    """Restorations of one frame, over the pixels the weights are fitted on."""

    names: tuple[str, ...]
    outputs: np.ndarray  # (C, P) float64
    divergence: np.ndarray  # (C, P) per-pixel v_i df_i/dy_i


@dataclass(frozen=True)
class Combination:
    """Weights over the candidates and the risk they are expected to have."""

    names: tuple[str, ...]
    weights: np.ndarray  # (C,), summing to 1
    mode: Mode
    risk: float  # estimated mean squared error per pixel (ADU^2) of the weighted sum
    candidate_risk: dict[str, float] = field(default_factory=dict)  # each candidate alone
    held_out_risk: dict[str, float] = field(default_factory=dict)  # per mode, fitted on half, scored on the other

    def as_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "risk": self.risk, "weights": dict(zip(self.names, self.weights.round(4).tolist()))}


def pixel_risk(y: np.ndarray, outputs: np.ndarray, divergence: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """(C, P) per-pixel risk terms of each candidate; their mean is the estimated MSE."""
    return (y[None] - outputs) ** 2 - variance[None] + 2.0 * divergence


def _solve(outputs: np.ndarray, divergence: np.ndarray, y: np.ndarray, mode: Mode) -> np.ndarray:
    """Weights (sum 1; >= 0 for ``convex``) minimising sum (y - w.F)^2 + 2 w.D."""
    c = outputs.shape[0]
    a = outputs @ outputs.T
    a += np.eye(c) * (1e-9 * np.trace(a) / c + 1e-12)  # near-duplicate candidates must not make it singular
    b = outputs @ y - divergence.sum(axis=1)
    if mode == "affine":
        kkt = np.zeros((c + 1, c + 1))
        kkt[:c, :c], kkt[:c, c], kkt[c, :c] = a, 1.0, 1.0
        return np.linalg.solve(kkt, np.concatenate([b, [1.0]]))[:c]
    upper = np.linalg.cholesky(a).T  # a = U'U: the quadratic is |U w - U^-T b|^2 up to a constant
    target = np.linalg.solve(upper.T, b)
    big = 1e3 * np.sqrt(np.trace(a) / c)  # a heavy row enforces sum(w) = 1 inside NNLS
    w, _ = optimize.nnls(np.vstack([upper, np.full((1, c), big)]), np.concatenate([target, [big]]), maxiter=50 * c)
    return w / max(w.sum(), 1e-12)


def _risk_of(w: np.ndarray, y: np.ndarray, outputs: np.ndarray, divergence: np.ndarray, variance: np.ndarray) -> float:
    f = w @ outputs
    return float(np.mean((y - f) ** 2 - variance + 2.0 * (w @ divergence)))


def fit_combination(y: np.ndarray, candidates: Candidates, variance: np.ndarray,
                    modes: tuple[Mode, ...] = MODES) -> Combination:
    """The weights with the lowest estimated risk, the kind of weights chosen by cross-validation.

    Free (affine) weights can sharpen as well as smooth and win on large frames;
    on a few thousand pixels they fit the estimate's own noise. Each kind is
    fitted on every other pixel and scored on the rest (and the other way
    round); the kind that scores best is refitted on all pixels.
    """
    y = np.asarray(y, np.float64).ravel()
    variance = np.asarray(variance, np.float64).ravel()
    f, d = candidates.outputs, candidates.divergence
    if f.shape != d.shape or f.shape[1] != y.size or variance.size != y.size:
        raise ValueError(f"candidates {f.shape}/{d.shape} do not match {y.size} pixels")
    terms = pixel_risk(y, f, d, variance)
    alone = dict(zip(candidates.names, terms.mean(axis=1).tolist()))
    half = (np.arange(y.size) % 2).astype(bool)
    if y.size >= 64 and len(modes) > 1:
        held: dict[str, float] = {}
        for mode in modes:
            scores = []
            for fit_on in (half, ~half):
                w = _solve(f[:, fit_on], d[:, fit_on], y[fit_on], mode)
                score_on = ~fit_on
                scores.append(_risk_of(w, y[score_on], f[:, score_on], d[:, score_on], variance[score_on]))
            held[mode] = float(np.mean(scores))
        mode = min(held, key=held.__getitem__)
    else:
        held, mode = {}, modes[0]
    w = _solve(f, d, y, mode)
    return Combination(candidates.names, w, mode, _risk_of(w, y, f, d, variance), alone, held)


def gain_is_clear(y: np.ndarray, candidates: Candidates, variance: np.ndarray, combination: Combination,
                  reference: int, variance_error: float = 0.06, z: float = 2.0) -> bool:
    """Whether ``combination`` beats candidate ``reference`` by more than the estimate can err.

    Two errors: the estimate's own scatter (``z`` standard errors over the pixels)
    and a noise variance off by ``variance_error`` (relative), which shifts every
    candidate's risk by its derivative term. At a few photons per pixel both are
    as large as the differences between good restorations, and the model is kept.
    """
    y = np.asarray(y, np.float64).ravel()
    v = np.asarray(variance, np.float64).ravel()
    f, d, w = candidates.outputs, candidates.divergence, combination.weights
    blend = (y - w @ f) ** 2 - v + 2.0 * (w @ d)
    ref = (y - f[reference]) ** 2 - v + 2.0 * d[reference]
    gain = ref - blend
    scatter = z * float(gain.std()) / np.sqrt(gain.size)
    systematic = variance_error * abs(float(np.mean(2.0 * (w @ d - d[reference]))))
    worth_it = 0.01 * abs(float(ref.mean()))  # under 1 % of the error (0.04 dB), keep the simpler answer
    return float(gain.mean()) > max(scatter + systematic, worth_it)


MIN_PIXELS = 128 * 128  # below this the estimate's scatter is as large as the gains it would find


def fit_or_keep(y: np.ndarray, candidates: Candidates, variance: np.ndarray, keep: int,
                modes: tuple[Mode, ...] = ("convex",), variance_error: float = 0.06,
                min_pixels: int = MIN_PIXELS) -> Combination:
    """:func:`fit_combination`, or candidate ``keep`` alone unless the blend is clearly better."""
    fit = fit_combination(y, candidates, variance, modes)
    if np.size(y) >= min_pixels and gain_is_clear(y, candidates, variance, fit, keep, variance_error):
        return fit
    w = np.zeros(len(candidates.names))
    w[keep] = 1.0
    return Combination(candidates.names, w, "kept", fit.candidate_risk[candidates.names[keep]],
                       fit.candidate_risk, fit.held_out_risk)
