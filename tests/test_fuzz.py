"""Property-based fuzzing of the wire (rule 5): whatever arrives, ``decode`` gives a message or a
:class:`ProtocolError`, and a real daemon fed the same keeps storing a well-behaved client's frames
bit-identical and answering status. Derandomized with fixed example counts, so CI is reproducible."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowdose.daemon.config import load_config
from lowdose.daemon.server import Daemon
from lowdose.wire import protocol as p
from wire_client import WireClient, acked, ramp

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HOSTILE_RUNS = ["h-0", "h-1", "x" * 129, "", "../etc"]
leaf = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
        | st.text(max_size=12) | st.binary(max_size=12))
value = st.recursive(leaf, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=6), ch, max_size=4),
                     max_leaves=16)
edge_int = st.sampled_from([0, 1, 2, 3, 255, 256, 9999, 10_000, 99_999, 10**6, 2**40, 2**62, -1])


def nested_map(depth: int) -> bytes:
    return b"\x81\xa1a" * (depth - 1) + b"\x80"


def pack_with(fields: dict, raw: dict[str, bytes]) -> bytes:
    """``fields`` as a msgpack map with ``raw`` values spliced in already packed (deeper than msgpack packs)."""
    n = len(fields) + len(raw)
    out = bytearray(b"\xde" + n.to_bytes(2, "big"))
    for k, v in fields.items():
        out += msgpack.packb(k) + msgpack.packb(v, use_bin_type=True)
    for k, v in raw.items():
        out += msgpack.packb(k) + v
    return bytes(out)


@st.composite
def base_message(draw) -> tuple[dict, int]:
    """A header dict of some kind (client or daemon side) for a hostile run, and its payload size."""
    run = draw(st.sampled_from(HOSTILE_RUNS))
    kind = draw(st.sampled_from(p.KINDS))
    index = {k: draw(edge_int) for k in draw(st.sets(st.sampled_from("tpcz")))}
    msgs = {
        "start": {"kind": "start", "run": run, "shape": [4, 4], "dtype": "uint8",
                  "sizes": {k: draw(edge_int) for k in draw(st.sets(st.sampled_from("tpczq")))}},
        "frame": {"kind": "frame", "run": run, "seq": draw(edge_int), "index": index, "shape": [4, 4],
                  "dtype": "uint8"},
        "end": {"kind": "end", "run": run, "frames": draw(edge_int)},
        "heartbeat": {"kind": "heartbeat", "run": run},
        "status": {"kind": "status"},
        "ack": {"kind": "ack", "run": run, "ranges": [[0, draw(edge_int)]]},
        "error": {"kind": "error", "code": "invalid", "reason": "x"},
        "status_reply": {"kind": "status_reply", "daemon": "d", "status": {}},
        "preview": {"kind": "preview", "run": run, "seq": 0, "index": index, "shape": [4, 4], "dtype": "uint8"},
    }
    return msgs[kind], 16


@st.composite
def hostile_parts(draw) -> list[bytes]:
    """Garbage, or a message of some kind mutated: bad tag, wrong values, unknown or missing keys,
    free-form maps deep or huge, wrong payload, wrong part count."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.lists(st.binary(max_size=64), min_size=1, max_size=4))  # zmq sends no empty message
    fields, nbytes = draw(base_message())
    fields = dict(fields)
    raw: dict[str, bytes] = {}
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "delete", "add", "deep", "huge", "wide", "long_run"]))
        key = draw(st.sampled_from(sorted(fields) + ["metadata", "summary", "sequence", "index", "sizes"]))
        if op == "set":
            fields[key] = draw(value)
        elif op == "delete":
            fields.pop(key, None)
        elif op == "add":
            fields[draw(st.text(min_size=1, max_size=8))] = draw(value)
        elif op == "deep":
            fields.pop(key, None)
            raw[key] = nested_map(draw(st.sampled_from([31, 33, 300, 600, 1000])))
        elif op == "huge":
            fields[key] = {"s": "y" * draw(st.sampled_from([65_536, 65_537, 500_000]))}
        elif op == "wide":
            fields[key] = {str(i): i for i in range(draw(st.sampled_from([4096, 4097, 20_000])))}
        else:
            fields["run"] = "r" * draw(st.sampled_from([129, 100_000, 900_000]))
    header = pack_with(fields, raw)
    tag = draw(st.sampled_from([p.TAG] * 6 + [b"lowdose/2", b"lowdose", b"nope", b""]))
    payload = draw(st.sampled_from([[b"\1" * nbytes]] * 3 + [[], [b""], [b"\1" * (nbytes + 1)], [b"x", b"y"]]))
    return [tag, header, *payload]


@given(hostile_parts())
@settings(max_examples=400, **SETTINGS)
def test_decode_gives_a_message_or_a_protocol_error_and_nothing_else(parts):
    try:
        msg, _ = p.decode(parts)
    except p.ProtocolError as exc:
        assert isinstance(exc.code, p.ErrorCode) and len(exc.reason) <= p.MAX_REASON
        # the refusal itself must fit the limit a client imposes on it
        assert len(p.encode(p.Error(code=exc.code, reason=exc.reason, run=exc.run, seq=exc.seq))[1]) < 8192
        return
    for field in ("summary", "sequence", "metadata"):
        assert p.freeform_problem(getattr(msg, field, None)) is None


@pytest.fixture(scope="module")
def fuzzed_daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    d = Daemon(load_config(None, overrides={
        "server.endpoints": [f"ipc://{tmp}/d.sock"],
        "server.preview_endpoint": f"ipc://{tmp}/preview.sock",
        "storage.output_dir": str(tmp / "data"),
        "storage.fsync": False,
        "restore.denoiser": "identity",
        "restore.policy": "fifo",
    }))
    d.start()
    yield d, tmp
    d.stop()


def test_a_daemon_fed_hostile_messages_stores_a_good_clients_frames_bit_identical(fuzzed_daemon):
    daemon, tmp = fuzzed_daemon
    endpoint = daemon.cfg.server.endpoints[0]
    good, bad = WireClient(endpoint), WireClient(endpoint)
    good.send(p.Start(run="good", shape=(32, 48), dtype="uint16", instrument="test"))
    good.recv_until(lambda m: isinstance(m, p.Ack))
    sent = []

    @given(st.lists(hostile_parts(), min_size=1, max_size=6))
    @settings(max_examples=60, **SETTINGS)
    def hostile_batch_then_a_good_frame(batch):
        for parts in batch:
            bad.send_raw(parts)
        seq = len(sent)
        good.send_frame("good", seq, ramp(seq), t=seq)
        good.recv_until(lambda m: seq in acked([m]), timeout=20)
        sent.append(seq)
        while bad.sock.poll(0):  # replies to the hostile client are not this test's business
            bad.sock.recv_multipart()

    try:
        hostile_batch_then_a_good_frame()
        good.send(p.End(run="good", frames=len(sent)))
        good.recv_until(lambda m: isinstance(m, p.Ack) and m.finished, timeout=30)
        good.send(p.StatusRequest())
        reply, _ = good.recv_until(lambda m: isinstance(m, p.StatusReply))
    finally:
        good.close()
        bad.close()
    assert not daemon.failed.is_set()
    run = next(r for r in reply.status["runs"] if r["run"] == "good")
    assert run["frames_written"] == len(sent) >= 30
    raw = zarr.open_array(str(tmp / "data" / "good.ome.zarr" / "raw" / "0"), mode="r")
    for seq in sent:
        np.testing.assert_array_equal(raw[seq, 0, 0], ramp(seq))
