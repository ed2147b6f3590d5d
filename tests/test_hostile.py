"""Hostile messages at a real daemon: each is refused with a code, nothing of it is stored, and the
daemon goes on serving (rule 5). One test per failure of the issue, each failing on the code before it."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zarr

from lowdose.daemon.config import load_config
from lowdose.daemon.server import Daemon
from lowdose.wire import protocol as p
from lowdose.wire.frame_header import FrameFields, encode_frame_header, fast_frame_header
from wire_client import WireClient, acked, ramp


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(load_config(None, overrides={
        "server.endpoints": [f"ipc://{tmp_path}/d.sock"],
        "server.preview_endpoint": f"ipc://{tmp_path}/preview.sock",
        "storage.output_dir": str(tmp_path / "data"),
        "storage.fsync": False,
        "restore.denoiser": "identity",
        "restore.policy": "fifo",
    }))
    d.start()
    yield d
    d.stop()


@pytest.fixture
def client(daemon):
    c = WireClient(daemon.cfg.server.endpoints[0])
    yield c
    c.close()


def _nested_map_bytes(depth: int) -> bytes:
    """A msgpack ``{"a": {"a": ... {}}}`` ``depth`` maps deep, packed by hand (msgpack's packer stops at 511)."""
    return b"\x81\xa1a" * (depth - 1) + b"\x80"


def _header(fields: dict, **raw: bytes) -> bytes:
    """``fields`` packed as a msgpack map, with ``raw`` values spliced in as already-packed bytes."""
    out = bytearray()
    n = len(fields) + len(raw)
    out += bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    for k, v in fields.items():
        out += msgpack.packb(k) + msgpack.packb(v, use_bin_type=True)
    for k, v in raw.items():
        out += msgpack.packb(k) + v
    return bytes(out)


def _start_fields(run: str, **kw) -> dict:
    return p.Start(run=run, shape=(32, 48), dtype="uint16", instrument="test", **kw).model_dump(mode="json")


def _still_serving(client: WireClient) -> None:
    client.send(p.StatusRequest())
    reply, _ = client.recv_until(lambda m: isinstance(m, p.StatusReply))
    assert reply.status["daemon"]


def _error(client: WireClient) -> p.Error:
    reply, _ = client.recv_until(lambda m: isinstance(m, p.Error))
    return reply


def _good_run(client: WireClient, run: str, frames: int, **start) -> None:
    client.send(p.Start(run=run, shape=(32, 48), dtype="uint16", instrument="test", **start))
    for seq in range(frames):
        client.send_frame(run, seq, ramp(seq), t=seq)
    client.recv_until(lambda m: frames - 1 in acked([m]))


# -- item 1: one message kills the I/O thread ------------------------------------------------------


def test_a_start_with_a_300_deep_summary_is_refused_and_the_daemon_serves_on(daemon, client):
    fields = _start_fields("deep-start")
    del fields["summary"]
    client.send_raw([p.TAG, _header(fields, summary=_nested_map_bytes(300))])
    err = _error(client)
    assert err.code == p.ErrorCode.INVALID and "deeper than" in err.reason
    assert daemon.runs.get("deep-start") is None and not daemon.failed.is_set()
    _still_serving(client)


def test_an_unexpected_exception_on_a_message_is_answered_internal_and_the_next_is_served(daemon, client):
    def broken(identity, start):
        raise RuntimeError("injected")

    daemon._on_start = broken
    client.send(p.Start(run="boom", shape=(4, 4), dtype="uint8"))
    err = _error(client)
    assert err.code == p.ErrorCode.INTERNAL and err.run == "boom" and "injected" in err.reason
    assert not daemon.failed.is_set()
    _still_serving(client)
    assert daemon.metrics.messages_rejected.labels(p.ErrorCode.INTERNAL)._value.get() == 1


# -- item 2: one frame kills the write thread ------------------------------------------------------


def test_a_frame_with_600_deep_metadata_is_refused_not_written_and_the_write_loop_lives(daemon, client):
    _good_run(client, "meta", 2)
    frame = p.Frame(run="meta", seq=2, shape=(32, 48), dtype="uint16").model_dump(mode="json")
    del frame["metadata"]
    client.send_raw([p.TAG, _header(frame, metadata=_nested_map_bytes(600)), ramp(2).tobytes()])
    err = _error(client)
    assert (err.code, err.seq) == (p.ErrorCode.INVALID, 2)
    client.send_frame("meta", 3, ramp(3), t=3)
    client.recv_until(lambda m: 3 in acked([m]))
    state = daemon.runs.get("meta")
    assert not state.store.has_seq(2) and state.store.has_seq(3)
    assert not daemon.failed.is_set()


def test_the_client_cuts_metadata_the_daemon_would_refuse_and_keeps_the_frame():
    deep: dict = {}
    for _ in range(100):
        deep = {"a": deep}
    fields = FrameFields(seq=0, pixels=np.zeros((2, 2), np.uint8), index={"t": 0}, timestamp=0.0,
                         elapsed_ms=None, exposure_ms=None, metadata={"deep": deep, "big": "x" * 100_000})
    assert fast_frame_header("r", fields) is None
    msg, _ = p.decode([p.TAG, encode_frame_header("r", fields), b"\0" * 4])
    assert p.freeform_problem(msg.metadata) is None


# -- item 6: valid messages that allocate without bound --------------------------------------------


@pytest.mark.parametrize("sizes", [{"c": 100_000}, {"z": 10_001}, {"c": 255, "z": 999}, {"p": 10**9}])
def test_start_sizes_that_would_size_a_huge_table_are_refused(sizes):
    with pytest.raises(p.ProtocolError) as exc:
        p.decode([p.TAG, msgpack.packb(_start_fields("r") | {"sizes": sizes})])
    assert exc.value.code == p.ErrorCode.INVALID


def test_a_frame_index_whose_block_would_be_788_mb_is_refused_at_both_ends():
    frame = p.Frame(run="r", seq=0, shape=(2, 2), dtype="uint8").model_dump(mode="json")
    frame["index"] = {"t": 0, "p": 0, "c": 255, "z": 999}
    with pytest.raises(p.ProtocolError) as exc:
        p.decode([p.TAG, msgpack.packb(frame), b"\0" * 4])
    assert exc.value.code == p.ErrorCode.INVALID and "16384" in exc.value.reason
    fields = FrameFields(seq=0, pixels=np.zeros((2, 2), np.uint8), index={"c": 255, "z": 999}, timestamp=0.0,
                         elapsed_ms=None, exposure_ms=None, metadata=None)
    assert fast_frame_header("r", fields) is None
    with pytest.raises(ValueError):
        encode_frame_header("r", fields)


def test_a_frame_outside_the_declared_sizes_is_refused_and_not_written(daemon, client):
    _good_run(client, "sized", 1, sizes={"t": 4, "c": 2, "z": 3})
    client.send_frame("sized", 1, ramp(1), t=1, z=3)
    err = _error(client)
    assert (err.code, err.seq) == (p.ErrorCode.INDEX_OUT_OF_RANGE, 1)
    assert not daemon.runs.get("sized").store.has_seq(1)
    client.send_frame("sized", 2, ramp(2), t=3, c=1, z=2)  # the far corner still fits
    client.recv_until(lambda m: 2 in acked([m]))


def test_channels_and_slices_that_grow_apart_are_refused_before_the_block_would(daemon, client):
    # each frame alone fits the wire's (c+1)(z+1) bound; together they would lay out 256 x 10000 cells
    _good_run(client, "apart", 1)
    client.send_frame("apart", 1, ramp(1), t=1, z=9999)
    client.recv_until(lambda m: 1 in acked([m]))
    client.send_frame("apart", 2, ramp(2), t=2, c=255)
    err = _error(client)
    assert (err.code, err.seq) == (p.ErrorCode.INDEX_OUT_OF_RANGE, 2)
    assert not daemon.runs.get("apart").store.has_seq(2)


# -- item 9: frames after the run finished ---------------------------------------------------------


def test_a_frame_after_the_run_finished_is_refused_run_finished_and_not_written(daemon, client, tmp_path):
    _good_run(client, "done", 3)
    client.send(p.End(run="done", frames=3))
    client.recv_until(lambda m: isinstance(m, p.Ack) and m.finished)
    assert daemon.wait_idle(30)
    client.send_frame("done", 3, ramp(3), t=3)
    err = _error(client)
    assert (err.code, err.seq) == (p.ErrorCode.RUN_FINISHED, 3)
    assert p.ErrorCode.RUN_FINISHED not in p.TRANSIENT_ERRORS  # the hook gives that frame up
    assert daemon.runs.get("done").ranges == ((0, 2),)  # the finished record still holds exactly seqs 0-2
    raw = zarr.open_array(str(tmp_path / "data" / "done.ome.zarr" / "raw" / "0"), mode="r")
    assert raw.shape[0] == 3


# -- item 10: error replies within the header limit ------------------------------------------------


def test_an_error_reply_to_a_huge_heartbeat_run_stays_far_below_the_header_limit(daemon, client):
    client.send_raw([p.TAG, msgpack.packb({"kind": "heartbeat", "run": "r" * 900_000})])
    raw = client.sock.recv_multipart() if client.sock.poll(10_000) else pytest.fail("no reply")
    assert len(raw[1]) < 8192
    msg, _ = p.decode(raw)  # the client's own decoder accepts it
    assert msg.kind == "error" and len(msg.run) <= p.MAX_ECHO_RUN


@pytest.mark.parametrize("header", [
    {"kind": "k" * 900_000},
    {"kind": "start", "run": "x", "shape": [1, 1], "dtype": "uint8", "y" * 500_000: 1},
])
def test_every_error_reply_stays_far_below_the_header_limit(daemon, client, header):
    client.send_raw([p.TAG, msgpack.packb(header)])
    raw = client.sock.recv_multipart() if client.sock.poll(10_000) else pytest.fail("no reply")
    assert len(raw[1]) < 8192 and p.decode(raw)[0].kind == "error"


def test_a_client_that_takes_a_hooks_connection_identities_first_does_not_lock_it_out(daemon, tmp_path):
    # A ROUTER refuses a second peer with an identity it already holds: if hook identities were
    # "<run>.<n>", anyone could take them first and keep that microscope off the daemon.
    import zmq

    from lowdose.plugins.acquisition.sender import FrameSender
    from lowdose.wire.hook_config import HookConfig

    squatters = []
    for n in range(40):  # more sessions than the hook can open (a new one per ack timeout) before it gives up
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, f"victim.{n}".encode())
        sock.connect(daemon.cfg.server.endpoints[0])
        sock.send_multipart(p.encode(p.Heartbeat()))
        assert sock.poll(5000)  # the daemon knows this identity now
        squatters.append(sock)
    cfg = HookConfig(endpoint=daemon.cfg.server.endpoints[0], spool_dir=tmp_path / "spool", ack_timeout_s=1.0,
                     close_timeout_s=10.0)
    sender = FrameSender(cfg, p.Start(run="victim", shape=(32, 48), dtype="uint16"))
    sender.start()
    for seq in range(5):
        sender.submit(ramp(seq), {"t": seq})
    report = sender.close(timeout=10)
    for sock in squatters:
        sock.close(0)
    assert report.acked == 5 and report.unacked == 0, report
