"""`lowdose acquire`: run a useq-schema MDA on a Micro-Manager configuration with the hook attached."""

from __future__ import annotations

import atexit
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lowdose.wire.hook_config import HookConfig
from lowdose.wire.keyfiles import check_secret_key
from lowdose.wire.protocol import RUN_ID_PATTERN


class AcquireError(RuntimeError):
    """The acquisition could not be set up; the message names the file and the fix."""


@dataclass(frozen=True)
class AcquireResult:
    """How the run went, from the hook's side and, when it answered, the daemon's."""

    run: str
    frames_expected: int
    report: Any  # FinishReport, or None when no frame was produced
    run_status: dict | None  # the daemon's status of this run (store path, restored so far)
    daemon_answered: bool = True  # False: no status came back, so run_status says nothing


ProgressCallback = Callable[[Any, int], None]  # (SenderCounters or None, frames expected)


def load_sequence(path: Path):
    import useq

    if not path.exists():
        raise AcquireError(f"sequence file {path} does not exist")
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise AcquireError(f"sequence file {path} must be .yaml, .yml or .json (a useq-schema MDASequence)")
    try:
        return useq.MDASequence.from_file(path)
    except Exception as exc:  # pydantic, yaml and json errors alike
        raise AcquireError(f"{path} is not a valid useq-schema MDASequence: {exc}") from None


def _load_core(mm_config: Path | None, adapters: Path | None):
    from pymmcore_plus import CMMCorePlus

    from lowdose.plugins.acquisition.pymmcore_plus_hook import release_core

    core = CMMCorePlus()
    atexit.register(release_core, core)
    try:
        if adapters is not None:
            core.setDeviceAdapterSearchPaths([str(adapters)])
        if mm_config is None:
            core.loadSystemConfiguration()  # pymmcore-plus: the DemoCamera MMConfig_demo.cfg
        else:
            if not mm_config.exists():
                raise AcquireError(f"Micro-Manager configuration {mm_config} does not exist")
            core.loadSystemConfiguration(str(mm_config))
    except AcquireError:
        release_core(core)
        raise
    except Exception as exc:
        release_core(core)
        raise AcquireError(
            f"cannot load the Micro-Manager configuration {mm_config or 'MMConfig_demo.cfg'}: {exc}. "
            "Check the file and --adapters (the folder with the mmgr_dal_* device adapters)."
        ) from None
    return core


def run_acquisition(
    sequence_path: Path,
    *,
    hook_cfg: HookConfig,
    mm_config: Path | None = None,
    adapters: Path | None = None,
    run_id: str | None = None,
    instrument: str = "microscope",
    on_progress: ProgressCallback | None = None,
) -> AcquireResult:
    """Load the hardware, run the MDA with the lowdose hook, wait for the daemon's acks."""
    from lowdose.plugins.acquisition.pymmcore_plus_hook import PymmcorePlusHook, release_core

    # Before the hardware: with a key others can read the hook would only spool.
    check_secret_key(hook_cfg.curve_client_secret_key)
    if run_id is not None and not RUN_ID_PATTERN.match(run_id):
        # caught here, or the MDA would run with a hook that cannot announce the run
        raise AcquireError(f"--run {run_id!r}: a run id is 1-128 letters, digits, '_', '.' or '-', "
                           "starting with a letter or digit (it names the store)")
    sequence = load_sequence(sequence_path)
    expected = sum(1 for _ in sequence.iter_events())
    core = _load_core(mm_config, adapters)
    run_id = run_id or time.strftime("run-%Y%m%d-%H%M%S")
    hook = PymmcorePlusHook(hook_cfg, run=run_id, instrument=instrument)
    try:
        report = _run_watched(core, sequence, hook, lambda: on_progress and on_progress(hook.counters(), expected))
    finally:
        release_core(core)
    answered, run_status = _daemon_view(hook_cfg.endpoint, run_id)
    return AcquireResult(run_id, expected, report, run_status, answered)


def _run_watched(core, sequence, hook, tick: Callable[[], Any], every_s: float = 0.1):
    """The MDA and the wait for acks in a worker thread, so that this one can show progress.

    Ctrl-C cancels the MDA; the frames already taken are still sent (or spooled).
    """
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            core.mda.run(sequence, output=hook)
            outcome["report"] = hook.report()
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="lowdose-acquire", daemon=True)
    worker.start()
    while worker.is_alive():
        try:
            tick()
            worker.join(every_s)
        except KeyboardInterrupt:
            core.mda.cancel()
    tick()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("report")


def _daemon_view(endpoint: str, run_id: str) -> tuple[bool, dict | None]:
    """(whether the daemon answered, its status of the run)."""
    from lowdose.daemon.client import DaemonUnreachable, query_status

    try:
        status = query_status(endpoint, timeout=3.0)
    except DaemonUnreachable:
        return False, None
    return True, next((r for r in status["runs"] if r["run"] == run_id), None)


def print_acquire_summary(console, result: AcquireResult, endpoint: str) -> None:
    """The run's summary, in the demo's form: what was acquired, what the daemon has, where the store is."""
    from rich.markup import escape

    from lowdose.console import hook_row, lag_text, restored_text, summary_table

    report, st = result.report, result.run_status
    rows = [("run", result.run), ("frames acquired", str(report.frames if report else 0))]
    if report is not None:
        confirmed = "yes" if report.finished else "no: not every frame reached it"
        rows += [hook_row(report), ("end confirmed by the daemon", confirmed)]
        if report.unacked or report.rejected:
            rows.append(("spool", f"{report.spool_dir}: `lowdose replay {report.spool_dir}` sends what is left"))
    if st is not None:
        rows += [
            ("raw frames written", str(st["frames_written"])),
            ("frames restored so far", restored_text(st)),
            ("restoration lag p50 / p95", lag_text(st.get("lag_p50_s"), st.get("lag_p95_s"))),
            ("state on the daemon", st["state"]),
            ("store", f"{st['store']}  (images: raw, restored)"),
        ]
    elif result.daemon_answered:
        rows.append(("store", f"none: the daemon at {endpoint} has no run {result.run}"))
    else:
        rows.append(("store", f"unknown: the daemon at {endpoint} did not answer a status request; "
                              f"look for {result.run}.ome.zarr in its storage.output_dir"))
    console.print(summary_table(f"lowdose acquire: {result.run}", rows))
    if st is not None and st["state"] != "finished":
        console.print(escape(f"follow the restoration: lowdose status --watch --endpoint {endpoint}"))
