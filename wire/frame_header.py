"""A ``frame`` message's header, encoded once per frame, beside the :class:`Frame` schema it mirrors.

Building the pydantic :class:`~lowdose.wire.protocol.Frame` for every camera frame costs more than
the rest of handling it, so the common case packs the same msgpack map by hand. This module lives in
``wire/`` rather than in the hook because its output must decode to exactly what
``encode(Frame(...))`` gives: a field added to or renamed in :class:`Frame` has to change here too,
and ``tests/test_frame_header.py`` fails until it does (rule 5 of ``docs/design.md``: the daemon
validates every header, so a drifting fast path would get every frame refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from .jsonsafe import jsonable
from .protocol import (
    FRAME_DTYPES,
    MAX_CHANNELS,
    MAX_CZ,
    MAX_FRAME_SIDE,
    MAX_POSITIONS,
    MAX_T,
    MAX_Z,
    Frame,
    FrameIndex,
    encode,
    freeform_problem,
)

_INDEX_KEYS = frozenset("tpcz")
_INDEX_LIMITS = {"t": MAX_T, "p": MAX_POSITIONS, "c": MAX_CHANNELS, "z": MAX_Z}


@dataclass(slots=True)
class FrameFields:
    """One frame as a hook received it: references only, nothing checked or converted yet.

    The acquisition thread builds one per frame and must not pay for validation (rule 1), so every
    field is whatever the caller passed; :func:`encode_frame_header` makes a header of it later, on
    the sender's thread.
    """

    seq: int
    pixels: np.ndarray
    index: Any  # FrameIndex, a {t, p, c, z} dict, or None
    timestamp: float
    elapsed_ms: float | None
    exposure_ms: float | None
    metadata: Any  # a dict, or None


def encode_frame_header(run: str, fields: FrameFields) -> bytes:
    """``encode(Frame(...))[1]`` for ``fields``; raises (ValueError, pydantic's ValidationError)
    when the frame cannot be carried by the protocol at all (a 3-D array, an unknown dtype)."""
    fast = fast_frame_header(run, fields)
    return fast if fast is not None else validated_frame_header(run, fields)


def validated_frame_header(run: str, fields: FrameFields) -> bytes:
    """The header through the :class:`Frame` model, which says precisely what is wrong."""
    index = fields.index
    if index is None:
        index = FrameIndex()
    elif not isinstance(index, FrameIndex):
        index = FrameIndex(**index)
    metadata = sendable_metadata(fields.metadata)
    msg = Frame(
        run=run,
        seq=fields.seq,
        index=index,
        shape=tuple(fields.pixels.shape),  # type: ignore[arg-type]
        dtype=str(fields.pixels.dtype),
        timestamp=fields.timestamp,
        elapsed_ms=fields.elapsed_ms,
        exposure_ms=fields.exposure_ms,
        metadata=metadata,
    )
    try:
        return encode(msg)[1]
    except (TypeError, ValueError, msgpack.PackException):
        # metadata that msgpack cannot carry: keep the frame, stringify the rest
        return encode(msg.model_copy(update={"metadata": sendable_metadata(jsonable(metadata))}))[1]


def sendable_metadata(metadata: Any) -> dict:
    """``metadata`` within the protocol's free-form bounds, which the daemon would otherwise refuse with
    the whole frame: the pixels matter more than their metadata (rule 2), so too deep a map is cut to
    ``jsonable``'s depth, and one still too large is replaced by a note saying why."""
    metadata = metadata if metadata is not None else {}
    if type(metadata) is not dict or freeform_problem(metadata) is None:  # not a map: Frame says so
        return metadata
    cut = jsonable(metadata)
    problem = freeform_problem(cut)
    return cut if problem is None else {"lowdose_metadata_dropped": f"metadata over the protocol's bounds: {problem}"}


def fast_frame_header(run: str, fields: FrameFields) -> bytes | None:
    """``encode(Frame(...))[1]`` without building the model, or None when unsure.

    Only plain, obviously valid frames take this path (a 2-D array of a protocol dtype, a dict
    index of non-negative ints, msgpack-able metadata); anything else returns None and goes
    through :func:`validated_frame_header`. The keys are in :class:`Frame`'s field order, so the
    bytes equal the model's.
    """
    pixels = fields.pixels
    shape = pixels.shape
    dtype = pixels.dtype.name
    if len(shape) != 2 or dtype not in FRAME_DTYPES or not (
        0 < shape[0] <= MAX_FRAME_SIDE and 0 < shape[1] <= MAX_FRAME_SIDE
    ):
        return None
    index = fields.index
    if index is None:
        index = {}
    elif isinstance(index, FrameIndex):
        index = index.model_dump()
    if type(index) is not dict or not _INDEX_KEYS.issuperset(index):
        return None
    for k, v in index.items():
        if type(v) is not int or not 0 <= v < _INDEX_LIMITS[k]:
            return None
    if (index.get("c", 0) + 1) * (index.get("z", 0) + 1) > MAX_CZ:
        return None
    metadata = fields.metadata if fields.metadata is not None else {}
    # the daemon refuses what the model refuses (rule 5): only metadata within its bounds goes fast
    if type(metadata) is not dict or freeform_problem(metadata) is not None:
        return None
    header = {
        "kind": "frame",
        "run": run,
        "seq": fields.seq,
        "index": {"t": index.get("t", 0), "p": index.get("p", 0), "c": index.get("c", 0), "z": index.get("z", 0)},
        "shape": [shape[0], shape[1]],
        "dtype": dtype,
        "timestamp": float(fields.timestamp),
        "elapsed_ms": None if fields.elapsed_ms is None else float(fields.elapsed_ms),
        "exposure_ms": None if fields.exposure_ms is None else float(fields.exposure_ms),
        "metadata": metadata,
    }
    try:
        return msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, msgpack.PackException):
        header["metadata"] = jsonable(metadata)
        if freeform_problem(header["metadata"]) is not None:
            return None
        return msgpack.packb(header, use_bin_type=True)
