"""The daemon's status reply: what `lowdose status` and dashboards show, bounded in size."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from lowdose import __version__

if TYPE_CHECKING:
    from .server import Daemon

# A status reply must stay within the header limit the daemon imposes on others (1 MiB) whatever
# the number of runs: half of it for runs leaves room for the rest and for JSON's overhead.
STATUS_RUNS_BUDGET = 512 * 1024


def fit_runs(runs: list[dict], budget_bytes: int) -> tuple[list[dict], int]:
    """The runs that fit in ``budget_bytes`` of JSON, in their order, and how many were left out.

    Unfinished runs go in first (someone is acquiring them), then finished ones newest first: on a
    daemon with thousands of runs, the oldest finished records are the ones not shown."""
    order = sorted(range(len(runs)), key=lambda i: (runs[i]["state"] == "finished", -i))
    kept, used = set(), 0
    for i in order:
        size = len(json.dumps(runs[i])) + 2
        if used + size > budget_bytes:
            break
        kept.add(i)
        used += size
    return [r for i, r in enumerate(runs) if i in kept], len(runs) - len(kept)


def status_reply(d: Daemon) -> dict:
    runs, omitted = fit_runs([
        state.snapshot(restore_queue=d.scheduler.pending(state.run),
                       frames_skipped=d.scheduler.skipped(state.run)).as_dict()
        for state in d.runs.all()
    ], STATUS_RUNS_BUDGET)
    info = d.restore_loop.denoiser.info if d.restore_loop and d.restore_loop.denoiser else None
    return {
        "daemon": d.id,
        "version": __version__,
        "uptime_s": time.time() - d.started_at,
        "endpoints": d.cfg.server.endpoints,
        "denoiser": None if info is None else {"name": info.name, "version": info.version, "device": info.device},
        "policy": d.cfg.restore.policy,
        "write_queue": d.write_queue_frames(),
        "restore_queue": d.scheduler.pending(),
        "runs": runs,
        "runs_omitted": omitted,
    }
