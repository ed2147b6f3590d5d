"""Free-form metadata made safe for msgpack and JSON, from either end of the wire.

Camera and MDA metadata arrive as arbitrary Python objects (numpy scalars, pydantic
models, NaN exposure times, tuples, nested dicts). Both the hook (before sending) and
the store (before writing JSON) pass them through :func:`jsonable`, so the two ends
agree on what a value becomes. Depth is bounded: a hostile or cyclic structure
becomes a string at ``max_depth`` instead of exhausting the interpreter's stack.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MAX_DEPTH = 16
_SMALL_ARRAY = 64  # elements; larger arrays are summarised as a string, never inlined


def jsonable(value: Any, max_depth: int = MAX_DEPTH) -> Any:
    """A JSON-clean copy of ``value``: containers kept, NaN/inf as ``None``, unknown objects as strings."""
    return _clean(value, max_depth)


def _clean(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if depth <= 0:
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v, depth - 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v, depth - 1) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item(), depth - 1)
    if isinstance(value, np.ndarray) and value.size <= _SMALL_ARRAY:
        return _clean(value.tolist(), depth - 1)
    if hasattr(value, "model_dump"):
        try:
            return _clean(value.model_dump(mode="json"), depth - 1)
        except Exception:  # a model that cannot dump itself is still metadata worth a string
            pass
    return str(value)
