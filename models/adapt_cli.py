"""``lowdose adapt STACK --from MODEL --out OUT.pt``: the command the main CLI mounts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def adapt_command(
    stack: Path = typer.Argument(..., help="camera counts: a TIFF (T, Y, X) or (Y, X), or a raw .ome.zarr lowdose wrote"),
    from_model: str = typer.Option("unet", "--from", help="model to start from: a shipped name (unet, n2v) or a .pt checkpoint"),
    out: Path = typer.Option(..., "--out", "-o", help="the adapted checkpoint to write (OUT.pt, its card OUT.md beside it)"),
    offset: Optional[float] = typer.Option(None, help="camera offset in ADU (default: the store's, else estimated from the noise)"),
    gain: Optional[float] = typer.Option(None, help="camera gain in ADU per electron (default: the store's, else estimated)"),
    max_minutes: float = typer.Option(2.0, "--max-minutes", help="time budget; the best weights seen are kept"),
    mode: str = typer.Option("auto", help="auto (n2n with 2+ frames, n2v with one), n2n or n2v"),
    steps: Optional[int] = typer.Option(None, help="stop after this many steps (if before the time budget)"),
    frames: int = typer.Option(64, min=1, help="adapt on the stack's first FRAMES frames"),
    batch: int = typer.Option(8, help="crops per step"),
    crop: int = typer.Option(64, help="crop size in pixels"),
    lr: float = typer.Option(3e-4, help="learning rate"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch"),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Adapt a model to your own sample and camera from noisy frames alone (self-supervised), within a time budget."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from .adapt import AdaptConfig
    from .adapt_data import AdaptError
    from .adapt_offline import adapt_stack

    if mode not in ("auto", "n2n", "n2v"):
        raise AdaptError(f"--mode must be auto, n2n or n2v, not {mode!r}")
    try:
        cfg = AdaptConfig(mode=mode, batch=batch, crop=crop, lr=lr, seed=seed)  # type: ignore[arg-type]
    except ValueError as exc:
        raise AdaptError(str(exc)) from None
    con = Console(stderr=True)
    bar = Progress(TextColumn("adapting {task.fields[mode]}"), BarColumn(), TextColumn("step {task.fields[step]}"),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("held-out {task.fields[val]}"),
                   TimeRemainingColumn(), console=con, disable=quiet, transient=True)
    task = bar.add_task("adapt", total=60.0 * max_minutes if steps is None else steps, mode="", step=0, loss="-", val="-")

    def started(data, adapter) -> None:  # noqa: ANN001
        con.print(escape(f"{data.source}: {data.frames.shape[0]} frame(s) of {data.frames.shape[1]}x{data.frames.shape[2]}, "
                         f"offset {data.offset:.1f} ADU, gain {data.gain:.3g} ADU/e- ({data.calibration}); "
                         f"mode {adapter.mode}"), soft_wrap=True)
        bar.update(task, mode=adapter.mode)

    def show(p) -> None:  # noqa: ANN001
        val = "-" if p.val_loss is None else f"{100 * (1 - p.val_loss / p.val_start):+.1f}%"
        bar.update(task, completed=p.elapsed_s if steps is None else p.step, step=p.step, loss=f"{p.loss:.4g}", val=val)

    with bar:
        res = adapt_stack(stack, base=from_model, out=out, offset=offset, gain=gain, max_minutes=max_minutes,
                          max_steps=steps, cfg=cfg, device=device, threads=threads, on_progress=show, on_start=started,
                          max_frames=frames)
    r = res.run
    typer.echo(f"{res.path}: {r.steps} steps ({r.mode}) in {r.seconds:.0f} s; held-out loss {r.val_start:.5g} -> "
               f"{r.val_best:.5g} ({100 * r.improvement:.1f} % lower); card {res.card}")
