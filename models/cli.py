"""``lowdose train``: a Typer app the main CLI mounts (``app.add_typer(train_app, name="train")``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

AMP_OPTION = typer.Option("auto", help="bf16 autocast: auto (on CUDA only), bf16 or off")
MAX_MINUTES_OPTION = typer.Option(None, help="stop after the epoch past this many minutes; --resume continues")

train_app = typer.Typer(help="Train restoration models on your data or reproduce the shipped ones.",
                        no_args_is_help=True)


@train_app.command("model")
def train_model(
    model: str = typer.Argument(..., help="unet (paired), n2v (noisy frames only) or ddpm (paired)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for last.pt (resumable) and best.pt"),
    low: Optional[Path] = typer.Option(None, help="low-dose frames: TIFF, TIFF folder, Zarr or lowdose .ome.zarr"),
    high: Optional[Path] = typer.Option(None, help="matching high-dose frames (paired training)"),
    simulate: bool = typer.Option(False, help="train on the built-in fluorescence simulator"),
    sim_domain: str = typer.Option("randomised", help="simulator scenes and detectors: randomised or simple"),
    noise_map: bool = typer.Option(True, help="unet: give the network a per-pixel noise-level channel"),
    offset: Optional[float] = typer.Option(None, help="camera offset in ADU (default: estimated)"),
    gain: Optional[float] = typer.Option(None, help="camera gain in ADU per electron (default: 1)"),
    epochs: int = typer.Option(10),
    steps_per_epoch: int = typer.Option(200),
    batch: int = typer.Option(8),
    crop: int = typer.Option(96),
    lr: float = typer.Option(1e-3),
    prediction: str = typer.Option("eps", help="ddpm target: eps or v"),
    finetune: Optional[str] = typer.Option(None, help="start from a shipped model name or checkpoint"),
    resume: bool = typer.Option(False, help="continue from OUT/last.pt"),
    device: str = typer.Option("auto"),
    amp: str = AMP_OPTION,
    max_minutes: Optional[float] = MAX_MINUTES_OPTION,
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch"),
    seed: int = typer.Option(0),
) -> None:
    """Train MODEL on paired or noisy-only data and write checkpoints to OUT."""
    from .train import TrainConfig, main_train

    if model not in ("unet", "n2v", "ddpm"):
        raise typer.BadParameter(f"model must be unet, n2v or ddpm, not {model!r}")
    if prediction not in ("eps", "v"):
        raise typer.BadParameter("prediction must be eps or v")
    if sim_domain not in ("randomised", "simple"):
        raise typer.BadParameter(f"--sim-domain must be randomised or simple, not {sim_domain!r}")
    cfg = TrainConfig(
        model=model, out_dir=out, low=low, high=high, simulate=simulate, offset=offset, gain=gain,  # type: ignore[arg-type]
        epochs=epochs, steps_per_epoch=steps_per_epoch, batch=batch, crop=crop, lr=lr,
        prediction=prediction, finetune=finetune, resume=resume, device=device, threads=threads,  # type: ignore[arg-type]
        seed=seed, amp=amp, max_minutes=max_minutes,  # type: ignore[arg-type]
        sim_domain=sim_domain, noise_map=noise_map and model == "unet" and not finetune,  # type: ignore[arg-type]
        sim_photons=(1.0, 1500.0) if sim_domain == "randomised" else (2.0, 200.0),
    )
    best = main_train(cfg)
    typer.echo(f"best checkpoint: {best}  (use it with restore.denoiser_options.weights or lowdose.models.load)")


@train_app.command("recipe")
def train_recipe_cmd(
    name: str = typer.Argument(..., help="unet, n2v, rddpm (the shipped models' recipes; rddpm ships as ddpm), ddpm (a plain DDPM), unet-simple (the first unet), ddpm-gpu or ddpm-paper (GPU)"),
    out: Path = typer.Option(..., "--out", "-o"),
    scale: float = typer.Option(1.0, help="multiply the step budget (e.g. 10 on a GPU)"),
    device: str = typer.Option("auto"),
    amp: str = AMP_OPTION,
    max_minutes: Optional[float] = MAX_MINUTES_OPTION,
    resume: bool = typer.Option(False, help="continue from OUT/last.pt"),
    threads: Optional[int] = typer.Option(2),
) -> None:
    """Reproduce a shipped model from the simulator."""
    from .train import train_recipe

    best = train_recipe(name, out, scale=scale, device=device, threads=threads, amp=amp,
                        max_minutes=max_minutes, resume=resume)
    typer.echo(f"best checkpoint: {best}")
