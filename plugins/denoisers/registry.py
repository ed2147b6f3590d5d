"""Finding denoisers by name: the ``lowdose.denoisers`` entry-point group.

Implementations are discovered, never imported by name here: the learned models
register ``unet``, ``n2v``, ``ddpm`` and ``auto`` from ``lowdose.models.denoisers``,
the classical ones from this folder, third parties from their own packages.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .interface import Denoiser, DenoiserError

ENTRY_POINT_GROUP = "lowdose.denoisers"


def available_denoisers() -> dict[str, EntryPoint]:
    """Entry points of the ``lowdose.denoisers`` group, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def create_denoiser(name: str, options: dict[str, Any] | None = None, device: str = "auto") -> Denoiser:
    """Build the denoiser registered as ``name`` (or ``auto``) with ``options`` from config."""
    eps = available_denoisers()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "(none: is lowdose installed with `pip install -e .`?)"
        raise DenoiserError(
            f"unknown denoiser {name!r} in restore.denoiser; installed denoisers: {known}. "
            f"Third-party denoisers register in the {ENTRY_POINT_GROUP!r} entry-point group."
        )
    factory = eps[name].load()
    try:
        den = factory(device=device, **(options or {}))
    except TypeError as exc:
        raise DenoiserError(f"bad restore.denoiser_options for {name!r}: {exc}") from exc
    if not isinstance(den, Denoiser):
        raise DenoiserError(f"entry point {name!r} did not build a Denoiser (got {type(den).__name__})")
    return den


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a CUDA build of torch sees a GPU, else ``cpu``; others pass through.

    Works without torch installed (the classical denoisers do not need it).
    """
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"
