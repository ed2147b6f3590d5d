"""Denoiser plug-ins backed by lowdose's learned models (``unet``, ``n2v``, ``ddpm``, ``dose-aware``, ``auto``).

Registered in the ``lowdose.denoisers`` entry-point group; ``config.yaml``
selects one with ``restore.denoiser`` and passes ``restore.denoiser_options``
as keyword arguments. ``weights`` swaps the shipped weights for a checkpoint
written by ``lowdose train``.
"""

from __future__ import annotations

from typing import Any

from lowdose.plugins.denoisers.interface import Denoiser


def _load(default: str, device: str, weights: str | None, options: dict[str, Any]) -> Denoiser:
    from lowdose.models import load  # torch is imported only when a learned denoiser is chosen

    return load(weights or default, device=device, **options)


def unet(device: str = "auto", weights: str | None = None, **options: Any) -> Denoiser:
    """The fast supervised UNet (CARE-style): the live default on CPUs."""
    return _load("unet", device, weights, options)


def n2v(device: str = "auto", weights: str | None = None, **options: Any) -> Denoiser:
    """Noise2Void (N2V2 variant), trainable on the user's noisy frames alone."""
    return _load("n2v", device, weights, options)


def ddpm(
    device: str = "auto", weights: str | None = None, samples: int = 4, sampler: str = "ddim",
    steps: int = 10, seed: int = 0, **options: Any,
) -> Denoiser:
    """The conditional DDPM; K = ``samples`` averaged, with their std as uncertainty."""
    return _load(
        "ddpm", device, weights, {"samples": samples, "sampler": sampler, "steps": steps, "seed": seed, **options}
    )


# Above this many photons per pixel at the brightest (per frame), ``auto`` hands a frame to
# ``classical``: on real fluorescence images (benchmarks/real_quality.py, benchmarks/RESULTS.md)
# the UNet's lead over GAT + NLM shrinks with the dose and turns negative at high doses.
AUTO_THRESHOLD_PEAK_PHOTONS = 30.0


def dose_aware(
    device: str = "auto", weights: str | None = None, threshold_photons: float = AUTO_THRESHOLD_PEAK_PHOTONS,
    **options: Any,
) -> Denoiser:
    """The UNet below ``threshold_photons`` per pixel at the brightest, ``classical`` (GAT + NLM) above."""
    from lowdose.plugins.denoisers.classical import VstNlmDenoiser

    from .dose_aware import DoseAwareDenoiser

    return DoseAwareDenoiser(_load("unet", device, weights, options), VstNlmDenoiser(), threshold_photons)


def resolve_auto(device: str) -> str:
    """What ``auto`` builds on ``device``: ``dose-aware`` (the fast UNet where it beats the classical
    denoiser, GAT + NLM where it does not); ``classical`` without models."""
    from lowdose.plugins.denoisers.registry import available_denoisers

    try:
        from .registry import default_live_model

        name = default_live_model(device)
    except Exception:  # no torch or no weights: still a working service
        return "classical"
    if name == "unet" and "dose-aware" in available_denoisers():
        return "dose-aware"
    return name if name in available_denoisers() else "classical"


def auto(device: str = "auto", **options: Any) -> Denoiser:
    """Whatever :func:`resolve_auto` picks, built with ``options``; its ``info`` names the real model."""
    from lowdose.plugins.denoisers.registry import create_denoiser

    return create_denoiser(resolve_auto(device), options, device=device)
