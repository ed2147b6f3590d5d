"""What `lowdose denoisers` says about each plug-in, and the check of a ``--denoiser`` name."""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class DenoiserEntry:
    name: str
    description: str
    device: str
    target: str  # the entry point, module:object


def _first_line(text: str | None) -> str:
    """The docstring's first line, its reST roles and literals as plain words."""
    lines = [line.strip() for line in (text or "").strip().splitlines()]
    if not lines:
        return ""
    return re.sub(r"(?::\w+:)?`{1,2}([^`]+)`{1,2}", r"\1", lines[0])


def _describe(obj) -> str:
    """The plug-in's docstring, else its module's: the first line only."""
    # __doc__, not inspect.getdoc: a class without its own docstring must not show its base's
    own = _first_line(getattr(obj, "__doc__", None))
    return own or _first_line(getattr(sys.modules.get(getattr(obj, "__module__", "")), "__doc__", None))


def _device_of(factory, here: str) -> str:
    # The daemon passes restore.device to every plug-in; one whose own default is
    # "cpu" (the classical ones) runs there whatever it is given.
    try:
        default = inspect.signature(factory).parameters["device"].default
    except (KeyError, TypeError, ValueError):
        return here
    return "cpu" if default == "cpu" else here


def list_denoisers() -> tuple[str, str, list[DenoiserEntry]]:
    """(device here, what ``auto`` picks here, one entry per installed plug-in)."""
    from lowdose.models.denoisers import resolve_auto
    from lowdose.plugins.denoisers.registry import available_denoisers, resolve_device

    device = resolve_device("auto")
    entries = []
    for name, ep in sorted(available_denoisers().items()):
        try:
            factory = ep.load()
        except Exception as exc:  # a broken third-party plug-in must not hide the others
            entries.append(DenoiserEntry(name, f"(cannot be loaded: {exc})", "-", ep.value))
            continue
        entries.append(DenoiserEntry(name, _describe(factory), _device_of(factory, device), ep.value))
    picked = resolve_auto(device)
    entries = [
        DenoiserEntry(e.name, f"the best shipped model that keeps up live on {device}: {picked} here",
                      e.device, e.target) if e.name == "auto" else e
        for e in entries
    ]
    return device, picked, entries


def check_denoiser_name(name: str, option: str = "--denoiser") -> None:
    """Refuse an unknown name before anything starts, naming the option it came from."""
    from lowdose.console import UserError
    from lowdose.plugins.denoisers.registry import available_denoisers

    known = sorted(available_denoisers())
    if name not in known:
        raise UserError(
            f"unknown denoiser {name!r} ({option}); installed: {', '.join(known) or 'none'}. "
            "`lowdose denoisers` describes each"
        )
