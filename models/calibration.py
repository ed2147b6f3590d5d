"""Split-conformal calibration of a residual diffusion model's uncertainty, on simulated truth.

The raw spread of K samples is not a calibrated error bar: a short-trained model is
over- or under-dispersed, and K samples estimate a std with few degrees of freedom.
For each K one factor ``c_K`` is fitted on a simulated calibration set (scenes from
their own seed, never the held-out or benchmark seeds): the 90 % quantile of
``|truth - mean| / std`` over all its pixels, divided by z = 1.645. Then
``mean +- 1.645 * c_K * std`` covers 90 % of the calibration pixels by construction,
and the held-out coverage measures whether that transfers.

The samples' spread misses part of the error (a short-trained model is under-dispersed
most where the shot noise is largest), so the uncertainty is
``c_K * sqrt(spread^2 + (a * noise)^2)``, ``noise`` each pixel's expected shot-noise std:
``a`` is chosen on the calibration set alone (its frames span 1-1500 photons), as the
value on a small grid whose coverage varies least across the set's dose bins; ``a = 0``
is the samples' spread alone.

Before the factors, on the same set, one shrinkage ``lambda`` of the predicted residual:
the restored frame is ``unet + lambda * predicted residual``, lambda the least-squares
fit of the true residual (clipped to [0, 1]): a short-trained prediction that is partly
noise is added only as far as it helps, and lambda = 0 is the unet itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import load_checkpoint, save_checkpoint
from .simulate import PairGenerator

TARGET = 0.90
Z90 = 1.6448536269514722  # two-sided 90 % normal quantile: the interval is frames +- Z90 * uncertainty
CALIBRATION_SEED = 515_151  # no recipe, held-out set or benchmark uses it
CALIBRATED_K = (2, 4, 8)
CALIBRATED_STEPS = (4, 10)  # the model's default and the ``ddpm`` plug-in's default
NOISE_FLOORS = (0.0, 0.05, 0.1, 0.2)
DOSE_BINS = (10.0, 100.0)  # photons per pixel at the brightest: the calibration set's low / middle / high


@dataclass(frozen=True)
class SimFrames:
    """Simulated frames with truth, each with its own camera."""

    noisy: np.ndarray  # (N, Y, X) ADU float32
    clean: np.ndarray  # (N, Y, X) expected ADU
    offset: np.ndarray  # (N,)
    gain: np.ndarray  # (N,)
    peak_photons: np.ndarray | None = None  # (N,)


def simulated_frames(n: int, size: int, seed: int, photons: tuple[float, float] = (1.0, 1500.0),
                     scenes: int = 8) -> SimFrames:
    """Domain-randomised frames (the training distribution) from their own seed."""
    gen = PairGenerator(seed=seed, n_scenes=scenes, scene_size=max(2 * size, 160), peak_photons=photons,
                        domain="randomised")
    b = gen.sample(n, size, np.random.default_rng(seed))
    return SimFrames(b.noisy, b.clean, np.asarray(b.offset, np.float64), np.asarray(b.gain, np.float64),
                     np.asarray(b.peak_photons, np.float64))


def _restore_each(den: Any, s: SimFrames) -> tuple[np.ndarray, np.ndarray]:
    means, uncs = [], []
    for i in range(len(s.noisy)):
        r = den.restore(s.noisy[i : i + 1].astype(np.float32), offset=float(s.offset[i]), gain=float(s.gain[i]))
        if r.uncertainty is None:
            raise ValueError("calibration needs K >= 2 samples (an uncertainty)")
        means.append(r.frames[0])
        uncs.append(r.uncertainty[0])
    return np.stack(means), np.stack(uncs)


def scores(den: Any, s: SimFrames) -> np.ndarray:
    """|truth - mean| / std per pixel (flattened) for a denoiser returning an uncertainty."""
    mean, unc = _restore_each(den, s)
    err = np.abs(s.clean - mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(unc > 0, err / np.maximum(unc, 1e-12), np.where(err > 0, np.inf, 0.0)).ravel()


def conformal_factor(score: np.ndarray, target: float = TARGET) -> float:
    """Split-conformal quantile (the ceil((n + 1) target) / n empirical quantile), as a factor on std."""
    n = score.size
    level = min(1.0, np.ceil((n + 1) * target) / n)
    return float(np.quantile(score, level, method="higher")) / Z90


def fit_shrink(full: Any, none: Any, s: SimFrames) -> float:
    """Least-squares share of the predicted residual: ``full`` adds all of it, ``none`` (shrink 0) none."""
    f1, _ = _restore_each(full, s)
    f0, _ = _restore_each(none, s)
    p, r = (f1 - f0).astype(np.float64), (s.clean - f0).astype(np.float64)
    pp = float(np.sum(p * p))
    return float(np.clip(np.sum(r * p) / pp, 0.0, 1.0)) if pp > 0 else 0.0


def choose_noise_floor(den: Any, s: SimFrames, floors: tuple[float, ...] = NOISE_FLOORS) -> float:
    """The floor ``a`` whose calibrated coverage varies least across ``s``'s dose bins (``den``:
    uncalibrated, floor 0). Only the calibration set is looked at."""
    from . import normalize

    mean, spread = _restore_each(den, s)
    err = np.abs(s.clean - mean)
    noise = np.stack([
        normalize.noise_map(s.noisy[i : i + 1], sc)[0] * np.float32(sc.gain[0] * (sc.hi[0] - sc.lo[0]))
        for i in range(len(s.noisy))
        for sc in [normalize.fit_scale(s.noisy[i : i + 1], den.spec, float(s.offset[i]), float(s.gain[i]))]
    ])
    peaks = s.peak_photons if s.peak_photons is not None else np.ones(len(s.noisy))
    bins = np.digitize(peaks, DOSE_BINS)
    best: tuple[float, float] = (np.inf, 0.0)
    for a in floors:
        unc = np.sqrt(spread**2 + (a * noise) ** 2)
        c = conformal_factor((err / np.maximum(unc, 1e-12)).ravel())
        inside = err <= Z90 * c * unc
        worst = max(abs(float(inside[bins == b].mean()) - TARGET) for b in np.unique(bins))
        best = min(best, (worst, a))
    return best[1]


def coverage(den: Any, s: SimFrames, z: float = Z90) -> float:
    """Fraction of pixels whose truth lies inside frames +- z * uncertainty."""
    mean, unc = _restore_each(den, s)
    return float(np.mean(np.abs(s.clean - mean) <= z * unc))


def calibrate(checkpoint: str | Path, out: str | Path | None = None, *, n: int = 48, size: int = 128,
              seed: int = CALIBRATION_SEED, ks: tuple[int, ...] = CALIBRATED_K, sampler: str = "ddim",
              steps: tuple[int, ...] = CALIBRATED_STEPS) -> dict[str, Any]:
    """Fit c_K for each K in ``ks`` and sampler step count in ``steps`` on ``n`` simulated
    ``size``^2 frames; store them in the checkpoint (``diffusion.calibration``)."""
    from .restorer import denoiser_from_checkpoint

    path = Path(checkpoint)
    ck = load_checkpoint(path)
    if ck.kind != "rddpm":
        raise ValueError(f"{path} is a {ck.kind!r} checkpoint; calibration is for residual diffusion (rddpm)")
    frames = simulated_frames(n, size, seed)

    def make(k: int, st: int, shrink: float, floor: float = 0.0) -> Any:
        return denoiser_from_checkpoint(ck, name=path.stem, path=path, device="cpu", samples=k, sampler=sampler,
                                        steps=st, calibrated=False, shrink=shrink, noise_floor=floor)

    shrink = fit_shrink(make(2, steps[0], 1.0), make(2, steps[0], 0.0), frames)
    floor = choose_noise_floor(make(4, steps[0], shrink), frames)
    factors: dict[str, dict[str, float]] = {}
    for st in steps:
        for k in ks:
            factors.setdefault(str(st), {})[str(k)] = conformal_factor(scores(make(k, st, shrink, floor), frames))
    cal = {"target": TARGET, "z": Z90, "factors": factors, "shrink": shrink, "noise_floor": floor,
           "sampler": sampler,
           "set": {"source": "lowdose.models.simulate.PairGenerator (domain-randomised)", "seed": seed,
                   "frames": n, "size": size, "peak_photons": [1.0, 1500.0]}}
    ck.diffusion = {**ck.diffusion, "calibration": cal}
    save_checkpoint(ck, out or path, with_optimizer=ck.optimizer is not None)
    return cal
