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
        calibrated: bool = True, estimate: str = "posterior", shrink: float | None = None,
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
        self.shrink = float(self.calibration.get("shrink", 1.0) if shrink is None else shrink)
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
            "uncertainty_factor": self.factor, "estimate": self.estimate_kind, "shrink": self.shrink,
            "noise_floor": self.noise_floor,
        }

    def estimate(self, x: torch.Tensor) -> torch.Tensor:
        """The base UNet's estimate (N, 1, H, W) for its input ``x`` (frame and noise map)."""
        plan = plan_tiles(self.engine.device, BASE_BYTES_PER_PX, tuple(x.shape[-2:]), x.shape[0], multiple=8)
        return self.engine.tiled(self.base_net, x, plan=plan, overlap=BASE_OVERLAP, multiple=8)

    def sample_residuals(self, cond: torch.Tensor, samples: int, seed: int) -> Any:
        """K residual samples for one frame's condition (1, 4, H, W): the sampler's mean and std."""
        plan = self.plan(tuple(cond.shape[-2:]), samples)

        def net_fn(x: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
            # Every item of a sampler step shares one noise level, so the tiles can too.
            def tile_fn(t: torch.Tensor) -> torch.Tensor:
                return self.net(t, log_snr[:1].expand(t.shape[0]).to(t.device))

            return self.engine.tiled(tile_fn, x, plan=plan, overlap=self.overlap, multiple=self.multiple)

        return self.diffusion.sample(
            net_fn, cond.to(self.engine.device), samples=samples, sampler=self.sampler, steps=self.steps, seed=seed
        )

    def _restore_float(
        self, frames: np.ndarray, *, offset: float | None, gain: float | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        scale = normalize.fit_scale(frames, self.spec, offset, gain)
        x = torch.from_numpy(normalize.network_input(frames, scale, self.spec))
        est = self.estimate(x).cpu()
        means, stds = [], []
        for i in range(frames.shape[0]):
            xi, ei = x[i : i + 1], est[i : i + 1]
            res = self.sample_residuals(condition(xi, ei), self.samples, self.seed + i)
            noise = xi[:, 1:2]
            r = res.first_x0 if self.estimate_kind == "posterior" else res.mean
            means.append(from_residual(self.shrink * r.cpu(), ei, noise, self.residual)[0, 0].numpy())
            if res.std is not None:
                spread = residual_scale(noise, self.residual) * res.std.cpu()
                std = self.factor * torch.sqrt(spread**2 + (self.noise_floor * noise) ** 2)
                stds.append(std[0, 0].numpy())
        out = normalize.from_unit(np.stack(means), scale)
        unc = normalize.std_from_unit(np.stack(stds), scale) if stds else None
        return out, unc
