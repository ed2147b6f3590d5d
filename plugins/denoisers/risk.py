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
    return kept_alone(fit, keep)


def kept_alone(fit: Combination, keep: int) -> Combination:
    """Candidate ``keep`` alone, with what ``fit`` estimated of every candidate for the record."""
    w = np.zeros(len(fit.names))
    w[keep] = 1.0
    return Combination(fit.names, w, "kept", fit.candidate_risk[fit.names[keep]], fit.candidate_risk, fit.held_out_risk)
