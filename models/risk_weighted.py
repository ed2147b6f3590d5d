"""A learned model and classical filters, weighted per frame by their estimated error.

A network trained on simulated samples smooths away texture it has never seen,
most visibly at high photon counts; a linear filter never invents structure but
cannot tell a nucleus from noise at a few photons per pixel. Which is better
depends on the sample and the dose, and the truth is never at hand. Stein's
unbiased risk estimate (``plugins/denoisers/risk.py``) measures each
restoration's error from the noisy frame itself, so every frame gets the
weighted sum of {the raw frame, Gaussian filters of several widths, the
network, the network with a smoothed share of what it removed put back} that
it says is closest to the truth: the network where it helps, the filters and
the detail where the network over-smooths.

Cost: the network once per frame plus once on the probed frame (on one
``fit_side`` window of larger frames: then twice, unprobed and probed, on the
window), Gaussian filters, a small least squares.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from lowdose.plugins.denoisers.interface import BaseDenoiser, Denoiser, DenoiserInfo
from lowdose.plugins.denoisers.noise_model import NoiseFit, camera_or_estimate, fit_noise
from lowdose.plugins.denoisers.risk import (
    Candidates,
    CameraNoise,
    Combination,
    fit_or_keep,
    gain_is_clear,
    gaussian_centre_tap,
    kept_alone,
    Mode,
    MIN_PIXELS,
    probe_divergence,
)

SIGMAS = (0.7, 1.0, 1.5, 2.0, 3.0)
# "detail" candidates: the model's restoration plus a smoothed share of what it removed, for
# texture a network trained on simulated samples mistakes for noise
DETAIL_SIGMAS = (1.0, 2.0)
# Frames under MIN_PIXELS (a cropped ROI, single z-slices) are fitted together, whole. Their noise
# is measured on few, small blocks, so the read noise is less certain (measured: 2.85 e- for 3.02 on
# four 61x57 slices), and at a few photons, where read noise makes most of the variance, that
# error let the blend lose up to 1 dB: the blend must be clearly better with the read noise 0.8x
# and 1.25x as well (which also refuses the +0.2 dB it would find there at 20 photons).
POOLED_READ_NOISE_BAND = (0.8, 1.25)
MIN_POOLED_PIXELS = 8192


def fit_window(image: np.ndarray, side: int) -> tuple[slice, slice]:
    """The ``side`` x ``side`` window (on a half-overlapping grid) with the most structure."""
    h, w = image.shape
    sh, sw = min(side, h), min(side, w)
    best = (-1.0, 0, 0)
    for y in range(0, h - sh + 1, max(sh // 2, 1)):
        for x in range(0, w - sw + 1, max(sw // 2, 1)):
            best = max(best, (float(image[y : y + sh, x : x + sw].std()), y, x))
    _, y, x = best
    return slice(y, y + sh), slice(x, x + sw)


def _filtered_window(frame: np.ndarray, win: tuple[slice, slice], sigma: float) -> np.ndarray:
    """``gaussian_filter(frame, sigma)[win]``, filtering only the window and the margin it reads."""
    margin = int(4.0 * sigma + 0.5) + 1
    h, w = frame.shape
    ys, xs = win
    y0, y1 = max(ys.start - margin, 0), min(ys.stop + margin, h)
    x0, x1 = max(xs.start - margin, 0), min(xs.stop + margin, w)
    part = ndimage.gaussian_filter(frame[y0:y1, x0:x1].astype(np.float64), sigma)
    return part[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


class RiskWeightedDenoiser(BaseDenoiser):
    """``learned`` blended per frame with the raw frame and Gaussian filters by estimated risk."""

    name = "risk-weighted"

    def __init__(
        self, learned: Denoiser, *, sigmas: tuple[float, ...] = SIGMAS, fit_side: int = 256,
        probe_photons: float = 0.3, read_noise: float | None = None, seed: int = 0,
        modes: tuple[Mode, ...] = ("convex",),
    ) -> None:
        if fit_side < 16:
            raise ValueError(f"fit_side must be >= 16 pixels, got {fit_side}")
        if probe_photons <= 0:
            raise ValueError(f"probe_photons must be > 0, got {probe_photons}")
        self.learned = learned
        self.modes = modes
        self.sigmas = tuple(float(s) for s in sigmas)
        self.taps = [gaussian_centre_tap(s) for s in self.sigmas]
        self.fit_side, self.probe_photons, self.read_noise, self.seed = fit_side, probe_photons, read_noise, seed
        self.last_fit: list[Combination] = []  # per frame of the last batch; empty: the model alone
        self.last_noise: NoiseFit | None = None
        li = learned.info
        self.info = DenoiserInfo(
            name=self.name, version=li.version, checksum=li.checksum,
            parameters={"learned": {"name": li.name, "version": li.version, "checksum": li.checksum,
                                    "parameters": li.parameters},
                        "gaussian_sigmas_px": list(self.sigmas), "fit_side_px": fit_side,
                        "probe_photons": probe_photons, "read_noise_e": read_noise if read_noise is not None else "estimated",
                        "detail_sigmas_px": list(DETAIL_SIGMAS),
                        "method": "per-frame weights over raw, Gaussian filters, the model and the model with "
                                  "smoothed detail put back, minimising SURE"},
            preferred_batch=li.preferred_batch, tile_size=li.tile_size, device=li.device,
        )

    def _names(self) -> tuple[str, ...]:
        return ("raw", *(f"gaussian {s:g}" for s in self.sigmas), *(f"detail {s:g}" for s in DETAIL_SIGMAS),
                self.learned.info.name)

    def _restore_float(
        self, frames: np.ndarray, *, offset: float | None, gain: float | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        offset, gain = camera_or_estimate(frames, offset, gain)
        model = self.learned.restore(frames, offset=offset, gain=gain).frames.astype(np.float32)
        pooled = frames.shape[1] * frames.shape[2] < MIN_PIXELS
        if pooled:  # frames too small to fit one by one are fitted together, whole
            windows = [(slice(0, frames.shape[1]), slice(0, frames.shape[2]))] * len(frames)
        else:
            windows = [fit_window(m, self.fit_side) for m in model]
        crops = np.stack([f[w] for f, w in zip(frames, windows)])
        fitted = fit_noise(crops, offset, gain)
        self.last_noise = fitted
        if not fitted.agrees():
            # the risk estimate is only as good as the noise model: fitted to a wrong variance, the
            # weights would smooth too much or too little
            self.last_fit = []
            return model, None
        rn = self.read_noise if self.read_noise is not None else fitted.usable_read_noise()
        step = self.probe_photons * gain
        probes = np.random.default_rng(self.seed).standard_normal(crops.shape)  # a fixed seed: same input, same output
        probed = (crops + step * probes).astype(np.float32)
        n = len(frames)
        if crops.shape[1:] == frames.shape[1:]:  # the window is the frame: its restoration is already at hand
            on_crops = np.concatenate([model, self.learned.restore(probed, offset=offset, gain=gain).frames])
        else:
            on_crops = self.learned.restore(np.concatenate([crops, probed]), offset=offset, gain=gain).frames
        parts = [self._candidates(frame, win, on_crops[i], on_crops[n + i], probes[i], step)
                 for i, (frame, win) in enumerate(zip(frames, windows))]
        camera = (offset, gain, rn)
        if pooled:
            y, outputs, slopes = (np.concatenate(a, axis=-1) for a in zip(*parts))
            self.last_fit = [self._decide(y, outputs, slopes, camera, POOLED_READ_NOISE_BAND, MIN_POOLED_PIXELS)] * n
        else:
            self.last_fit = [self._decide(*p, camera) for p in parts]
        out = np.stack([self._blend(frames[i], model[i], fit.weights) for i, fit in enumerate(self.last_fit)])
        return out, None

    def _candidates(self, frame: np.ndarray, win: tuple[slice, slice], restored: np.ndarray, probed: np.ndarray,
                    probe: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Over one frame's window: the pixels, each candidate's restoration and its derivative
        ``df_i/dy_i`` (the risk needs it times the noise variance, which :meth:`_decide` applies)."""
        y = frame[win].astype(np.float64)
        smooth = [_filtered_window(frame, win, s) for s in self.sigmas]
        u, u_probed = restored.astype(np.float64), probed.astype(np.float64)
        y_probed = y + step * probe
        details = [(u + ndimage.gaussian_filter(y - u, s), u_probed + ndimage.gaussian_filter(y_probed - u_probed, s))
                   for s in DETAIL_SIGMAS]
        outputs = [y, *smooth, *(d for d, _ in details), u]
        slopes = [np.ones_like(y), *(np.full_like(y, t) for t in self.taps),
                  *(probe_divergence(d, dp, probe, step, 1.0) for d, dp in details),
                  probe_divergence(u, u_probed, probe, step, 1.0)]
        return y.ravel(), np.stack([o.ravel() for o in outputs]), np.stack([d.ravel() for d in slopes])

    def _decide(self, y: np.ndarray, outputs: np.ndarray, slopes: np.ndarray, camera: tuple[float, float, float],
                read_noise_band: tuple[float, ...] = (), min_pixels: int = MIN_PIXELS) -> Combination:
        """The weights minimising the estimated risk, or the model alone unless the blend is clearly
        better, also with the read noise scaled by each factor of ``read_noise_band``."""
        offset, gain, rn = camera
        keep = len(outputs) - 1

        def candidates(read_noise: float) -> tuple[Candidates, np.ndarray]:
            var = CameraNoise(offset, gain, read_noise).variance(y)
            return Candidates(self._names(), outputs, slopes * var), var

        cands, var = candidates(rn)
        fit = fit_or_keep(y, cands, var, keep=keep, modes=self.modes, min_pixels=min_pixels)
        if fit.mode == "kept":
            return fit
        if all(gain_is_clear(y, c, v, fit, keep) for c, v in (candidates(rn * b) for b in read_noise_band)):
            return fit
        return kept_alone(fit, keep)

    def _blend(self, frame: np.ndarray, restored: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The weighted sum over the whole frame; only filters that got a weight are run on it."""
        y, u = frame.astype(np.float64), restored.astype(np.float64)
        out = w[-1] * u + w[0] * y
        n = len(self.sigmas)
        for wk, sigma in zip(w[1 : 1 + n], self.sigmas):
            if wk != 0.0:
                out += wk * ndimage.gaussian_filter(y, sigma)
        for wk, sigma in zip(w[1 + n : -1], DETAIL_SIGMAS):
            if wk != 0.0:
                out += wk * (u + ndimage.gaussian_filter(y - u, sigma))
        return out.astype(np.float32)

    def describe_last(self) -> list[dict[str, Any]]:
        """The weights each frame of the last batch got, for logs and benchmarks."""
        return [f.as_dict() for f in self.last_fit]
