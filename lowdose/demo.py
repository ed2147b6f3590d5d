"""`lowdose demo`: the whole service on a simulated microscope, with nothing to set up.

A real MMCore (pymmcore-plus) drives a simulated low-light camera whose
noise-free truth is known; the pymmcore-plus hook streams every frame over
ZeroMQ to a lowdose daemon running in another process, which writes raw and
restored frames to one OME-Zarr store. At the end: a summary (counts, speed,
lag, PSNR of raw and restored against the truth) and a picture raw | restored |
truth saved next to the store.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lowdose.console import hook_row, lag_text, restored_text, summary_table

STORE_SUFFIX = ".ome.zarr"


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why (and where the daemon's log is)."""


@dataclass(frozen=True)
class DemoOptions:
    frames: int = 60
    output: Path = Path("lowdose-demo.ome.zarr")
    size: int = 512
    peak_photons: float = 8.0
    denoiser: str = "auto"
    policy: str = "latest"
    interval_ms: float = 0.0
    exposure_ms: float = 10.0
    overwrite: bool = False
    offset: float = 100.0
    gain: float = 1.0
    read_noise: float = 1.5
    seed: int = 0
    dashboard_port: int = 5573  # 0: no dashboard
    hold_s: float = 0.0  # keep the daemon (and its dashboard) up this long after the run


@dataclass(frozen=True)
class DemoResult:
    store: Path
    picture: Path
    frames_acquired: int
    frames_written: int
    frames_restored: int
    acquisition_fps: float
    lag_p50_s: float | None
    lag_p95_s: float | None
    psnr_raw_db: float
    psnr_restored_db: float
    denoiser: str
    daemon_log: Path | None = None


def _store_paths(output: Path) -> tuple[Path, str]:
    output = output.expanduser().resolve()
    if not output.name.endswith(STORE_SUFFIX) or output.name == STORE_SUFFIX:
        raise DemoError(f"--output must name a store ending in {STORE_SUFFIX} (got {output.name!r})")
    return output.parent, output.name[: -len(STORE_SUFFIX)]


class DaemonProcess:
    """A `lowdose serve` child process; stopped with SIGTERM as a service manager would."""

    def __init__(self, config_path: Path, log_path: Path, endpoint: str):
        self.log_path = log_path
        self.endpoint = endpoint
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lowdose.cli", "serve", "--config", str(config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        from lowdose.daemon.client import DaemonUnreachable, query_status

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited at start-up:\n{self.log_tail()}")
            try:
                query_status(self.endpoint, timeout=0.5)
                return
            except DaemonUnreachable:
                time.sleep(0.2)
        raise RuntimeError(f"the daemon did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])

    def stop(self, timeout: float = 120.0, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def _sim_frame_number(meta, camera) -> int:
    """Which simulated exposure this frame is: from the camera metadata, else the camera's counter."""
    cam_meta = (meta or {}).get("camera_metadata") or {}
    if "sim_frame" in cam_meta:
        return int(cam_meta["sim_frame"])
    return int(camera.last_frame)


def _resolve_denoiser(name: str) -> str:
    from lowdose.denoiser_list import check_denoiser_name

    check_denoiser_name(name)  # here, not as the daemon's restore.denoiser: the user typed --denoiser
    if name != "auto":
        return name
    from lowdose.plugins.denoisers.registry import resolve_device
    from lowdose.models.denoisers import resolve_auto

    return resolve_auto(resolve_device("auto"))


@dataclass
class _Acquired:
    """What the acquisition side saw: arrival times and which simulated exposure each t is."""

    stamps: list[float] = field(default_factory=list)
    sim_frames: dict[int, int] = field(default_factory=dict)


def run_demo(opts: DemoOptions, console: Console | None = None) -> DemoResult:
    from lowdose.plugins.acquisition.sim_camera import close_core, make_sim_core

    console = console or Console()
    denoiser = _resolve_denoiser(opts.denoiser)
    store_path = _fresh_store_path(opts)
    log_path = store_path.with_name(store_path.name[: -len(STORE_SUFFIX)] + ".daemon.log")
    work = Path(tempfile.mkdtemp(prefix="lowdose-demo-"))
    config_path, cfg = _demo_config(work, store_path.parent, denoiser, opts.policy, opts.dashboard_port)

    console.print("[bold]lowdose demo[/bold]: " + escape(
        f"{opts.frames} frames of {opts.size}x{opts.size}, {opts.peak_photons:g} photons/pixel at the brightest, "
        f"denoiser {denoiser}, policy {opts.policy}"))
    daemon = DaemonProcess(config_path, work / "daemon.log", cfg.hook.endpoint)
    atexit.register(daemon.stop)
    core = None
    try:
        with console.status("starting the daemon (loading the model)…"):
            _wait_ready(daemon, log_path)
            core, camera = make_sim_core(
                (opts.size, opts.size), peak_photons=opts.peak_photons, offset=opts.offset, gain=opts.gain,
                read_noise=opts.read_noise, seed=opts.seed, exposure_ms=opts.exposure_ms,
            )
        atexit.register(close_core, core)
        _announce_dashboard(console, opts.dashboard_port, log_path)
        acquired, report, run_status = _acquire_and_restore(core, camera, cfg, store_path, opts, console, daemon)
        _hold(console, opts.hold_s)
    finally:
        code = daemon.stop()
        if core is not None:
            close_core(core)
        spool = _tidy_work(work, daemon.log_path, log_path)
    if code != 0:
        console.print(escape(f"the daemon exited with {code}; log: {log_path}"), style="yellow")
    if spool is not None:
        console.print(escape(f"frames the daemon did not acknowledge are kept in {spool}: "
                             f"`lowdose replay {spool}` sends them"), style="yellow")
    result = _score(store_path, acquired, camera, opts, denoiser, run_status)
    result = replace(result, daemon_log=log_path)
    _print_summary(console, result, run_status, report)
    return result


def _announce_dashboard(console: Console, port: int, log_path: Path) -> None:
    """Print the dashboard's address, once it answers (a taken port leaves the demo without one)."""
    if not port:
        return
    import urllib.request

    url = f"http://127.0.0.1:{port}/"
    try:
        urllib.request.urlopen(url + "api/daemon", timeout=5).close()
    except OSError as exc:
        console.print(escape(f"dashboard: none ({exc}); port {port} may be taken: --dashboard-port; "
                             f"the daemon's log: {log_path}"), style="yellow")
        return
    console.print(escape(f"dashboard: {url}"))


def _hold(console: Console, seconds: float) -> None:
    if seconds <= 0:
        return
    console.print(escape(f"holding the daemon and its dashboard for {seconds:g} s (Ctrl-C ends it)"))
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        pass


def _wait_ready(daemon: DaemonProcess, log_path: Path) -> None:
    try:
        daemon.wait_ready()
    except RuntimeError as exc:
        raise DemoError(f"{exc}\n(the daemon's log: {log_path})") from None


def _tidy_work(work: Path, log: Path, keep_log_at: Path) -> Path | None:
    """Move the daemon's log next to the store and remove the demo's private folder.

    Spooled frames (never acknowledged) are kept with their folder; returns it then.
    """
    if log.exists():
        shutil.move(str(log), keep_log_at)
    spool = work / "spool"
    keep = spool.is_dir() and any(p.is_file() for p in spool.rglob("*"))
    for child in work.iterdir():
        if keep and child == spool:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    if keep:
        return spool
    work.rmdir()
    return None


def _fresh_store_path(opts: DemoOptions) -> Path:
    output_dir, run_id = _store_paths(opts.output)
    store_path = output_dir / f"{run_id}{STORE_SUFFIX}"
    if store_path.exists():
        if not opts.overwrite:
            raise FileExistsError(f"{store_path} exists; pass --overwrite to replace it or --output to choose another")
        import shutil

        shutil.rmtree(store_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    return store_path


def _demo_config(work: Path, output_dir: Path, denoiser: str, policy: str, dashboard_port: int = 0):
    """A config.yaml for a private daemon on ipc:// sockets in ``work`` (no port to collide with)."""
    from lowdose.daemon.config import load_config

    endpoint = f"ipc://{work}/daemon.sock"
    config = {
        "server": {"endpoints": [endpoint], "preview_endpoint": f"ipc://{work}/preview.sock"},
        "storage": {"output_dir": str(output_dir)},
        "restore": {"denoiser": denoiser, "policy": policy},
        "hook": {"endpoint": endpoint, "spool_dir": str(work / "spool")},
        "dashboard": {"enabled": bool(dashboard_port), "port": dashboard_port or 5573},
    }
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return config_path, load_config(config_path)


def _acquire_and_restore(core, camera, cfg, store_path: Path, opts: DemoOptions, console: Console,
                         daemon: DaemonProcess):
    """Run the MDA with the hook attached, then wait until the daemon has restored every frame."""
    import useq

    from lowdose.daemon.client import wait_run_finished
    from lowdose.plugins.acquisition.pymmcore_plus_hook import PymmcorePlusHook

    run_id = store_path.name[: -len(STORE_SUFFIX)]
    acquired = _Acquired()
    hook = PymmcorePlusHook(cfg.hook, run=run_id, instrument="lowdose demo (simulated low-light camera)",
                            camera_offset=opts.offset, camera_gain=opts.gain)
    sequence = useq.MDASequence(time_plan={"interval": opts.interval_ms / 1000.0, "loops": opts.frames})
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        acq = progress.add_task("acquiring", total=opts.frames)

        def on_frame(img, event, meta):
            acquired.stamps.append(time.perf_counter())
            acquired.sim_frames[event.index.get("t", 0)] = _sim_frame_number(meta, camera)
            progress.advance(acq)

        core.mda.events.frameReady.connect(on_frame)
        core.mda.run(sequence, output=hook)
        core.mda.events.frameReady.disconnect(on_frame)
        report = hook.report()
        rest = progress.add_task("restoring (live + backfill)", total=opts.frames)

        def show(run_status: dict) -> None:
            done = run_status["frames_restored_live"] + run_status["frames_restored_backfill"]
            progress.update(rest, completed=min(done, opts.frames))

        try:
            run_status = wait_run_finished(cfg.hook.endpoint, run_id, max(600.0, opts.frames * 5.0), on_status=show)
        except TimeoutError as exc:
            raise DemoError(f"{exc}; daemon log:\n{daemon.log_tail()}") from None
    return acquired, report, run_status


def _score(store_path: Path, acquired: _Acquired, camera, opts: DemoOptions, denoiser: str,
           run_status: dict) -> DemoResult:
    """PSNR of raw and restored against the simulator's noise-free frames, and the picture."""
    import zarr

    from lowdose.models.metrics import psnr

    root = zarr.open_group(str(store_path), mode="r")
    raw, restored = root["raw/0"], root["restored/0"]
    stamps, sim_frames = acquired.stamps, acquired.sim_frames
    acquisition_fps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    ts = sorted(sim_frames)
    sample = ts if len(ts) <= 100 else [ts[i] for i in np.linspace(0, len(ts) - 1, 100).astype(int)]
    p_raw, p_res = [], []
    for t in sample:
        truth = camera.expected_adu_for(sim_frames[t])
        data_range = float(truth.max() - opts.offset)
        p_raw.append(psnr(truth, raw[t, 0, 0], data_range))
        p_res.append(psnr(truth, restored[t, 0, 0], data_range))
    t_show = ts[len(ts) // 2]
    picture = store_path.parent / f"{store_path.name[: -len(STORE_SUFFIX)]}.png"
    save_side_by_side(
        picture,
        [raw[t_show, 0, 0], restored[t_show, 0, 0], camera.expected_adu_for(sim_frames[t_show])],
        ["raw (low dose)", f"restored ({denoiser})", "truth (noise-free)"],
    )
    from lowdose.run_plot import add_timeline

    add_timeline(picture, store_path)  # the run's throughput and lag beside the frames
    return DemoResult(
        store=store_path,
        picture=picture,
        frames_acquired=len(stamps),
        frames_written=int(raw.shape[0]),
        frames_restored=int(run_status.get("frames_restored_live", 0) + run_status.get("frames_restored_backfill", 0)),
        acquisition_fps=acquisition_fps,
        lag_p50_s=run_status.get("lag_p50_s"),
        lag_p95_s=run_status.get("lag_p95_s"),
        psnr_raw_db=float(np.mean(p_raw)),
        psnr_restored_db=float(np.mean(p_res)),
        denoiser=denoiser,
    )


def _print_summary(console: Console, r: DemoResult, run_status: dict, report) -> None:
    rows = [
        ("frames acquired", str(r.frames_acquired)),
        ("raw frames written", f"{r.frames_written} (lost: {r.frames_acquired - r.frames_written})"),
        ("frames restored", restored_text(run_status)),
        ("acquisition speed", f"{r.acquisition_fps:.1f} frames/s"),
        ("restoration lag p50 / p95", lag_text(r.lag_p50_s, r.lag_p95_s)),
        ("PSNR raw vs truth", f"{r.psnr_raw_db:.2f} dB"),
        ("PSNR restored vs truth", f"{r.psnr_restored_db:.2f} dB ({r.psnr_restored_db - r.psnr_raw_db:+.2f} dB)"),
        ("denoiser", r.denoiser),
    ]
    if report is not None:
        rows.append(hook_row(report))
    rows += [("store", f"{r.store}  (images: raw, restored)"), ("picture", str(r.picture))]
    if r.daemon_log is not None:
        rows.append(("daemon log", str(r.daemon_log)))
    console.print(summary_table("lowdose demo: summary", rows))
    store = escape(str(r.store))
    console.print(f"open it: [cyan]lowdose view {store}[/cyan] (napari, lowdose[napari])  "
                  f"or  [cyan]zarr.open_group('{store}')['restored/0'][:][/cyan]")


def save_side_by_side(path: Path, images: list[np.ndarray], labels: list[str]) -> None:
    """One PNG with the images next to each other, on the same contrast window (that of the last)."""
    from PIL import Image, ImageDraw

    ref = images[-1].astype(np.float32)
    lo, hi = np.percentile(ref, [0.5, 99.8])
    tiles = []
    for img, label in zip(images, labels):
        scaled = np.clip((img.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
        tile = Image.fromarray((scaled * 255).astype(np.uint8)).convert("RGB")
        draw = ImageDraw.Draw(tile)
        draw.rectangle([0, 0, 8 + 7 * len(label), 18], fill=(0, 0, 0))
        draw.text((4, 3), label, fill=(255, 255, 0))
        tiles.append(tile)
    gap = 6
    w = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    canvas = Image.new("RGB", (w, max(t.height for t in tiles)), (255, 255, 255))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, 0))
        x += t.width + gap
    canvas.save(path)


if __name__ == "__main__":  # pragma: no cover
    run_demo(DemoOptions(frames=int(os.environ.get("LOWDOSE_DEMO_FRAMES", "30"))))
