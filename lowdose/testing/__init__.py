"""Conformance suites that ship with lowdose, for lowdose's own plug-ins and third parties' alike.

* :class:`DenoiserTests`: what every denoiser plug-in must do (``lowdose.testing.denoisers``);
* :class:`HookTests`: what every acquisition hook must do against a real daemon
  (``lowdose.testing.hooks``).

Subclass one in your own test module (``class TestMine(DenoiserTests): ...``); the bases have no
``Test`` prefix, so pytest does not collect them on their own. Each is imported on first use, so
a denoiser's tests do not import the daemon.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import pytest

# Plain asserts in an installed package give bare AssertionErrors; rewriting them (before the
# modules are imported) gives the suites' failures pytest's usual detail.
pytest.register_assert_rewrite("lowdose.testing.denoisers", "lowdose.testing.hooks")

_LAZY = {
    "DenoiserTests": "lowdose.testing.denoisers",
    "HookTests": "lowdose.testing.hooks",
    "Acquisition": "lowdose.testing.hooks",
    "FinishedRun": "lowdose.testing.hooks",
}

__all__ = ["Acquisition", "DenoiserTests", "FinishedRun", "HookTests"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
