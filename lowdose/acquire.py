"""`lowdose acquire`: run a useq-schema MDA on a Micro-Manager configuration with the hook attached."""

from __future__ import annotations

import atexit
import time
from pathlib import Path

from lowdose.wire.hook_config import HookConfig


class AcquireError(RuntimeError):
    """The acquisition could not be set up; the message names the file and the fix."""


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


def run_acquisition(
    sequence_path: Path,
    *,
    hook_cfg: HookConfig,
    mm_config: Path | None = None,
    adapters: Path | None = None,
    run_id: str | None = None,
    instrument: str = "microscope",
):
    """Load the hardware, run the MDA with the lowdose hook, wait for the daemon's acks."""
    from pymmcore_plus import CMMCorePlus

    from lowdose.plugins.acquisition.pymmcore_plus_hook import PymmcorePlusHook
    from lowdose.plugins.acquisition.pymmcore_plus_hook import release_core as close_core

    sequence = load_sequence(sequence_path)
    core = CMMCorePlus()
    atexit.register(close_core, core)
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
        raise
    except Exception as exc:
        raise AcquireError(
            f"cannot load the Micro-Manager configuration {mm_config or 'MMConfig_demo.cfg'}: {exc}. "
            "Check the file and --adapters (the folder with the mmgr_dal_* device adapters)."
        ) from None
    run_id = run_id or time.strftime("run-%Y%m%d-%H%M%S")
    hook = PymmcorePlusHook(hook_cfg, run=run_id, instrument=instrument)
    try:
        core.mda.run(sequence, output=hook)
        report = hook.report()
        return report if report is not None else hook.counters()
    finally:
        close_core(core)
