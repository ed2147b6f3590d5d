"""What the ``lowdose`` command prints, and how a user's mistake becomes one line instead of a traceback.

Every command runs inside :class:`LowdoseGroup`. A known user error (a bad
config, an unknown denoiser, no daemon at the endpoint, a store that exists...)
is printed as one red line and exits with 2; anything else is a bug and keeps
its traceback. ``lowdose --debug`` shows the traceback for user errors too.

Text from users and libraries is escaped before rich sees it: a YAML message
``expected ',' or ']'`` is not markup.
"""

from __future__ import annotations

import sys

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake on the command line; the message names it and the fix."""


# By module and name, so that checking an error imports nothing: an exception
# can only be an instance of a class whose module is already loaded.
_USER_ERRORS = (
    ("lowdose.console", "UserError"),
    ("lowdose.daemon.config", "ConfigError"),
    ("lowdose.daemon.client", "DaemonUnreachable"),
    ("lowdose.daemon.server", "DaemonError"),
    ("lowdose.daemon.store", "StoreError"),
    ("lowdose.plugins.denoisers.interface", "DenoiserError"),
    ("lowdose.acquire", "AcquireError"),
    ("lowdose.demo", "DemoError"),
    ("lowdose.wire.keyfiles", "KeyfileError"),
    ("builtins", "FileExistsError"),
)


def is_user_error(exc: BaseException) -> bool:
    for module, name in _USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def out() -> Console:
    """A console on stdout, made when asked: it sees the terminal (and COLUMNS) of this run."""
    return Console()


def err() -> Console:
    return Console(stderr=True)


def print_error(message: str) -> None:
    err().print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


class LowdoseGroup(TyperGroup):
    """The root command: the one place where user errors become a message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug") or not is_user_error(exc):
                raise
            print_error(str(exc) or type(exc).__name__)
            raise typer.Exit(EXIT_USER_ERROR) from None


def summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    """Two columns, label and value; values are plain text, never markup."""
    table = Table(title=escape(title), show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(escape(label), escape(value))
    return table


def hook_row(report) -> tuple[str, str]:
    """The hook's side of a run, from its :class:`FinishReport`."""
    c = report.counters
    text = f"sent {c.sent}, acked {report.acked}, spooled {c.spooled}, left unacked {report.unacked}"
    if report.rejected:
        text += f", rejected {report.rejected}"
    return "hook", text


def restored_text(run_status: dict) -> str:
    live = run_status.get("frames_restored_live", 0)
    backfill = run_status.get("frames_restored_backfill", 0)
    return f"{live + backfill} ({live} live, {backfill} by backfill)"


def lag_text(p50: float | None, p95: float | None) -> str:
    return "-" if p50 is None else f"{p50 * 1000:.0f} ms / {(p95 or p50) * 1000:.0f} ms"
