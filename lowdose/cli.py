"""The ``lowdose`` command: serve, demo, acquire, status, and the tools around them."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="lowdose: live denoising for low-dose light microscopy (Micro-Manager -> ZeroMQ -> GPU -> OME-Zarr).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _load(config: Optional[Path]):
    from lowdose.daemon.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def serve(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config.yaml (default: the shipped defaults)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the daemon until SIGINT/SIGTERM; it then writes what it holds and exits 0.

    Crash-only: if one of its loops dies, the daemon stops answering and exits 70
    (EX_SOFTWARE); the hooks resend to the next one. Run it under a service manager that
    restarts it, e.g. systemd with Restart=on-failure (the unit: docs/lowdose.service).
    Exit codes: 0 stopped by a signal, 1 cannot start, 2 bad config, 70 a loop died.
    """
    cfg = _load(config)
    from lowdose.daemon.server import DaemonError, DaemonFailed, serve as run_daemon
    from lowdose.daemon.supervisor import EX_SOFTWARE
    from rich.markup import escape

    _setup_logging(verbose)
    try:
        run_daemon(cfg)
    except DaemonError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except DaemonFailed as exc:
        # one line, unwrapped: journald shows it as the reason for the restart
        err_console.print(f"[red]error:[/red] {escape(str(exc))}; exiting {EX_SOFTWARE}", soft_wrap=True)
        raise typer.Exit(EX_SOFTWARE) from None


@app.command()
def status(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config.yaml whose hook.endpoint to ask"),
    endpoint: Optional[str] = typer.Option(None, help="daemon endpoint (overrides the config)"),
    timeout: float = typer.Option(3.0, help="seconds to wait for an answer"),
    as_json: bool = typer.Option(False, "--json", help="print the raw status as JSON"),
) -> None:
    """Ask a running daemon for its runs: frames received/written/restored/skipped, queues, lag, fps."""
    from lowdose.daemon.client import DaemonUnreachable, query_status

    cfg = _load(config)
    target = endpoint or cfg.hook.endpoint
    try:
        st = query_status(target, timeout=timeout)
    except DaemonUnreachable as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        console.print_json(json.dumps(st))
        return
    den = st.get("denoiser") or {}
    console.print(
        f"daemon [bold]{st['daemon']}[/bold] (lowdose {st['version']}), up {st['uptime_s']:.0f} s, "
        f"denoiser {den.get('name')} on {den.get('device')}, policy {st['policy']}, "
        f"write queue {st['write_queue']}, restore queue {st['restore_queue']}"
    )
    table = Table("run", "instrument", "state", "received", "written", "restored", "skipped", "queue",
                  "fps", "lag p50/p95 s", "store")
    for r in st["runs"]:
        lag = "-" if r["lag_p50_s"] is None else f"{r['lag_p50_s']:.2f}/{r['lag_p95_s']:.2f}"
        table.add_row(
            r["run"], r["instrument"], r["state"], str(r["frames_received"]), str(r["frames_written"]),
            f"{r['frames_restored_live']}+{r['frames_restored_backfill']}", str(r["frames_skipped"]),
            str(r["restore_queue"]), "-" if r["fps"] is None else f"{r['fps']:.1f}", lag, r["store"],
        )
    console.print(table)


@app.command()
def demo(
    frames: int = typer.Option(60, "--frames", "-n", min=1, help="time points to acquire"),
    output: Path = typer.Option(Path("lowdose-demo.ome.zarr"), "--output", "-o", help="the .ome.zarr store to write"),
    size: int = typer.Option(512, help="camera frame size (pixels, square)"),
    photons: float = typer.Option(8.0, help="peak photons per pixel: the dose"),
    denoiser: str = typer.Option("auto", help="denoiser plug-in (auto: the best shipped model that keeps up live)"),
    policy: str = typer.Option("latest", help="fifo or latest"),
    interval_ms: float = typer.Option(0.0, help="time between frames (0: as fast as the camera)"),
    exposure_ms: float = typer.Option(10.0, help="simulated exposure"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store"),
) -> None:
    """Simulated low-light time-lapse on a real MMCore, denoised live into OME-Zarr, with a summary and a picture."""
    from lowdose.demo import DemoOptions, run_demo

    opts = DemoOptions(
        frames=frames, output=output, size=size, peak_photons=photons, denoiser=denoiser, policy=policy,
        interval_ms=interval_ms, exposure_ms=exposure_ms, overwrite=overwrite,
    )
    try:
        run_demo(opts, console=console)
    except (FileExistsError, RuntimeError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def acquire(
    sequence: Path = typer.Argument(..., help="useq-schema MDA sequence (.yaml or .json)"),
    mm_config: Optional[Path] = typer.Option(
        None, "--mm-config", help="Micro-Manager hardware configuration (default: the DemoCamera MMConfig_demo.cfg)"
    ),
    adapters: Optional[Path] = typer.Option(None, help="Micro-Manager device adapter folder (default: auto)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config.yaml for the hook section"),
    run_id: Optional[str] = typer.Option(None, "--run", help="run id (default: a timestamp)"),
    instrument: str = typer.Option("microscope", help="instrument name recorded with the run"),
) -> None:
    """Run an MDA from a useq-schema file on a Micro-Manager configuration, with the lowdose hook attached."""
    from lowdose.acquire import AcquireError, run_acquisition

    cfg = _load(config)
    try:
        counters = run_acquisition(
            sequence, hook_cfg=cfg.hook, mm_config=mm_config, adapters=adapters, run_id=run_id, instrument=instrument
        )
    except AcquireError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(counters)


@app.command()
def backfill(
    store: Path = typer.Argument(..., help="a run store, <run>.ome.zarr"),
    denoiser: str = typer.Option("auto", help="denoiser plug-in for the restoration"),
    redo: bool = typer.Option(False, "--redo", help="restore every frame again (e.g. best quality after a live run)"),
    options: Optional[str] = typer.Option(None, help='denoiser options as JSON, e.g. \'{"steps": 200}\''),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config.yaml for storage and device"),
) -> None:
    """Restore the frames of a run store that lack a restoration (or all, with --redo), then finalize it."""
    from rich.progress import Progress

    from lowdose.daemon.backfill import backfill_store
    from lowdose.plugins.denoisers.registry import resolve_device
    from lowdose.daemon.store import StoreError
    from lowdose.plugins.denoisers.interface import DenoiserError
    from lowdose.plugins.denoisers.registry import create_denoiser

    cfg = _load(config)
    try:
        den = create_denoiser(denoiser, json.loads(options) if options else {}, device=resolve_device(cfg.restore.device))
    except (DenoiserError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    with Progress(console=console) as progress:
        task = progress.add_task(f"restoring with {den.info.name}", total=None)
        try:
            result = backfill_store(
                store, den, storage=cfg.storage, batch_size=cfg.restore.batch_size, redo=redo,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        except StoreError as exc:
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    console.print(f"{result.store}: restored {result.restored} frames, {result.remaining} left unrestored")


@app.command("config")
def show_config(
    check: Optional[Path] = typer.Option(None, "--check", help="validate this config.yaml instead of printing"),
) -> None:
    """Print the documented default config.yaml, or validate one with --check."""
    from lowdose.daemon.config import default_config_text

    if check is not None:
        _load(check)
        console.print(f"{check}: valid")
        return
    sys.stdout.write(default_config_text())


@app.command()
def denoisers() -> None:
    """List the denoiser plug-ins installed (entry-point group lowdose.denoisers)."""
    from lowdose.plugins.denoisers.registry import available_denoisers

    for name, ep in sorted(available_denoisers().items()):
        console.print(f"{name:12s} {ep.value}")


@app.command()
def keys(
    directory: Path = typer.Argument(..., help="where to write the key pair"),
    name: str = typer.Option(..., help="key name, e.g. 'daemon' or the microscope's name"),
) -> None:
    """Create a CURVE key pair (name.key public, name.key_secret secret) for encrypted tcp:// links."""
    import zmq.auth

    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    console.print(f"public key: {public}\nsecret key: {secret} (keep it on this machine only)")


def _mount_train() -> None:
    try:
        from lowdose.models.cli import train_app
    except ImportError:
        return
    app.add_typer(train_app, name="train")


_mount_train()


if __name__ == "__main__":
    app()
