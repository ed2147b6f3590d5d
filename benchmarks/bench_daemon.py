"""A `lowdose serve` child process for the benchmarks: one ipc:// endpoint, no preview, fifo.

The fuzzer, the long run and the memory benchmark measure the daemon as a service manager runs
it (its own process, its own RSS), each with a few settings of its own on top of these.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lowdose.daemon.config import LowdoseConfig, load_config
from lowdose.demo import DaemonProcess


def start_daemon(tmp: Path, *, denoiser: str = "identity", **storage) -> tuple[LowdoseConfig, DaemonProcess]:
    """Write ``tmp/config.yaml`` (stores under ``tmp/data``, spool under ``tmp/spool``) and start the
    daemon on it; the caller waits with ``wait_ready()`` and stops it with ``stop()``."""
    endpoint = f"ipc://{tmp}/d.sock"
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "server": {"endpoints": [endpoint], "preview_endpoint": None},
        "storage": {"output_dir": str(tmp / "data"), **storage},
        "restore": {"denoiser": denoiser, "policy": "fifo"},
        "hook": {"endpoint": endpoint, "spool_dir": str(tmp / "spool")},
    }))
    return load_config(cfg_path), DaemonProcess(cfg_path, tmp / "daemon.log", endpoint)
