"""The conditional diffusion process: training loss and samplers.

A plain class holding the schedule; the network (or any callable with the
network's signature, e.g. a tiled wrapper from the engine) is passed per call,
so inference needs nothing from training and vice versa.

Data space: ``x0`` is the clean frame after the engine's normalisation mapped
to roughly [-1, 1]; ``cond`` is the normalised low-dose frame in the same space.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Callable, Literal

import torch

from . import schedule

# net(x: (B, 1 + C, H, W) = [x_t, cond], log_snr: (B,)) -> eps, v or x0 prediction (B, 1, H, W)
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Prediction = Literal["eps", "v", "x0"]
Sampler = Literal["ddim", "dpmpp2m", "ancestral"]
PREDICTIONS = ("eps", "v", "x0")
SAMPLERS = ("ddim", "dpmpp2m", "ancestral")
X0_BOUNDS = (-3.0, 7.0)


@dataclass(frozen=True)
class SampleResult:
    mean: torch.Tensor  # (B, 1, H, W) average over the K samples
    std: torch.Tensor | None  # per-pixel standard deviation over the K samples (K >= 2)
    evaluations: int  # network evaluations per sample
    # (B, 1, H, W) the network's x0 estimate at the first (noisiest) step, averaged over the K
    # samples: there x_t carries ~no signal, so an x0 network trained with MSE predicts E[x0 | cond]
    # there: the posterior mean without the Monte-Carlo noise of averaging K samples
    first_x0: torch.Tensor | None = None


class ConditionalDiffusion:
    def __init__(self, steps: int = 200, prediction: Prediction = "eps") -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        self.steps = steps
        self.prediction = prediction
        self.alpha_bars = schedule.discrete_alpha_bars(steps)  # float64, length steps + 1

    # ----------------------------------------------------------------- training
    def loss(
        self, net: DenoiseFn, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """MSE of the eps (v, x0) prediction at a continuous random noise level."""
        b = x0.shape[0]
        t = torch.rand(b, generator=generator, device="cpu").to(x0.device)
        ab = schedule.alpha_bar(t).to(x0.dtype)[:, None, None, None]
        eps = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device, x0.dtype)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        pred = net(torch.cat([xt, cond], 1), schedule.log_snr(ab.flatten()))
        if self.prediction == "x0":
            target = x0
        else:
            target = eps if self.prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
        return torch.mean((pred - target) ** 2)

    # ----------------------------------------------------------------- helpers
    def _predict(
        self, net: DenoiseFn, xt: torch.Tensor, cond: torch.Tensor, ab: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) at discrete level alpha_bar = ``ab``."""
        lsnr = schedule.log_snr(torch.full((xt.shape[0],), ab, dtype=torch.float64)).float().to(xt.device)
        out = net(torch.cat([xt, cond], 1), lsnr).float()
        sa, s1 = ab**0.5, (1 - ab) ** 0.5
        if self.prediction == "eps":
            x0 = (xt - s1 * out) / sa
        elif self.prediction == "v":
            x0 = sa * xt - s1 * out
        else:
            x0 = out
        # At the noisiest steps an eps model's x0 estimate divides by sqrt(alpha_bar) ~ 1e-4;
        # bounding it far outside the data range (normalised frames live in ~[-1, 3]) keeps the
        # chain stable without touching any plausible intensity.
        x0 = x0.clamp(*X0_BOUNDS)
        eps = (xt - sa * x0) / s1
        return x0, eps

    @staticmethod
    def _noise(shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        # Drawn on the CPU so a seed gives the same samples on every device.
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    # ----------------------------------------------------------------- samplers
    @torch.no_grad()
    def sample_ancestral(
        self, net: DenoiseFn, cond: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's sampler: the ancestral DDPM chain through all ``steps`` steps.

        Returns the samples and the first step's x0 estimate.
        """
        shape = (cond.shape[0], 1, *cond.shape[2:])
        x = self._noise(shape, generator, cond.device)
        abs_ = self.alpha_bars.tolist()
        first: torch.Tensor | None = None
        for i in range(self.steps, 0, -1):
            ab_t, ab_prev = abs_[i], abs_[i - 1]
            beta = 1 - ab_t / ab_prev
            x0, eps = self._predict(net, x, cond, ab_t)
            first = x0 if first is None else first
            # posterior mean of q(x_{t-1} | x_t, x0)
            c0 = ab_prev**0.5 * beta / (1 - ab_t)
            ct = (1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab_t)
            x = c0 * x0 + ct * x
            if i > 1:
                var = beta * (1 - ab_prev) / (1 - ab_t)
                x = x + var**0.5 * self._noise(shape, generator, cond.device)
        assert first is not None
        return x, first

    @torch.no_grad()
    def sample_ddim(
        self, net: DenoiseFn, cond: torch.Tensor, generator: torch.Generator, steps: int = 10
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic DDIM (eta = 0) over ``steps`` of the T-step grid.

        Only the initial noise is random, so a sample is a deterministic
        function of (seed, cond). Returns the samples and the first step's x0 estimate.
        """
        shape = (cond.shape[0], 1, *cond.shape[2:])
        x = self._noise(shape, generator, cond.device)
        grid = schedule.sampling_grid(self.steps, steps)
        abs_ = self.alpha_bars.tolist()
        first: torch.Tensor | None = None
        for i, j in zip(grid[:-1], grid[1:]):
            x0, eps = self._predict(net, x, cond, abs_[i])
            first = x0 if first is None else first
            x = abs_[j] ** 0.5 * x0 + (1 - abs_[j]) ** 0.5 * eps if j > 0 else x0
        assert first is not None
        return x, first

    @torch.no_grad()
    def sample_dpmpp2m(
        self, net: DenoiseFn, cond: torch.Tensor, generator: torch.Generator, steps: int = 10
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DPM-Solver++(2M) (Lu et al. 2022): DDIM's data-prediction step plus a second-order
        correction from the previous step's x0 estimate, at no extra network evaluation.

        Deterministic like DDIM; the last step (to alpha_bar = 1, where log-SNR is infinite)
        is first order, as in the reference implementation. Returns the samples and the first
        step's x0 estimate.
        """
        shape = (cond.shape[0], 1, *cond.shape[2:])
        x = self._noise(shape, generator, cond.device)
        grid = schedule.sampling_grid(self.steps, steps)
        abs_ = self.alpha_bars.tolist()

        def lam(ab: float) -> float:  # log(alpha / sigma): half the log-SNR
            return 0.5 * (math.log(ab) - math.log1p(-ab))

        prev_x0: torch.Tensor | None = None
        first: torch.Tensor | None = None
        prev_h = 0.0
        for i, j in zip(grid[:-1], grid[1:]):
            x0, _ = self._predict(net, x, cond, abs_[i])
            first = x0 if first is None else first
            if j == 0:
                x = x0
                break
            h = lam(abs_[j]) - lam(abs_[i])
            d = x0
            if prev_x0 is not None:
                r = prev_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
            x = ((1 - abs_[j]) / (1 - abs_[i])) ** 0.5 * x - abs_[j] ** 0.5 * math.expm1(-h) * d
            prev_x0, prev_h = x0, h
        assert first is not None
        return x, first

    @torch.no_grad()
    def sample(
        self,
        net: DenoiseFn,
        cond: torch.Tensor,
        *,
        samples: int = 1,
        sampler: Sampler = "ddim",
        steps: int = 10,
        seed: int = 0,
    ) -> SampleResult:
        """K samples per condition, run as one batch; their mean and per-pixel std."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        g = torch.Generator().manual_seed(seed)
        b = cond.shape[0]
        rep = cond.repeat_interleave(samples, 0)
        if sampler == "ancestral":
            (x, first), evals = self.sample_ancestral(net, rep, g), self.steps
        elif sampler == "ddim":
            (x, first), evals = self.sample_ddim(net, rep, g, steps), steps
        elif sampler == "dpmpp2m":
            (x, first), evals = self.sample_dpmpp2m(net, rep, g, steps), steps
        else:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
        x = x.reshape(b, samples, *x.shape[1:])
        std = x.std(1, unbiased=True) if samples > 1 else None
        first = first.reshape(b, samples, *first.shape[1:]).mean(1)
        return SampleResult(mean=x.mean(1), std=std, evaluations=evals, first_x0=first)
