"""Shipped models, found by name inside the package (no download, ever)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowdose.plugins.denoiser import BaseDenoiser, DenoiserError

from .checkpoint import load_checkpoint
from .restorer import denoiser_from_checkpoint

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Fastest first: default_live_model picks the best one that keeps up on a device.
SHIPPED = ("unet", "n2v", "ddpm")


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
    ``sampler`` ("ddim" | "ancestral"), ``steps`` and ``seed`` for "ddpm".
    """
    model_name, path = resolve(name)
    ckpt = load_checkpoint(path)
    return denoiser_from_checkpoint(ckpt, name=model_name, path=path, device=device, **options)


def default_live_model(device: str = "cpu") -> str:
    """The best shipped model that keeps up with a live acquisition on ``device``.

    On a GPU the DDPM with a 10-step deterministic sampler restores a 2048^2
    frame in well under a second and is the most accurate; on a CPU only the
    fast UNet keeps up (the DDPM needs minutes per frame there).
    """
    have = available()
    if device.startswith("cuda") and "ddpm" in have:
        return "ddpm"
    for name in ("unet", "n2v"):
        if name in have:
            return name
    return "classical"
