"""`lowdose status`: a daemon's runs as a table, once or live (``--watch``)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text


def header(st: dict) -> Text:
    den = st.get("denoiser") or {}
    return Text(
        f"daemon {st['daemon']} (lowdose {st['version']}), up {st['uptime_s']:.0f} s, "
        f"denoiser {den.get('name')} on {den.get('device')}, policy {st['policy']}, "
        f"write queue {st['write_queue']}, restore queue {st['restore_queue']}"
    )


def runs_table(runs: list[dict]) -> Table:
    table = Table()
    # run ids are what users copy: folded over lines rather than cut with an ellipsis
    table.add_column("run", overflow="fold")
    table.add_column("instrument")
    table.add_column("state")
    for name in ("received", "written"):
        table.add_column(name, justify="right")
    table.add_column("restored\nlive + backfill", justify="right")
    for name in ("skipped", "queue", "fps", "lag p50/p95 s"):
        table.add_column(name, justify="right")
    for r in runs:
        lag = "-" if r["lag_p50_s"] is None else f"{r['lag_p50_s']:.2f}/{r['lag_p95_s']:.2f}"
        cells = [
            r["run"], r["instrument"], r["state"], str(r["frames_received"]), str(r["frames_written"]),
            f"{r['frames_restored_live']} + {r['frames_restored_backfill']}", str(r["frames_skipped"]),
            str(r["restore_queue"]), "-" if r["fps"] is None else f"{r['fps']:.1f}", lag,
        ]
        table.add_row(*(escape(c) for c in cells))
    return table


def no_runs(endpoint: str) -> Text:
    return Text(f"no runs yet: the daemon is waiting for a microscope to connect to {endpoint}", style="dim")


def store_lines(runs: list[dict], omitted: int = 0) -> list[Text]:
    """Store paths under the table, whole: a table column would cut them to fit the terminal."""
    lines = [Text(f"store of {r['run']}: {r['store']}") for r in runs]
    if omitted:
        lines.append(Text(f"{omitted} older finished runs not shown (the reply keeps within its size limit); "
                          "their stores are in the daemon's storage.output_dir", style="dim"))
    return lines


def spool_lines(spools: list, spool_dir: Path) -> list[Text]:
    """One line per run spool with frames in it: how many, why, and the command that sends them."""
    lines = []
    for s in spools:
        age = "" if s.newest_age_s is None else f", newest {_age(s.newest_age_s)} old"
        lines.append(Text(
            f"spool of {s.run}: {s.pending} frames waiting ({s.bytes / 2**20:.1f} MiB{age}) in {s.dir}: "
            f"{s.why()}. Send them with `lowdose replay {spool_dir}`.",
            style="yellow",
        ))
    return lines


def spool_json(s) -> dict:
    return {"run": s.run, "dir": str(s.dir), "pending": s.pending, "rejected": s.rejected, "bytes": s.bytes,
            "newest_age_s": s.newest_age_s, "ended": s.ended, "why": s.why()}


def print_spools(console: Console, spools: list, spool_dir: Path) -> None:
    for line in spool_lines(spools, spool_dir):
        console.print(line, soft_wrap=True)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def view(st: dict, endpoint: str) -> Group:
    runs = st["runs"]
    if not runs:
        return Group(header(st), no_runs(endpoint))
    return Group(header(st), runs_table(runs), *store_lines(runs, st.get("runs_omitted", 0)))


def print_once(console: Console, st: dict, endpoint: str) -> None:
    runs = st["runs"]
    console.print(header(st), soft_wrap=True)
    if not runs:
        console.print(no_runs(endpoint), soft_wrap=True)
        return
    console.print(runs_table(runs))
    for line in store_lines(runs, st.get("runs_omitted", 0)):
        console.print(line, soft_wrap=True)  # soft: the terminal wraps it, the path stays one copyable line


def watch(console: Console, endpoint: str, *, timeout: float, interval: float, count: int | None,
          spool_dir: Path | None = None) -> None:
    """Refresh every ``interval`` s until Ctrl-C (or ``count`` refreshes); an absent daemon is shown, not fatal."""
    from lowdose.daemon.client import DaemonUnreachable, query_status
    from lowdose.plugins.acquisition.spool import summarize

    done = 0
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while count is None or done < count:
                try:
                    body = view(query_status(endpoint, timeout=timeout), endpoint)
                except DaemonUnreachable as exc:
                    body = Group(Text(f"{exc} (still trying)", style="yellow"))
                if spool_dir is not None:
                    body = Group(body, *spool_lines(summarize(spool_dir), spool_dir))
                footer = Text(f"{time.strftime('%H:%M:%S')}: refreshed every {interval:g} s; Ctrl-C to stop",
                              style="dim")
                live.update(Group(body, footer), refresh=True)
                done += 1
                if count is None or done < count:
                    time.sleep(interval)
    except KeyboardInterrupt:
        pass  # the way to stop watching, not an error
