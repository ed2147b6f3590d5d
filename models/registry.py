"""Shipped models, found by name inside the package (no download, ever)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowdose.plugins.denoisers.interface import BaseDenoiser, DenoiserError

from .checkpoint import load_checkpoint
from .restorer import denoiser_from_checkpoint

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED = ("unet", "n2v", "ddpm")
# Most accurate first, as measured by benchmarks/quality.py (benchmarks/RESULTS.md): the shipped
# DDPM is CPU-trained and still below the UNet; move "ddpm" first once a GPU-trained one ships.
QUALITY_ORDER = ("unet", "ddpm", "n2v")


class ModelNotFoundError(DenoiserError, LookupError):
    """No shipped model of that name and no checkpoint file at that path."""


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.pt"


def available() -> list[str]:
    """Names of the shipped models whose weights are present in the package."""
    return [n for n in SHIPPED if weights_path(n).is_file()]


def resolve(name_or_path: str | Path) -> tuple[str, Path]:
    p = Path(name_or_path)
    if str(name_or_path) in SHIPPED and weights_path(str(name_or_path)).is_file():
        return str(name_or_path), weights_path(str(name_or_path))
    if p.suffix == ".pt" or p.is_file():
        return p.stem, p
    raise ModelNotFoundError(
        f"unknown model {str(name_or_path)!r}; shipped models: {', '.join(available()) or '(none)'}; "
        f"or pass the path to a .pt checkpoint written by `lowdose train`"
    )


def load(name: str | Path, *, device: str = "auto", **options: Any) -> BaseDenoiser:
    """A ready denoiser for a shipped model name or a checkpoint path.

    Options: ``tile``, ``overlap``, ``batch`` for every model; ``samples``,
    ``sampler`` ("ddim" | "dpmpp2m" | "ancestral"), ``steps`` and ``seed`` for diffusion models
    ("ddpm"); residual ones (checkpoint kind "rddpm", the shipped "ddpm") also take ``estimate``
    ("posterior" | "samples"), ``shrink`` and ``calibrated`` (models/residual_denoiser.py).
    """
    model_name, path = resolve(name)
    ckpt = load_checkpoint(path)
    return denoiser_from_checkpoint(ckpt, name=model_name, path=path, device=device, **options)


def _ms_per_frame(name: str, device: str, frame_shape: tuple[int, int]) -> float:
    """Measured time of one restore on a 256^2 probe, scaled to ``frame_shape`` by pixel count."""
    import time

    import numpy as np

    den = load(name, device=device, **({"samples": 1, "steps": 10} if name == "ddpm" else {}))
    probe = (np.random.default_rng(0).poisson(20, (1, 256, 256)) + 100).astype(np.uint16)
    den.restore(probe)  # warm-up: allocations, kernel selection
    t = time.perf_counter()
    den.restore(probe)
    return (time.perf_counter() - t) * 1e3 * frame_shape[0] * frame_shape[1] / 256**2


def default_live_model(
    device: str = "cpu", frame_interval_s: float | None = None, frame_shape: tuple[int, int] = (2048, 2048)
) -> str:
    """The most accurate shipped model that keeps up with a live acquisition on ``device``.

    Without ``frame_interval_s`` this is a static choice: the fast UNet (the
    most accurate shipped model, and the only one fast enough on a CPU).
    With it, candidates are timed in quality order on a small probe frame on
    the device and the first whose time per ``frame_shape`` frame fits in the
    interval is returned ("classical" if none does).
    """
    have = available()
    if frame_interval_s is not None:
        for name in QUALITY_ORDER:
            if name in have and _ms_per_frame(name, device, frame_shape) <= frame_interval_s * 1e3:
                return name
        return "classical"
    for name in ("unet", "n2v"):
        if name in have:
            return name
    return "classical"
