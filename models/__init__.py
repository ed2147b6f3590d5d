"""Learned restoration models of lowdose.

``from lowdose.models import load, available`` gives ready denoisers by name
(shipped weights, no download) or by checkpoint path. Importing this package
imports neither torch nor the training code until one of the names below is
used, so ``lowdose.models.simulate`` stays cheap for the simulated camera.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "load": "registry",
    "available": "registry",
    "default_live_model": "registry",
    "ModelNotFoundError": "registry",
    "CheckpointError": "checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
