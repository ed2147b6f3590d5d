"""Residual diffusion over a fast network's estimate: the representation and the training objective.

The fast UNet gives an estimate ``e`` of the clean frame (unit range). The diffusion
model does not generate the frame; it generates the residual ``clean - e``, scaled by
each pixel's expected shot-noise std (the noise map), so the residual has roughly unit
spread at every dose. The network predicts the scaled residual itself (x0 prediction):
a network that outputs zero then returns ``e`` exactly, so averaged samples start from
the UNet's quality, and their spread is the uncertainty the UNet leaves.

Pure tensor functions and a small objective class; the network (``DiffusionUNet``) and
the diffusion process (``ConditionalDiffusion``) stay in their own modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .diffusion import ConditionalDiffusion

COND_CHANNELS = 4  # unet estimate, noisy frame, noise-normalised innovation, log noise map
NOISE_FLOOR = 1e-4  # unit range: keeps the scale > 0 where a frame is perfectly dark
# Measured on domain-randomised crops, 1-1500 photons: std((clean - unet) / noise map) is
# 0.13-0.37 for the shipped unet, so a quarter of the noise map gives the residual ~unit spread.
DEFAULT_SCALE = 0.25
DEFAULT_MARGIN = 16  # px the unet sees around each training crop, as it does inside a frame


@dataclass(frozen=True)
class ResidualSpec:
    """How the residual is represented; stored in the checkpoint's ``diffusion`` section."""

    scale: float = DEFAULT_SCALE
    margin: int = DEFAULT_MARGIN

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "margin": self.margin}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ResidualSpec":
        d = d or {}
        return cls(scale=float(d.get("scale", DEFAULT_SCALE)), margin=int(d.get("margin", DEFAULT_MARGIN)))


def residual_scale(noise_std: torch.Tensor, spec: ResidualSpec) -> torch.Tensor:
    """Per-pixel factor from the scaled residual back to unit range."""
    return spec.scale * noise_std.clamp_min(NOISE_FLOOR)


def condition(x: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """The diffusion network's condition (N, 4, H, W) from the unet's input ``x`` (N, 2, H, W:
    frame and noise map, unit range) and its ``estimate`` (N, 1, H, W)."""
    frame, noise = x[:, :1], x[:, 1:2].clamp_min(NOISE_FLOOR)
    # What the unet removed, in units of the expected noise: ~N(0, 1) where it removed only noise,
    # structured where it smoothed away signal. Bounded: a hot pixel must not dominate a tile.
    innovation = ((frame - estimate) / noise).clamp(-6.0, 6.0) / 3.0
    return torch.cat([2 * estimate - 1, 2 * frame - 1, innovation, torch.log(noise) / 4.0], 1)


def to_residual(clean: torch.Tensor, estimate: torch.Tensor, noise_std: torch.Tensor, spec: ResidualSpec) -> torch.Tensor:
    return (clean - estimate) / residual_scale(noise_std, spec)


def from_residual(r: torch.Tensor, estimate: torch.Tensor, noise_std: torch.Tensor, spec: ResidualSpec) -> torch.Tensor:
    return estimate + residual_scale(noise_std, spec) * r


def crop_margin(t: torch.Tensor, m: int) -> torch.Tensor:
    return t[..., m:-m, m:-m] if m > 0 and min(t.shape[-2:]) > 2 * m + 8 else t


class ResidualObjective:
    """Training loss and validation prediction of a residual diffusion model (``kind="rddpm"``).

    Same interface as the trainer's other objectives: ``loss(net, x, y)`` and
    ``predict(net, x)`` on normalised tensors, ``x`` being the base network's input.
    """

    kind = "rddpm"

    def __init__(self, base: nn.Module, spec: ResidualSpec, steps: int = 200, seed: int = 0) -> None:
        self.base = base.eval()
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.spec = spec
        self.diffusion = ConditionalDiffusion(steps, "x0")
        self.gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def _estimate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The base's estimate on the whole crop, then the inner part: the unet saw context there."""
        est = self.base(x)
        m = self.spec.margin
        return crop_margin(x, m), crop_margin(est, m)

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        assert y is not None, "residual diffusion trains on pairs"
        xi, est = self._estimate(x)
        r = to_residual(crop_margin(y, self.spec.margin), est, xi[:, 1:2], self.spec)
        return self.diffusion.loss(net, r, condition(xi, est), self.gen)

    @torch.no_grad()
    def predict(self, net: nn.Module, x: torch.Tensor, samples: int = 1, steps: int = 4) -> torch.Tensor:
        """Mean of ``samples`` DDIM samples on the inner crop, placed back into the base's estimate."""
        est_full = self.base(x)
        xi, est = self._estimate(x)
        res = self.diffusion.sample(net, condition(xi, est), samples=samples, sampler="ddim", steps=steps, seed=0)
        out = est_full.clone()
        m = self.spec.margin if crop_margin(x, self.spec.margin).shape != x.shape else 0
        inner = from_residual(res.mean, est, xi[:, 1:2], self.spec)
        if m:
            out[..., m:-m, m:-m] = inner
        else:
            out = inner
        return out
