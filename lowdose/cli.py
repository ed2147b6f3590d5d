"""The ``lowdose`` command: serve, demo, acquire, status, and the tools around them.

User errors are turned into one line and exit code 2 in one place,
:class:`lowdose.console.LowdoseGroup`; commands just raise them.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from lowdose.console import LowdoseGroup, UserError, err, out, print_error

app = typer.Typer(
    cls=LowdoseGroup,
    help="lowdose: live denoising for low-dose light microscopy (Micro-Manager -> ZeroMQ -> GPU -> OME-Zarr).",
    no_args_is_help=True,
    add_completion=False,
)


def _show_version(value: bool) -> None:
    if value:
        from lowdose import __version__

        out().print(f"lowdose {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(
        False, "--debug", envvar="LOWDOSE_DEBUG", help="show the full traceback of an error, user errors too"
    ),
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """lowdose: live denoising for low-dose light microscopy (Micro-Manager -> ZeroMQ -> GPU -> OME-Zarr)."""
    # --debug is read by LowdoseGroup.invoke from the parsed parameters


def _load(config: Optional[Path]):
    from lowdose.daemon.config import load_config

    return load_config(config)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _check_endpoint(endpoint: str, option: str = "--endpoint") -> str:
    from lowdose.wire.hook_config import check_endpoint

    try:
        return check_endpoint(endpoint)
    except ValueError as exc:
        raise UserError(f"{option}: {exc}, e.g. tcp://127.0.0.1:5571") from None


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
    from lowdose.wire.keyfiles import check_secret_key

    if cfg.server.curve.enabled:
        check_secret_key(cfg.server.curve.server_secret_key)  # a user error (exit 2): no restart fixes it
    from lowdose.daemon.supervisor import EX_SOFTWARE

    _setup_logging(verbose)

    def announce(daemon) -> None:
        if daemon.dashboard is not None:
            hint = "  (with ?token= and dashboard.token)" if cfg.dashboard.token else ""
            out().print(escape(f"dashboard: {daemon.dashboard.url}{hint}"), soft_wrap=True)

    try:
        run_daemon(cfg, ready=announce)
    except DaemonError as exc:
        # 1, not the user-error 2: a taken endpoint or a busy GPU may clear, so a service manager retries
        print_error(str(exc))
        raise typer.Exit(1) from None
    except DaemonFailed as exc:
        # one line, unwrapped: journald shows it as the reason for the restart
        print_error(f"{exc}; exiting {EX_SOFTWARE}")
        raise typer.Exit(EX_SOFTWARE) from None


@app.command()
def status(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config.yaml whose hook.endpoint to ask"),
    endpoint: Optional[str] = typer.Option(None, help="daemon endpoint (overrides the config)"),
    timeout: float = typer.Option(3.0, help="seconds to wait for an answer"),
    as_json: bool = typer.Option(False, "--json", help="print the raw status as JSON"),
    watch: bool = typer.Option(False, "--watch", "-w", help="keep the view live until Ctrl-C"),
    interval: float = typer.Option(1.0, min=0.05, help="seconds between refreshes with --watch"),
    count: Optional[int] = typer.Option(None, min=1, hidden=True, help="stop --watch after this many refreshes"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="draw a run's raw | restored frame beside its "
                                        "throughput and lag over time into this PNG"),
    run: Optional[str] = typer.Option(None, "--run", help="the run --plot draws (default: the newest)"),
) -> None:
    """Ask a running daemon for its runs: frames received/written/restored (live + backfill), queues, lag, fps."""
    from lowdose import status_view
    from lowdose.daemon.client import query_status

    from lowdose.daemon.client import DaemonUnreachable
    from lowdose.plugins.acquisition.spool import summarize

    hook = _load(config).hook
    target = _check_endpoint(endpoint) if endpoint else hook.endpoint
    con = out()
    if watch:
        if as_json:
            raise UserError("--watch and --json do not go together; poll `lowdose status --json` instead")
        status_view.watch(con, target, timeout=timeout, interval=interval, count=count, spool_dir=hook.spool_dir)
        return
    # The spool is on this machine, the daemon may be elsewhere or down: frames waiting here are worth
    # saying even (most of all) when no daemon answers.
    spools = summarize(hook.spool_dir)
    try:
        st = query_status(target, timeout=timeout)
    except DaemonUnreachable:
        if not as_json:
            status_view.print_spools(con, spools, hook.spool_dir)
        raise
    if plot is not None:
        _plot_status(st, plot, run)
        return
    if as_json:
        st["local_spools"] = [status_view.spool_json(s) for s in spools]
        con.print_json(json.dumps(st))
        return
    status_view.print_once(con, st, target)
    status_view.print_spools(con, spools, hook.spool_dir)


def _plot_status(st: dict, plot: Path, run: Optional[str]) -> None:
    from lowdose.run_plot import plot_run

    if plot.suffix.lower() != ".png":
        raise UserError(f"--plot writes a PNG: give a name ending in .png, not {plot.name!r}")
    runs = st.get("runs", [])
    if not runs:
        raise UserError("the daemon has no run to plot yet; start an acquisition first")
    chosen = runs[-1] if run is None else next((r for r in runs if r["run"] == run), None)
    if chosen is None:
        raise UserError(f"the daemon has no run {run!r}; it has {', '.join(r['run'] for r in runs)}")
    try:
        t = plot_run(Path(chosen["store"]), plot)
    except (LookupError, OSError) as exc:
        raise UserError(f"cannot plot run {chosen['run']!r}: {exc}") from None
    out().print(escape(f"{plot}: run {chosen['run']}, raw | restored at t={t}, throughput and lag over time"))


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
    dashboard_port: int = typer.Option(5573, min=0, max=65535, help="the daemon's web dashboard port (0: none)"),
    hold: float = typer.Option(0.0, min=0, help="seconds to keep the daemon and its dashboard up after the run"),
) -> None:
    """Simulated low-light time-lapse on a real MMCore, denoised live into OME-Zarr, with a summary and a picture."""
    from lowdose.demo import DemoOptions, run_demo

    if policy not in ("fifo", "latest"):
        raise UserError(f"--policy must be fifo or latest, not {policy!r}")
    opts = DemoOptions(
        frames=frames, output=output, size=size, peak_photons=photons, denoiser=denoiser, policy=policy,
        interval_ms=interval_ms, exposure_ms=exposure_ms, overwrite=overwrite, dashboard_port=dashboard_port,
        hold_s=hold,
    )
    run_demo(opts, console=out())


@app.command()
def view(
    store: Path = typer.Argument(..., help="a run store, <run>.ome.zarr"),
) -> None:
    """Open a run store in napari: raw, restored and uncertainty as layers (needs lowdose[napari])."""
    from lowdose.napari.reader import is_lowdose_store

    if not is_lowdose_store(store):
        raise UserError(f"{store} is not a lowdose run store; give the path of a <run>.ome.zarr")
    try:
        import napari
    except ImportError:
        raise UserError('napari is not installed: pip install "lowdose[napari]"') from None
    viewer = napari.Viewer(title=f"lowdose: {store.name}")
    viewer.open(str(store), plugin="lowdose")
    viewer.window.add_plugin_dock_widget("lowdose", "lowdose live")
    napari.run()


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lowdose.acquire import print_acquire_summary, run_acquisition

    cfg = _load(config)
    con = out()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=con) as progress:
        acquired = progress.add_task("acquired", total=None)
        acked = progress.add_task("acked by the daemon", total=None)

        def show(counters, expected: int) -> None:
            done = (counters.queued, counters.acked) if counters is not None else (0, 0)
            progress.update(acquired, completed=done[0], total=expected)
            progress.update(acked, completed=done[1], total=expected)

        result = run_acquisition(
            sequence, hook_cfg=cfg.hook, mm_config=mm_config, adapters=adapters, run_id=run_id,
            instrument=instrument, on_progress=show,
        )
    print_acquire_summary(con, result, cfg.hook.endpoint)
    if result.report is not None and not result.report.ok:
        raise typer.Exit(1)  # for scripts: frames are still in the spool, or the daemon refused some


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
    from lowdose.denoiser_list import check_denoiser_name
    from lowdose.plugins.denoisers.registry import create_denoiser, resolve_device

    if not store.exists():
        raise UserError(f"{store} does not exist; give the path of a run store, <run>.ome.zarr")
    cfg = _load(config)
    check_denoiser_name(denoiser)
    try:
        den_options = json.loads(options) if options else {}
    except ValueError as exc:
        raise UserError(f"--options is not JSON ({exc}); e.g. --options '{{\"steps\": 200}}'") from None
    if config is not None:
        _check_backfill_dtype(store, cfg.storage.restored_dtype, config)
    den = create_denoiser(denoiser, den_options, device=resolve_device(cfg.restore.device))
    con = out()
    with Progress(console=con) as progress:
        task = progress.add_task(escape(f"restoring with {den.info.name}"), total=None)
        result = backfill_store(
            store, den, storage=cfg.storage, batch_size=cfg.restore.batch_size, redo=redo,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    con.print(escape(f"{result.store}: restored {result.restored} frames, {result.remaining} left unrestored"))


@app.command()
def restore(
    stack: Path = typer.Argument(..., help="camera counts: a TIFF or .npy, (Y, X), (T, Y, X) or a hyperstack, or a lowdose .ome.zarr"),
    out_path: Path = typer.Option(..., "--out", "-o", help="restored frames, float32 (.tif, .tiff or .npy); "
                             "OUT.uncertainty.tif beside it when the model gives one"),
    denoiser: str = typer.Option("auto", help="denoiser plug-in (`lowdose denoisers` lists them)"),
    offset: Optional[float] = typer.Option(None, help="camera offset in ADU (default: the store's, else estimated once from the stack's noise)"),
    gain: Optional[float] = typer.Option(None, help="camera gain in ADU per electron (default: the store's, else estimated once)"),
    options: Optional[str] = typer.Option(None, help='denoiser options as JSON, e.g. \'{"samples": 8}\''),
    frames: Optional[int] = typer.Option(None, min=1, help="restore only the first FRAMES frames"),
    position: int = typer.Option(0, min=0, help="lowdose store: which position"),
    channel: int = typer.Option(0, min=0, help="lowdose store: which channel"),
    z: int = typer.Option(0, min=0, help="lowdose store: which plane"),
    device: str = typer.Option("auto", help="cpu, cuda or auto"),
    force: bool = typer.Option(False, "--force", help="replace an existing --out"),
) -> None:
    """Restore a stack already on disk (TIFF, .npy or a run store) into a float32 TIFF, frame by frame."""
    from rich.progress import Progress

    from lowdose.denoiser_list import check_denoiser_name
    from lowdose.restore_file import restore_file

    check_denoiser_name(denoiser)
    try:
        den_options = json.loads(options) if options else {}
    except ValueError as exc:
        raise UserError(f"--options is not JSON ({exc}); e.g. --options '{{\"samples\": 8}}'") from None
    out_console = out()
    with Progress(console=err(), transient=True) as progress:
        task = progress.add_task(escape(f"restoring {stack.name} with {denoiser}"), total=None)
        res = restore_file(stack, out_path, denoiser=denoiser, options=den_options, device=device, offset=offset, gain=gain,
                           force=force, max_frames=frames, position=position, channel=channel, z=z,
                           on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    unc = f"; uncertainty (std, ADU) in {res.uncertainty}" if res.uncertainty else ""
    camera = "" if res.offset is None or res.gain is None else f"offset {res.offset:.1f} ADU, gain {res.gain:.3g} ADU/e-: "
    out_console.print(escape(
        f"{res.out}: {res.frames} frame(s) of {res.shape[0]}x{res.shape[1]} restored by {res.denoiser} "
        f"({res.ms_per_frame:.0f} ms per frame; {camera}{res.calibration}){unc}"), soft_wrap=True)


def _check_backfill_dtype(store: Path, wanted: str, config: Path) -> None:
    """A restored image keeps one dtype: refuse a config that asks for another (mixed chunks are unreadable)."""
    import numpy as np

    from lowdose.daemon.store import declared_restored_dtype
    from lowdose.daemon.store.layout import read_attrs

    declared = declared_restored_dtype(store)
    if declared is None:
        return
    raw = np.dtype(read_attrs(store)["start"]["dtype"])
    wanted_dtype = np.dtype("float32") if wanted == "float32" else raw
    if wanted_dtype != declared:
        keep = "float32" if declared == np.dtype("float32") and raw != declared else "input"
        raise UserError(
            f"{store}'s restored image is {declared.name}, but storage.restored_dtype in {config} asks for "
            f"{wanted_dtype.name}; one image cannot hold both. Set storage.restored_dtype: {keep} for this "
            f"store, or leave out --config to follow the store"
        )


@app.command()
def replay(
    spool_dir: Path = typer.Argument(..., help="a spool folder (hook.spool_dir) or one run's folder in it"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config.yaml whose hook section to use"),
    endpoint: Optional[str] = typer.Option(None, help="daemon endpoint (overrides the config)"),
    timeout: Optional[float] = typer.Option(None, help="seconds to wait for the acks of each run (default: hook.close_timeout_s)"),
) -> None:
    """Send the frames a hook left in its spool (daemon down, hook crashed) to the daemon."""
    from lowdose.client import replay_spool

    if not spool_dir.is_dir():
        raise UserError(f"{spool_dir} is not a folder; give the hook's spool_dir (see `lowdose config`)")
    hook = _load(config).hook
    if endpoint:
        hook = hook.model_copy(update={"endpoint": _check_endpoint(endpoint)})
    con = out()
    with con.status(escape(f"replaying {spool_dir} to {hook.endpoint}…")):
        reports = replay_spool(spool_dir, hook, timeout=timeout)
    if not reports:
        con.print(escape(f"nothing to replay in {spool_dir}"))
        return
    for r in reports:
        left = f", {r.unacked} still in {r.spool_dir}" if r.unacked else ""
        con.print(escape(f"run {r.run}: {r.acked} of {r.frames} frames acked{left}"
                         f"{'' if r.finished else ' (run not finished on the daemon)'}"))
    if any(r.unacked for r in reports):
        raise typer.Exit(1)


@app.command("config")
def show_config(
    check: Optional[Path] = typer.Option(None, "--check", help="validate this config.yaml instead of printing"),
) -> None:
    """Print the documented default config.yaml, or validate one with --check."""
    from lowdose.daemon.config import default_config_text

    if check is not None:
        _load(check)
        out().print(escape(f"{check}: valid"))
        return
    sys.stdout.write(default_config_text())


@app.command()
def denoisers() -> None:
    """List the denoiser plug-ins installed (entry-point group lowdose.denoisers), and what `auto` picks here."""
    from lowdose.denoiser_list import list_denoisers

    device, picked, entries = list_denoisers()
    con = out()
    width = max(len(e.name) for e in entries) if entries else 0
    for e in entries:
        con.print(escape(f"{e.name:{width}s}  {e.device:4s}  {e.description}"), soft_wrap=True)
    con.print(escape(f"device here: {device}; auto picks {picked} (restore.denoiser: auto, demo --denoiser auto)"),
              soft_wrap=True)


@app.command()
def keys(
    directory: Path = typer.Argument(..., help="where to write the key pair"),
    name: str = typer.Option(..., help="key name, e.g. 'daemon' or the microscope's name"),
    force: bool = typer.Option(False, "--force", help="replace an existing pair of that name"),
) -> None:
    """Create a CURVE key pair (name.key public, name.key_secret secret, 0600) for encrypted tcp:// links."""
    from lowdose.keys import create_key_pair, folder_is_private

    try:
        public, secret = create_key_pair(directory, name, force=force)
    except ValueError as exc:
        raise UserError(f"--name: {exc}") from None
    con = out()
    con.print(escape(f"public key: {public} (give it to the other end)\n"
                     f"secret key: {secret} (mode 0600; keep it on this machine only)"))
    if not folder_is_private(directory):
        err().print(escape(f"warning: {directory} is open to other users; chmod 700 {directory}"), style="yellow")


def _mount_train() -> None:
    try:
        from lowdose.models.cli import train_app
    except ImportError:
        return
    app.add_typer(train_app, name="train")


_mount_train()


def _mount_adapt() -> None:
    try:
        from lowdose.models.adapt_cli import adapt_command
    except ImportError:
        return
    app.command("adapt")(adapt_command)


_mount_adapt()


if __name__ == "__main__":
    app()
