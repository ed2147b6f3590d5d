"""The public, stable API for acquisition scripts and third-party clients.

Import from here, not from the modules behind it: those may move, these names stay::

    from lowdose.client import PymmcorePlusHook, load_config
    hook = PymmcorePlusHook(load_config("config.yaml").hook, run="cells-1")

* hooks: :class:`PymmcorePlusHook`, :class:`PycromanagerHook` (imported on first use,
  so a script that needs one does not pay for the other's dependencies);
* the sender every hook uses: :class:`FrameSender`, :func:`replay_spool`, :class:`FinishReport`,
  :class:`SenderCounters`, :func:`make_run_id`;
* configuration: :func:`load_config`, :class:`HookConfig`, :class:`ConfigError`;
* the wire protocol's messages and codes (:mod:`lowdose.wire`), for clients in Python that
  speak it directly.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from lowdose.daemon.config import ConfigError, load_config
from lowdose.wire import (
    Ack,
    End,
    Error,
    ErrorCode,
    Frame,
    FrameIndex,
    Heartbeat,
    HookConfig,
    ProtocolError,
    Start,
    decode,
    encode,
    encode_frame,
)

_LAZY = {
    "FrameSender": "lowdose.plugins.acquisition.sender",
    "FinishReport": "lowdose.plugins.acquisition.sender",
    "SenderCounters": "lowdose.plugins.acquisition.sender",
    "replay_spool": "lowdose.plugins.acquisition.sender",
    "make_run_id": "lowdose.plugins.acquisition.sender",
    "PymmcorePlusHook": "lowdose.plugins.acquisition.pymmcore_plus_hook",
    "PycromanagerHook": "lowdose.plugins.acquisition.pycromanager_hook",
}

__all__ = sorted(
    [
        "Ack", "ConfigError", "End", "Error", "ErrorCode", "Frame", "FrameIndex", "Heartbeat",
        "HookConfig", "ProtocolError", "Start", "decode", "encode", "encode_frame", "load_config",
        *_LAZY,
    ]
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
