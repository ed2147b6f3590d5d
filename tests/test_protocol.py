"""The wire protocol rejects every malformed message with a precise error code."""

import re

import msgpack
import numpy as np
import pytest

from lowdose.wire import protocol as p


def _frame(**kw):
    base = dict(run="run-1", seq=0, shape=(4, 6), dtype="uint16")
    base.update(kw)
    return p.Frame(**base)


def test_frame_round_trip_is_bit_identical():
    pixels = np.arange(24, dtype=np.uint16).reshape(4, 6)
    msg, payload = p.decode(p.encode_frame(_frame(seq=7, index=p.FrameIndex(t=3, c=1)), pixels))
    assert isinstance(msg, p.Frame) and msg.seq == 7 and msg.index.t == 3 and msg.index.c == 1
    np.testing.assert_array_equal(p.frame_pixels(msg, payload), pixels)


@pytest.mark.parametrize(
    "parts, code",
    [
        ([p.TAG], "malformed"),
        ([b"HTTP/1.1", b"x"], "malformed"),
        ([b"lowdose/99", msgpack.packb({"kind": "heartbeat"})], "unsupported_version"),
        ([p.TAG, b"\xc1\xc1garbage"], "malformed"),
        ([p.TAG, msgpack.packb([1, 2, 3])], "malformed"),
        ([p.TAG, msgpack.packb({"kind": "launch_missiles"})], "unknown_kind"),
        ([p.TAG, msgpack.packb({"kind": "frame", "run": "r", "seq": 0, "shape": [4, 6], "dtype": "uint16"})], "malformed"),
        ([p.TAG, msgpack.packb({"kind": "frame", "run": "r", "seq": 0, "shape": [4, 6], "dtype": "uint16"}), b"\0" * 47], "size_mismatch"),
        ([p.TAG, msgpack.packb({"kind": "frame", "run": "r", "seq": 0, "shape": [10**6, 10**6], "dtype": "uint16"}), b""], "invalid"),
        ([p.TAG, msgpack.packb({"kind": "frame", "run": "r", "seq": -1, "shape": [4, 6], "dtype": "uint16"}), b"\0" * 48], "invalid"),
        ([p.TAG, msgpack.packb({"kind": "frame", "run": "../etc", "seq": 0, "shape": [4, 6], "dtype": "uint16"}), b"\0" * 48], "invalid"),
        ([p.TAG, msgpack.packb({"kind": "frame", "run": "r", "seq": 0, "shape": [4, 6], "dtype": "object"}), b"\0" * 48], "invalid"),
        ([p.TAG, msgpack.packb({"kind": "start", "run": "r", "shape": [4, 6], "dtype": "uint16", "evil": 1})], "invalid"),
        ([p.TAG, msgpack.packb({"kind": "end", "run": "r", "frames": 3}), b"extra"], "malformed"),
        ([p.TAG, msgpack.packb({"kind": "frame", "run": "r", "seq": 0, "shape": [4, 6], "dtype": "uint16", "index": {"c": 10**9}}), b"\0" * 48], "invalid"),
        ([p.TAG, msgpack.packb({"kind": "frame", "run": "r", "seq": 2**62, "shape": [4, 6], "dtype": "uint16"}), b"\0" * 48], "invalid"),
    ],
)
def test_malformed_messages_are_rejected_with_a_code(parts, code):
    with pytest.raises(p.ProtocolError) as info:
        p.decode(parts)
    assert info.value.code == code
    assert info.value.reason  # a person-readable reason travels back to the sender


def test_error_carries_run_and_seq_of_a_bad_frame():
    header = msgpack.packb({"kind": "frame", "run": "r", "seq": 5, "shape": [4, 6], "dtype": "uint16"})
    with pytest.raises(p.ProtocolError) as info:
        p.decode([p.TAG, header, b"\0" * 10])
    assert (info.value.run, info.value.seq) == ("r", 5)


def test_ranges_from_seqs():
    assert p.ranges_from_seqs([5, 0, 1, 2, 2, 7, 6]) == [(0, 2), (5, 7)]
    assert p.ranges_from_seqs([]) == []


def _documented_error_codes() -> dict[str, str]:
    """code -> client action, from the codes table of docs/protocol.md."""
    from pathlib import Path

    lines = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text().splitlines()
    start = lines.index("| code | meaning | client action |")
    table: dict[str, str] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        code_cell, _meaning, action = (cell.strip() for cell in line.strip("|").split("|"))
        for code in re.findall(r"`([^`]+)`", code_cell):
            assert code not in table, f"{code} is listed twice in docs/protocol.md"
            table[code] = action
    return table


def test_error_codes_match_the_protocol_document_both_ways():
    documented = _documented_error_codes()
    enum = {c.value for c in p.ErrorCode}
    assert set(documented) - enum == set(), "documented codes missing from ErrorCode"
    assert enum - set(documented) == set(), "ErrorCode members missing from docs/protocol.md"
    # the document's "resend later" rows are exactly the codes a client retries
    assert {c for c, action in documented.items() if "resend later" in action} == {
        c.value for c in p.TRANSIENT_ERRORS
    }


def test_the_daemon_names_error_codes_through_the_enum():
    # a bare string would let a typo reach the wire as a code no client knows
    from pathlib import Path

    daemon_dir = Path(__file__).parent.parent / "daemon"
    for path in sorted(daemon_dir.rglob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.search(r"""code\s*=\s*["']""", line), f"{path.name}:{lineno}: {line.strip()}"
            assert not re.search(r"""labels\(\s*["']""", line), f"{path.name}:{lineno}: {line.strip()}"
