"""Noise schedule of the conditional DDPM, as pure functions of time.

Time is continuous, t in [0, 1]; the paper's T = 200 discrete steps are the grid
t_i = i / T. Keeping the schedule continuous lets the network be conditioned on a
continuous noise level and lets fast samplers use any subset of steps.
"""

from __future__ import annotations

import math

import torch

COSINE_S = 0.008  # Nichol & Dhariwal's offset: keeps beta small near t = 0
MAX_BETA = 0.999  # the last steps of a cosine schedule would otherwise reach beta = 1


def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """Cumulative signal fraction of the cosine schedule at continuous time ``t``."""
    f = torch.cos((t + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2
    f0 = math.cos(COSINE_S / (1 + COSINE_S) * math.pi / 2) ** 2
    return (f / f0).clamp(1e-8, 1.0)


def discrete_alpha_bars(steps: int) -> torch.Tensor:
    """alpha_bar on the grid i / steps, i = 0..steps (float64), consistent with MAX_BETA."""
    ab = alpha_bar(torch.linspace(0, 1, steps + 1, dtype=torch.float64))
    betas = (1 - ab[1:] / ab[:-1]).clamp(max=MAX_BETA)
    return torch.cat([ab[:1], ab[:1] * torch.cumprod(1 - betas, 0)])


def betas(steps: int) -> torch.Tensor:
    """Per-step betas of the discrete chain (float64, length ``steps``)."""
    ab = discrete_alpha_bars(steps)
    return 1 - ab[1:] / ab[:-1]


def log_snr(ab: torch.Tensor) -> torch.Tensor:
    """The network's noise-level input: log(alpha_bar / (1 - alpha_bar))."""
    ab = ab.clamp(1e-8, 1 - 1e-8)
    return torch.log(ab) - torch.log1p(-ab)


def sampling_grid(total_steps: int, steps: int) -> list[int]:
    """Indices into the discrete chain visited by a sampler of ``steps`` steps, high to low."""
    if not 1 <= steps <= total_steps:
        raise ValueError(f"steps must be in 1..{total_steps}, got {steps}")
    idx = torch.linspace(total_steps, 0, steps + 1).round().long().tolist()
    return [int(i) for i in idx]
