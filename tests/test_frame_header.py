"""The hand-packed frame header (wire/frame_header.py) against the Frame model it mirrors."""

from __future__ import annotations

import numpy as np
import pytest

from lowdose.wire.frame_header import FrameFields as _Item
from lowdose.wire.frame_header import encode_frame_header, validated_frame_header
from lowdose.wire.frame_header import fast_frame_header as _fast_frame_header
from lowdose.wire.protocol import TAG, Frame, FrameIndex, decode, encode

SHAPE = (32, 48)


def _frame(seq: int) -> np.ndarray:
    return np.random.default_rng(seq).integers(0, 65535, SHAPE, dtype=np.uint16)


def test_fast_frame_header_decodes_to_the_validated_model():
    pixels = _frame(1)
    item = _Item(7, pixels, {"t": 3, "c": 1}, 1.5, 2.0, 5.0, {"a": [1, 2], "b": {"c": "d"}})
    fast = _fast_frame_header("run-h", item)
    assert fast is not None
    msg_fast, _ = decode([TAG, fast, pixels.tobytes()])
    msg_slow, _ = decode([TAG, validated_frame_header("run-h", item), pixels.tobytes()])
    assert msg_fast == msg_slow and msg_fast.index.c == 1 and msg_fast.seq == 7
    # anything unusual takes the validated path
    assert _fast_frame_header("run-h", _Item(0, pixels, {"t": -1}, 0, None, None, None)) is None
    assert _fast_frame_header("run-h", _Item(0, pixels.astype(np.uint64), None, 0, None, None, None)) is None
    # metadata msgpack cannot carry is stringified, not fatal
    odd = _fast_frame_header("run-h", _Item(0, pixels, None, 0, None, None, {"obj": object()}))
    assert odd is not None and decode([TAG, odd, pixels.tobytes()])[0].metadata["obj"].startswith("<object")


def test_fast_header_is_the_bytes_of_encode_frame():
    pixels = _frame(2).astype(np.float32)
    cases = [
        _Item(0, pixels, None, 0, None, None, None),
        _Item(12, pixels, FrameIndex(t=4, p=2, c=1, z=9), 1700000000.25, 12.5, 3, {"k": [1, {"x": None}]}),
        _Item(99, pixels, {"z": 3}, 7, 1, None, {}),
    ]
    for item in cases:
        model = Frame(
            run="run-h",
            seq=item.seq,
            index=item.index if isinstance(item.index, FrameIndex) else FrameIndex(**(item.index or {})),
            shape=pixels.shape,
            dtype="float32",
            timestamp=item.timestamp,
            elapsed_ms=item.elapsed_ms,
            exposure_ms=item.exposure_ms,
            metadata=item.metadata or {},
        )
        expected = encode(model)[1]
        fast = _fast_frame_header("run-h", item)
        assert fast == expected
        assert decode([TAG, fast, pixels.tobytes()])[0] == model
        assert encode_frame_header("run-h", item) == expected


def test_a_frame_the_protocol_cannot_carry_raises():
    cube = np.zeros((2, 4, 4), np.uint16)
    with pytest.raises(ValueError):  # pydantic's ValidationError is one
        encode_frame_header("run-h", _Item(0, cube, None, 0, None, None, None))
