"""Denoiser objects built from checkpoints: what ``lowdose.models.load`` returns.

They satisfy :class:`lowdose.plugins.denoisers.interface.Denoiser`: frames in ADU in,
frames in the same shape, dtype and units out.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lowdose.plugins.denoisers.interface import BaseDenoiser, DenoiserError, DenoiserInfo

from . import normalize
from .checkpoint import Checkpoint, build_from_checkpoint
from .diffusion import ConditionalDiffusion
from .engine import EnginePlan, InferenceEngine, plan_tiles


def to_diffusion_space(u: torch.Tensor) -> torch.Tensor:
    """Normalised [0, ~1] intensities -> the DDPM's roughly [-1, 1] data space."""
    return 2.0 * u - 1.0


def from_diffusion_space(x: torch.Tensor) -> torch.Tensor:
    return (x + 1.0) / 2.0


class _LearnedBase(BaseDenoiser):
    bytes_per_px_per_channel = 48.0
    default_overlap = 64
    max_tile: int | None = None

    def __init__(
        self, ckpt: Checkpoint, *, name: str, device: str = "auto", tile: int | None = None,
        overlap: int | None = None, batch: int | None = None, path: str | Path = "<memory>",
    ) -> None:
        self.checkpoint = ckpt
        self.engine = InferenceEngine(device)
        self.net = self.engine.prepare(build_from_checkpoint(ckpt, path))
        self.spec = normalize.NormSpec(**ckpt.normalisation)
        self.tile = tile
        self.overlap = self.default_overlap if overlap is None else overlap
        self.batch = batch
        self.name = name
        self.multiple: int = int(getattr(self.net, "multiple", 8))
        base = float(ckpt.arch.get("base", 16))
        self.bytes_per_px = self.bytes_per_px_per_channel * base
        self.info = self._info()

    def _parameters(self) -> dict[str, Any]:
        return {"kind": self.checkpoint.kind, "arch": self.checkpoint.arch}

    def _info(self) -> DenoiserInfo:
        plan = self.plan((self.tile or 2048, self.tile or 2048), 1)
        return DenoiserInfo(
            name=self.name, version=self.checkpoint.lowdose_version or "unknown",
            checksum=self.checkpoint.checksum, parameters=self._parameters(),
            preferred_batch=plan.batch, tile_size=plan.tile, device=str(self.engine.device),
            has_uncertainty=False,
        )

    def plan(self, shape: tuple[int, int], n: int) -> EnginePlan:
        return plan_tiles(
            self.engine.device, self.bytes_per_px, shape, n, tile=self.tile, batch=self.batch,
            multiple=self.multiple, max_tile=self.max_tile,
        )


# The eight symmetries of the square as (quarter turns, mirror), ordered so that the first 2 (a
# mirror) and the first 4 (the mirrors and the half turn) are groups of their own that need no
# transpose: a non-square frame keeps its shape, and so its tiling.
DIHEDRAL = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))
ENSEMBLE_SIZES = (1, 2, 4, 8)


def to_symmetry(x: torch.Tensor, k: int) -> torch.Tensor:
    turns, flip = DIHEDRAL[k]
    x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return torch.flip(x, dims=(-1,)) if flip else x


def from_symmetry(y: torch.Tensor, k: int) -> torch.Tensor:
    turns, flip = DIHEDRAL[k]
    y = torch.flip(y, dims=(-1,)) if flip else y
    return torch.rot90(y, -turns, dims=(-2, -1)) if turns else y


class NetworkDenoiser(_LearnedBase):
    """One forward pass per frame: the fast UNet and Noise2Void.

    ``ensemble`` = 2, 4 or 8 averages the restorations of the frame flipped and rotated (test-time
    self-ensembling): the network is not exactly equivariant, and its errors under the symmetries
    are partly independent, so the mean is better (benchmarks/RESULTS.md) at that many times the
    cost: an option for restoring afterwards (``lowdose restore``, backfill), not for the live path.
    """

    def __init__(self, ckpt: Checkpoint, *, ensemble: int = 1, **options: Any) -> None:
        if ensemble not in ENSEMBLE_SIZES:
            raise DenoiserError(f"ensemble must be one of {ENSEMBLE_SIZES} (passes over flipped and rotated frames), "
                             f"not {ensemble!r}")
        self.ensemble = ensemble
        super().__init__(ckpt, **options)

    def _parameters(self) -> dict[str, Any]:
        return {**super()._parameters(), **({"ensemble": self.ensemble} if self.ensemble > 1 else {})}

    def network_pair(
        self, inputs: np.ndarray, targets: np.ndarray, *, offset: float | None, gain: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's input for ``inputs`` (N, Y, X ADU) and ``targets`` in the units of its output,
        scaled as the inputs are: what self-supervised adaptation (``models/adapt.py``) trains on, so
        a change of representation here is a change there too."""
        scale = normalize.fit_scale(inputs, self.spec, offset, gain)
        x = torch.from_numpy(normalize.network_input(inputs, scale, self.spec))  # + its noise map, if any
        return x, torch.from_numpy(normalize.to_unit(targets, scale))[:, None]

    def start_adaptation(self, **settings: Any) -> Any:
        """Fine-tune a copy of this network on a run's own frames in the background (``restore.adapt``)."""
        from .online import OnlineAdaptation

        return OnlineAdaptation(self, **settings)

    def _restore_float(
        self, frames: np.ndarray, *, offset: float | None, gain: float | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        scale = normalize.fit_scale(frames, self.spec, offset, gain)
        x = torch.from_numpy(normalize.network_input(frames, scale, self.spec))
        if self.ensemble == 1:  # the live path: one pass, no copies
            y = self._forward(x)
        else:
            y = sum(from_symmetry(self._forward(to_symmetry(x, k)), k) for k in range(self.ensemble)) / self.ensemble
        return normalize.from_unit(y[:, 0].cpu().numpy(), scale), None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.plan(tuple(x.shape[2:]), x.shape[0])
        return self.engine.tiled(self.net, x, plan=plan, overlap=self.overlap, multiple=self.multiple)


class DiffusionDenoiser(_LearnedBase):
    """The conditional DDPM: K samples per frame, averaged; their std as uncertainty."""

    bytes_per_px_per_channel = 160.0
    default_overlap = 32
    # The network was trained on 64 px crops: its attention saw 16x16 tokens. A 256 px tile gives it
    # 64x64, which dilutes what it attends to; 128 px tiles scored 0.1-0.5 dB better on held-out
    # frames (K = 4, peak 5/20/100) and ran 3x faster per 512x512 frame on a CPU.
    max_tile = 128

    def __init__(
        self, ckpt: Checkpoint, *, samples: int = 4, sampler: Literal["ddim", "ancestral"] = "ddim",
        steps: int = 10, seed: int = 0, **kw: Any,
    ) -> None:
        self.samples = int(samples)
        self.sampler = sampler
        self.steps = int(steps)
        self.seed = int(seed)
        self.diffusion = ConditionalDiffusion(
            steps=int(ckpt.diffusion.get("steps", 200)), prediction=ckpt.diffusion.get("prediction", "eps")
        )
        super().__init__(ckpt, **kw)
        self.info = replace(self.info, has_uncertainty=self.samples > 1)

    def _parameters(self) -> dict[str, Any]:
        return {
            **super()._parameters(), "samples": self.samples, "sampler": self.sampler,
            "steps": self.steps if self.sampler == "ddim" else self.diffusion.steps, "seed": self.seed,
        }

    def _restore_float(
        self, frames: np.ndarray, *, offset: float | None, gain: float | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        scale = normalize.fit_scale(frames, self.spec, offset, gain)
        u = torch.from_numpy(normalize.to_unit(frames, scale))[:, None]
        means, stds = [], []
        for i in range(frames.shape[0]):
            cond = to_diffusion_space(u[i : i + 1]).to(self.engine.device)
            plan = self.plan(frames.shape[1:], self.samples)

            def net_fn(x: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
                # Every item of a sampler step shares one noise level, so the tiles can too.
                def tile_fn(t: torch.Tensor) -> torch.Tensor:
                    return self.net(t, log_snr[:1].expand(t.shape[0]).to(t.device))

                return self.engine.tiled(tile_fn, x, plan=plan, overlap=self.overlap, multiple=self.multiple)

            res = self.diffusion.sample(
                net_fn, cond, samples=self.samples, sampler=self.sampler, steps=self.steps,
                seed=self.seed + i,
            )
            means.append(from_diffusion_space(res.mean)[0, 0].cpu().numpy())
            if res.std is not None:
                stds.append((res.std / 2.0)[0, 0].cpu().numpy())
        out = normalize.from_unit(np.stack(means), scale)
        unc = normalize.std_from_unit(np.stack(stds), scale) if stds else None
        return out, unc


def denoiser_from_checkpoint(
    ckpt: Checkpoint, *, name: str, path: str | Path = "<memory>", device: str = "auto", **options: Any
) -> BaseDenoiser:
    cls: type[BaseDenoiser]
    if ckpt.kind == "rddpm":
        from .residual_denoiser import ResidualDiffusionDenoiser

        cls = ResidualDiffusionDenoiser
    else:
        cls = DiffusionDenoiser if ckpt.kind == "ddpm" else NetworkDenoiser
    try:
        return cls(ckpt, name=name, path=path, device=device, **options)
    except TypeError as exc:
        raise TypeError(f"bad option for model {name!r} ({ckpt.kind}): {exc}") from exc
