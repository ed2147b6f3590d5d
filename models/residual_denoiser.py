"""The residual diffusion denoiser (checkpoint kind ``rddpm``): what ``lowdose.models.load`` returns for it.

One pass of the embedded base UNet, then K samples of the residual diffusion
(``models/residual.py``) around its estimate: their mean is the restored frame,
their spread (with a calibrated share of the shot noise added in quadrature), times the
checkpoint's calibration factor for K, the uncertainty:
a per-pixel standard deviation in ADU such that ``frames +- 1.645 * uncertainty``
held the truth at 90 % of the pixels of simulated calibration frames.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from . import normalize
from .checkpoint import Checkpoint, CheckpointError
from .diffusion import SAMPLERS, ConditionalDiffusion, Sampler
from .engine import plan_tiles
from .residual import ResidualSpec, condition, from_residual, residual_scale
from .restorer import _LearnedBase
from .unet import build_network

BASE_BYTES_PER_PX = 48.0 * 16  # the base UNet's activations, as NetworkDenoiser plans them
BASE_OVERLAP = 64
# "posterior": the restored frame is the network's x0 estimate at the first (noisiest) step, i.e.
# E[residual | condition] with no Monte-Carlo noise; "samples": the mean of the K samples, whose
# error exceeds the posterior mean's by the samples' variance / K.
ESTIMATES = ("posterior", "samples")


def _nearest(keys: list[int], value: int) -> int:
    return min(keys, key=lambda c: (abs(math.log(c) - math.log(value)), c))


def calibration_factor(calibration: dict[str, Any], samples: int, steps: int) -> float:
    """The factor stored for (``steps``, ``samples``), or that of the nearest calibrated ones (log scale);
    1 (the raw spread) for an uncalibrated checkpoint."""
    table = calibration.get("factors") or {}
    if not table:
        return 1.0
    by_k = table[str(_nearest([int(s) for s in table], steps))]
    return float(by_k[str(_nearest([int(k) for k in by_k], samples))])


class ResidualDiffusionDenoiser(_LearnedBase):
    """The base UNet's estimate refined by K residual-diffusion samples; calibrated spread as uncertainty."""

    bytes_per_px_per_channel = 160.0
    default_overlap = 32
    # No attention in this network, so a tile's size does not change what it attends to, and the
    # engine's default tiles serve: measured on 512^2 held-out frames (K = 4), 512 px tiles gave the
    # PSNR of 256 px ones to 0.01 dB in 63 % of the time (less overlap recomputed).
    max_tile = None

    def __init__(
        self, ckpt: Checkpoint, *, samples: int = 4, sampler: Sampler = "ddim", steps: int = 4, seed: int = 0,
        calibrated: bool = True, estimate: str = "posterior", shrink: float | str | None = "risk",
        noise_floor: float | None = None, **kw: Any,
    ) -> None:
        if estimate not in ESTIMATES:
            raise ValueError(f"estimate must be one of {', '.join(ESTIMATES)}, got {estimate!r}")
        self.estimate_kind = estimate
        if ckpt.base is None:
            raise CheckpointError("an rddpm checkpoint must embed its base network ('base'); retrain it")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
        if int(samples) < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.samples, self.sampler, self.steps, self.seed = int(samples), sampler, int(steps), int(seed)
        self.residual = ResidualSpec.from_dict(ckpt.diffusion.get("residual"))
        self.diffusion = ConditionalDiffusion(steps=int(ckpt.diffusion.get("steps", 200)), prediction="x0")
        self.calibration = dict(ckpt.diffusion.get("calibration") or {})
        self.factor = calibration_factor(self.calibration, self.samples, self.steps) if calibrated else 1.0
        # The share of the predicted residual added to the unet's estimate (1: all of it, 0: the unet),
        # fitted with the factors; the MSE-optimal shrinkage of a prediction that is partly noise.
        # "risk" (the default): per frame, the share that minimises Stein's unbiased risk estimate on
        # the frame itself (``_risk_shrink``), the calibrated one where the frame's noise does not
        # follow the camera model. On texture the simulated samples lacked, the residual smooths
        # what is really there, and the frame's own risk says so: the unet then stands alone.
        if shrink is not None and shrink != "risk" and not isinstance(shrink, (int, float)):
            raise ValueError(f"shrink must be a number in [0, 1], 'risk' or None (the calibrated share), got {shrink!r}")
        self.risk_shrink = shrink == "risk"
        fixed = None if shrink == "risk" else shrink
        self.shrink = float(self.calibration.get("shrink", 1.0) if fixed is None else fixed)
        self.last_shrink: list[float] = []  # per frame of the last batch
        # Share of each pixel's shot-noise std added (in quadrature) to the samples' spread before
        # the factor (models/calibration.py): the part of the error the samples do not spread over.
        self.noise_floor = float(self.calibration.get("noise_floor", 0.0) if noise_floor is None else noise_floor)
        super().__init__(ckpt, **kw)
        base = build_network(ckpt.base["arch"])
        base.load_state_dict(ckpt.base["state_dict"])
        self.base_net = self.engine.prepare(base)
        self.info = replace(self.info, has_uncertainty=self.samples > 1)

    def _parameters(self) -> dict[str, Any]:
        return {
            **super()._parameters(), "samples": self.samples, "sampler": self.sampler,
            "steps": self.steps if self.sampler != "ancestral" else self.diffusion.steps, "seed": self.seed,
            "base": str(self.checkpoint.base.get("checksum", ""))[:12] if self.checkpoint.base else "",
            "uncertainty_factor": self.factor, "estimate": self.estimate_kind,
            "shrink": "risk" if self.risk_shrink else self.shrink, "calibrated_shrink": self.shrink,
            "noise_floor": self.noise_floor,
        }

    def estimate(self, x: torch.Tensor) -> torch.Tensor:
        """The base UNet's estimate (N, 1, H, W) for its input ``x`` (frame and noise map)."""
        plan = plan_tiles(self.engine.device, BASE_BYTES_PER_PX, tuple(x.shape[-2:]), x.shape[0], multiple=8)
        return self.engine.tiled(self.base_net, x, plan=plan, overlap=BASE_OVERLAP, multiple=8)

    def sample_residuals(self, cond: torch.Tensor, samples: int, seed: int, steps: int | None = None) -> Any:
        """K residual samples for one frame's condition (1, 4, H, W): the sampler's mean and std
        (``steps`` = 1: only the first step, which gives the posterior-mean estimate ``first_x0``)."""
        plan = self.plan(tuple(cond.shape[-2:]), samples)

        def net_fn(x: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
            # Every item of a sampler step shares one noise level, so the tiles can too.
            def tile_fn(t: torch.Tensor) -> torch.Tensor:
                return self.net(t, log_snr[:1].expand(t.shape[0]).to(t.device))

            return self.engine.tiled(tile_fn, x, plan=plan, overlap=self.overlap, multiple=self.multiple)

        return self.diffusion.sample(
            net_fn, cond.to(self.engine.device), samples=samples, sampler=self.sampler if steps is None else "ddim",
            steps=self.steps if steps is None else steps, seed=seed,
        )

    def _restore_float(
        self, frames: np.ndarray, *, offset: float | None, gain: float | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        scale = normalize.fit_scale(frames, self.spec, offset, gain)
        x = torch.from_numpy(normalize.network_input(frames, scale, self.spec))
        est = self.estimate(x).cpu()
        means, stds = [], []
        self.last_shrink = []
        for i in range(frames.shape[0]):
            xi, ei = x[i : i + 1], est[i : i + 1]
            res = self.sample_residuals(condition(xi, ei), self.samples, self.seed + i)
            noise = xi[:, 1:2]
            r = res.first_x0 if self.estimate_kind == "posterior" else res.mean
            share = self.shrink
            if self.risk_shrink:
                share = self._risk_shrink(frames[i], _one(scale, i), ei, self.seed + i, offset, gain)
            self.last_shrink.append(share)
            means.append(from_residual(share * r.cpu(), ei, noise, self.residual)[0, 0].numpy())
            if res.std is not None:
                spread = residual_scale(noise, self.residual) * res.std.cpu()
                std = self.factor * torch.sqrt(spread**2 + (self.noise_floor * noise) ** 2)
                stds.append(std[0, 0].numpy())
        out = normalize.from_unit(np.stack(means), scale)
        unc = normalize.std_from_unit(np.stack(stds), scale) if stds else None
        return out, unc

    def _risk_shrink(self, frame: np.ndarray, scale: normalize.FrameScale, estimate: torch.Tensor, seed: int,
                     offset: float | None, gain: float | None) -> float:
        """The share ``s`` of the posterior-mean residual R minimising the estimated risk of ``u + s R``.

        SURE for Poisson-Gaussian noise of variance ``v``: the risk of ``u + s R`` is, up to terms
        free of ``s``, ``|y - u - s R|^2 + 2 s sum(v dR/dy)``, minimal at ``s = (<R, y - u> - sum(v
        dR/dy)) / |R|^2``. The derivative comes from one random probe, as ``auto``'s blend measures
        the unet's, on the most structured window; only the sampler's first step is needed (the
        posterior mean), with the draws of the frame's own seed.
        """
        from lowdose.plugins.denoisers.noise_model import camera_or_estimate, fit_noise
        from lowdose.plugins.denoisers.risk import CameraNoise, probe_divergence

        from .risk_weighted import fit_window

        offset, gain = camera_or_estimate(frame[None], offset, gain)
        win = fit_window(estimate[0, 0].numpy(), RISK_WINDOW)
        y = frame[win].astype(np.float32)
        fitted = fit_noise(y[None], offset, gain)
        if not fitted.agrees():
            return self.shrink
        var = CameraNoise(offset, gain, fitted.usable_read_noise()).variance(y)
        step = RISK_PROBE_PHOTONS * gain
        probe = np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
        span = float(scale.gain[0] * (scale.hi[0] - scale.lo[0]))  # ADU per normalised unit

        def residual_adu(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            xw = torch.from_numpy(normalize.network_input(window[None], scale, self.spec))
            ew = self.estimate(xw).cpu()
            r = self.sample_residuals(condition(xw, ew), self.samples, seed, steps=1).first_x0.cpu()
            resid = residual_scale(xw[:, 1:2], self.residual) * r
            return (span * resid[0, 0]).numpy().astype(np.float64), normalize.from_unit(ew[:, 0].numpy(), scale)[0]

        big_r, u = residual_adu(y)
        probed_r, _ = residual_adu(y + step * probe)
        divergence = float(np.sum(probe_divergence(big_r, probed_r, probe, step, var)))
        energy = float(np.sum(big_r**2))
        if energy <= 0.0:
            return self.shrink
        return float(np.clip((np.sum(big_r * (y - u)) - divergence) / energy, 0.0, 1.0))


RISK_WINDOW = 256  # px: the window the shrink is fitted on (the whole frame when smaller)
RISK_PROBE_PHOTONS = 0.3  # the probe's step, photons: small against the noise, large against float error


def _one(scale: normalize.FrameScale, i: int) -> normalize.FrameScale:
    return normalize.FrameScale(scale.offset[i : i + 1], scale.gain[i : i + 1], scale.lo[i : i + 1], scale.hi[i : i + 1])
