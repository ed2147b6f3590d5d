"""Denoiser plug-ins backed by lowdose's learned models (``unet``, ``n2v``, ``ddpm``, ``risk-weighted``,
``dose-aware``, ``auto``).

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
    steps: int | None = None, seed: int = 0, **options: Any,
) -> Denoiser:
    """The diffusion model: K = ``samples``, their calibrated spread as uncertainty. ``steps`` left
    unset takes the checkpoint kind's own default (4 for the shipped residual model, 10 for a plain
    DDPM trained with the ``ddpm`` or ``ddpm-gpu`` recipes)."""
    chosen = {"samples": samples, "sampler": sampler, "seed": seed, **options}
    if steps is not None:
        chosen["steps"] = steps
    return _load("ddpm", device, weights, chosen)


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


def risk_weighted(device: str = "auto", weights: str | None = None, model: str = "dose-aware",
                  fit_side: int = 256, probe_photons: float = 0.3, read_noise: float | None = None,
                  **options: Any) -> Denoiser:
    """``model`` (default ``dose-aware``; ``unet`` or a checkpoint in ``weights``) blended per frame with
    the raw frame and Gaussian filters where each one's error, estimated from the frame itself, says
    the blend is clearly closer to the truth."""
    from .risk_weighted import RiskWeightedDenoiser

    base = dose_aware(device, weights, **options) if model == "dose-aware" else _load(model, device, weights, options)
    return RiskWeightedDenoiser(base, fit_side=fit_side, probe_photons=probe_photons, read_noise=read_noise)


def resolve_auto(device: str) -> str:
    """What ``auto`` builds on ``device``: ``risk-weighted`` (the fast UNet, blended per frame with
    the raw frame and Gaussian filters where that is estimated to be closer to the truth);
    ``classical`` without models."""
    from lowdose.plugins.denoisers.registry import available_denoisers

    try:
        from .registry import default_live_model

        name = default_live_model(device)
    except Exception:  # no torch or no weights: still a working service
        return "classical"
    if name == "unet" and "risk-weighted" in available_denoisers():
        return "risk-weighted"
    return name if name in available_denoisers() else "classical"


def auto(device: str = "auto", **options: Any) -> Denoiser:
    """Whatever :func:`resolve_auto` picks, built with ``options``; its ``info`` names the real model."""
    from lowdose.plugins.denoisers.registry import create_denoiser

    return create_denoiser(resolve_auto(device), options, device=device)
