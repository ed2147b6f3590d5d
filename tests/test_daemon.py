"""The daemon, in-process, over real ZeroMQ sockets and real Zarr stores."""

import json
import time

import msgpack
import numpy as np
import pytest
import zarr

from lowdose.wire import protocol as p
from lowdose.daemon.client import DaemonUnreachable, query_status
from lowdose.daemon.config import load_config
from lowdose.daemon.server import Daemon, DaemonError
from wire_client import WireClient, acked, ramp


def _cfg(tmp_path, **restore):
    return load_config(
        None,
        overrides={
            "server.endpoints": [f"ipc://{tmp_path}/d.sock"],
            "server.preview_endpoint": f"ipc://{tmp_path}/preview.sock",
            "storage.output_dir": str(tmp_path / "data"),
            "storage.fsync": False,
            "restore.denoiser": "identity",
            **{f"restore.{k}": v for k, v in restore.items()},
        },
    )


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(_cfg(tmp_path, policy="fifo"))
    d.start()
    yield d
    d.stop()


def _start(run, shape=(32, 48), **kw):
    return p.Start(run=run, shape=shape, dtype="uint16", instrument="test", sizes={"t": kw.pop("t", 0)}, **kw)


def _stream(d, run, seqs, end_frames=None, owner=None):
    """Start ``run``, send frames ``seqs``; with ``end_frames`` end the run and wait for the finished ack,
    else wait until the last frame is acked. Returns every reply seen."""
    c = WireClient(d.cfg.server.endpoints[0])
    seqs = list(seqs)
    c.send(_start(run, owner=owner))
    for seq in seqs:
        c.send_frame(run, seq, ramp(seq), t=seq)
    if end_frames is None:
        _, seen = c.recv_until(lambda m: seqs[-1] in acked([m]))
    else:
        c.send(p.End(run=run, frames=end_frames))
        _, seen = c.recv_until(lambda m: isinstance(m, p.Ack) and m.finished)
    c.close()
    return seen


def test_frames_are_written_acked_restored_and_finalized(daemon, tmp_path):
    seen = _stream(daemon, "run-a", range(20), end_frames=20)
    assert acked(seen) == set(range(20))
    assert daemon.wait_idle(30)
    root = zarr.open_group(str(tmp_path / "data" / "run-a.ome.zarr"), mode="r")
    raw, restored = root["raw/0"], root["restored/0"]
    assert raw.shape == restored.shape == (20, 1, 1, 32, 48)
    for t in (0, 7, 19):
        np.testing.assert_array_equal(raw[t, 0, 0], ramp(t))
        np.testing.assert_array_equal(restored[t, 0, 0], ramp(t))  # identity denoiser


def test_resent_frames_are_stored_once(daemon, tmp_path):
    _stream(daemon, "run-dup", (0, 1, 2, 1, 2, 3), end_frames=4)
    assert daemon.wait_idle(30)
    st = query_status(daemon.cfg.server.endpoints[0])
    run = next(r for r in st["runs"] if r["run"] == "run-dup")
    assert run["frames_written"] == 4 and run["frames_duplicate"] == 2
    raw = zarr.open_array(str(tmp_path / "data" / "run-dup.ome.zarr" / "raw" / "0"), mode="r")
    assert raw.shape[0] == 4


def test_malformed_messages_get_errors_and_other_clients_keep_being_served(daemon):
    good = WireClient(daemon.cfg.server.endpoints[0])
    bad = WireClient(daemon.cfg.server.endpoints[0])
    good.send(_start("run-good"))
    good.recv_until(lambda m: isinstance(m, p.Ack))
    header = msgpack.packb({"kind": "frame", "run": "run-good", "seq": 0, "shape": [32, 48], "dtype": "uint16"})
    cases = [
        ([p.TAG, header, b"\0" * 100], "size_mismatch"),
        ([p.TAG, header], "malformed"),
        ([b"lowdose/2", header], "unsupported_version"),
        ([p.TAG, msgpack.packb({"kind": "reboot"})], "unknown_kind"),
        ([p.TAG, msgpack.packb({"kind": "frame", "run": "run-good", "seq": 0, "shape": [99999, 99999],
                                "dtype": "uint16"}), b""], "invalid"),
        ([p.TAG, b"\xff\xfe not msgpack"], "malformed"),
    ]
    for i, (parts, code) in enumerate(cases):
        bad.send_raw(parts)
        err = bad.recv()
        assert isinstance(err, p.Error) and err.code == code, (i, err)
        good.send_frame("run-good", i, ramp(i), t=i)
        _, seen = good.recv_until(lambda m, i=i: i in acked([m]))
    # a frame whose shape disagrees with the run's start is refused, not written
    good.send_frame("run-good", 99, np.zeros((8, 8), np.uint16))
    err = good.recv()
    assert isinstance(err, p.Error) and err.code == "shape_mismatch"
    bad.send_frame("never-started", 0, ramp(0))
    err = bad.recv()
    assert isinstance(err, p.Error) and err.code == "unknown_run"
    assert query_status(daemon.cfg.server.endpoints[0])["runs"][0]["frames_written"] == len(cases)


def test_slow_model_latest_policy_skips_live_and_backfill_completes(tmp_path):
    d = Daemon(_cfg(tmp_path, policy="latest", batch_size=2, denoiser_options={"delay_ms": 40}))
    d.start()
    try:
        seen = _stream(d, "run-slow", range(40), end_frames=40)
        assert acked(seen) == set(range(40))  # raw never waits for the model
        assert d.wait_idle(60)
        run = d.status()["runs"][0]
        assert run["frames_restored_live"] < 40  # the policy skipped frames live...
        assert run["frames_restored_live"] + run["frames_restored_backfill"] >= 40  # ...backfill restored them
        restored = zarr.open_array(str(tmp_path / "data" / "run-slow.ome.zarr" / "restored" / "0"), mode="r")
        assert restored.shape[0] == 40
        np.testing.assert_array_equal(restored[13, 0, 0], ramp(13))
    finally:
        d.stop()


def test_each_frame_is_restored_once_live_or_by_backfill(tmp_path):
    """A frame is acked before it reaches the live queue; backfill, idle meanwhile, may take it first.
    Whichever restores it, the other must not restore it again (counts would exceed the frames).
    Frames arrive about as often as the restore loop's idle turn (50 ms), where that window opens."""
    d = Daemon(_cfg(tmp_path, policy="fifo", batch_size=1))
    d.start()
    try:
        c = WireClient(d.cfg.server.endpoints[0])
        c.send(_start("run-once"))
        for seq in range(40):
            c.send_frame("run-once", seq, ramp(seq), t=seq)
            time.sleep(0.045 + 0.01 * (seq % 3))
        c.send(p.End(run="run-once", frames=40))
        c.recv_until(lambda m: isinstance(m, p.Ack) and m.finished)
        c.close()
        assert d.wait_idle(60)
        run = d.status()["runs"][0]
        assert run["frames_restored_live"] + run["frames_restored_backfill"] == 40, run
    finally:
        d.stop()


def test_status_of_a_dead_daemon_is_a_clear_error(tmp_path):
    with pytest.raises(DaemonUnreachable, match="no lowdose daemon answered"):
        query_status(f"ipc://{tmp_path}/nobody.sock", timeout=0.3)


def test_unknown_denoiser_fails_at_start(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.restore.denoiser = "no-such-model"
    with pytest.raises(DaemonError, match="unknown denoiser 'no-such-model'"):
        Daemon(cfg).start()


def test_two_daemons_on_one_endpoint_is_a_clear_error(daemon, tmp_path):
    cfg = _cfg(tmp_path)
    cfg.server.preview_endpoint = None
    cfg.server.endpoints = daemon.cfg.server.endpoints
    with pytest.raises(DaemonError, match="cannot bind"):
        Daemon(cfg).start()


def test_preview_stream_publishes_restored_frames(daemon):
    import zmq

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"run-prev")
    sub.connect(daemon.cfg.server.preview_endpoint)
    time.sleep(0.3)  # PUB/SUB: subscriptions take a moment to propagate
    c = WireClient(daemon.cfg.server.endpoints[0])
    c.send(_start("run-prev"))
    for seq in range(5):
        c.send_frame("run-prev", seq, ramp(seq), t=seq)
    assert sub.poll(10000)
    topic, *parts = sub.recv_multipart()
    msg, payload = p.decode(parts)
    assert topic == b"run-prev" and isinstance(msg, p.Preview)
    np.testing.assert_array_equal(p.frame_pixels(msg, payload), ramp(msg.seq))
    sub.close(linger=0)


def test_a_restarted_daemon_resumes_unfinished_runs(tmp_path):
    # first daemon: no backfill, a slow model -> frames left unrestored, no End ever comes
    d = Daemon(_cfg(tmp_path, policy="latest", batch_size=1, backfill=False, denoiser_options={"delay_ms": 30}))
    d.start()
    _stream(d, "run-orphan", range(30))
    d.stop()
    assert d.runs.get("run-orphan").store.unrestored()  # the first daemon left work behind
    store = tmp_path / "data" / "run-orphan.ome.zarr"
    from lowdose.daemon.store import RunStore

    # second daemon, same output folder: it finds the run and restores the rest by itself
    d2 = Daemon(_cfg(tmp_path, policy="fifo"))
    d2.start()
    try:
        st = d2.runs.get("run-orphan")
        assert st is not None and st.counters.state == "resumed"
        deadline = time.monotonic() + 30
        while st.store.unrestored() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not st.store.unrestored()
        assert st.store.restored_count() == 30
    finally:
        d2.stop()
    assert "summary" not in RunStore.read_state(store)  # no End: not finalized behind the user's back


def test_offline_backfill_restores_and_finalizes(tmp_path):
    from lowdose.daemon.backfill import backfill_store
    from lowdose.daemon.store import RunStore
    from lowdose.plugins.denoisers.identity import IdentityDenoiser

    d = Daemon(_cfg(tmp_path, policy="latest", batch_size=1, backfill=False, denoiser_options={"delay_ms": 30}))
    d.start()
    _stream(d, "run-off", range(25))
    d.stop()
    path = tmp_path / "data" / "run-off.ome.zarr"
    result = backfill_store(path, IdentityDenoiser(), storage=d.cfg.storage)
    assert result.remaining == 0 and result.restored > 0
    assert "summary" in RunStore.read_state(path)
    restored = zarr.open_array(str(path / "restored" / "0"), mode="r")
    assert restored.shape[0] == 25
    np.testing.assert_array_equal(restored[24, 0, 0], ramp(24))
    with pytest.raises(Exception, match="not a lowdose run store"):
        backfill_store(tmp_path, IdentityDenoiser(), storage=d.cfg.storage)


def test_restored_can_be_stored_as_float32(tmp_path):
    cfg = _cfg(tmp_path, policy="fifo")
    cfg.storage.restored_dtype = "float32"
    d = Daemon(cfg)
    d.start()
    try:
        _stream(d, "run-f32", range(3), end_frames=3)
        assert d.wait_idle(30)
    finally:
        d.stop()
    root = zarr.open_group(str(tmp_path / "data" / "run-f32.ome.zarr"), mode="r")
    assert root["raw/0"].dtype == np.uint16 and root["restored/0"].dtype == np.float32
    np.testing.assert_array_equal(root["restored/0"][2, 0, 0], ramp(2).astype(np.float32))


def _uint16_store(tmp_path):
    cfg = _cfg(tmp_path, policy="fifo")
    cfg.storage.restored_dtype = "input"
    d = Daemon(cfg)
    d.start()
    try:
        _stream(d, "run-u16", range(4), end_frames=4)
        assert d.wait_idle(30)
    finally:
        d.stop()
    return tmp_path / "data" / "run-u16.ome.zarr"


def test_backfill_with_another_restored_dtype_keeps_the_image_readable(tmp_path):
    """A store's restored image keeps the dtype it declared: a float32 config must not add float32 chunks
    to a uint16 image (its chunks would no longer decode)."""
    from lowdose.daemon.backfill import backfill_store
    from lowdose.daemon.config import StorageConfig
    from lowdose.plugins.denoisers.identity import IdentityDenoiser

    path = _uint16_store(tmp_path)
    result = backfill_store(path, IdentityDenoiser(), storage=StorageConfig(restored_dtype="float32", fsync=False),
                            redo=True)
    assert result.restored == 4 and result.remaining == 0
    restored = zarr.open_group(str(path), mode="r")["restored/0"]
    assert restored.dtype == np.uint16
    np.testing.assert_array_equal(restored[3, 0, 0], ramp(3))  # readable: every chunk in the declared dtype


def test_backfill_refuses_a_config_asking_for_another_restored_dtype(tmp_path):
    from typer.testing import CliRunner

    from lowdose.cli import app

    path = _uint16_store(tmp_path)
    config = tmp_path / "f32.yaml"
    config.write_text("storage:\n  restored_dtype: float32\n  fsync: false\n")
    res = CliRunner().invoke(app, ["backfill", str(path), "--denoiser", "identity", "--redo", "--config", str(config)])
    assert res.exit_code == 2, res.output
    assert "restored image is uint16" in res.output and "restored_dtype: input" in res.output


def test_backfill_works_on_a_renamed_copy_of_a_store(tmp_path):
    """The store's own metadata names its run; a copy under another name is still that run."""
    import shutil

    from lowdose.daemon.backfill import backfill_store
    from lowdose.daemon.config import StorageConfig
    from lowdose.plugins.denoisers.identity import IdentityDenoiser

    copy = tmp_path / "redo.ome.zarr"
    shutil.copytree(_uint16_store(tmp_path), copy)
    result = backfill_store(copy, IdentityDenoiser(), storage=StorageConfig(fsync=False), redo=True)
    assert result.restored == 4 and result.summary["run"] == "run-u16"
    np.testing.assert_array_equal(zarr.open_group(str(copy), mode="r")["restored/0"][2, 0, 0], ramp(2))


STATUS_RUN_KEYS = [
    "run", "instrument", "store", "policy", "state", "frames_received", "frames_duplicate", "frames_written",
    "frames_restored_live", "frames_restored_backfill", "frames_skipped", "frames_failed", "restore_queue",
    "expected_frames", "started_at", "first_frame_at", "last_frame_at", "lag_p50_s", "lag_p95_s", "fps",
]


def test_status_keeps_its_keys_and_reports_the_run_phase(daemon):
    from lowdose.daemon.phase import RunPhase

    c = WireClient(daemon.cfg.server.endpoints[0])
    c.send(_start("run-phase"))
    c.recv_until(lambda m: isinstance(m, p.Ack))
    run = query_status(daemon.cfg.server.endpoints[0])["runs"][0]
    assert list(run) == STATUS_RUN_KEYS  # the CLI, the demo and scripts read these
    assert run["state"] == RunPhase.RECEIVING.value == "receiving"
    c.close()
    _stream(daemon, "run-phase", range(3), end_frames=3)
    assert daemon.wait_idle(30)
    assert query_status(daemon.cfg.server.endpoints[0])["runs"][0]["state"] == "finished"


def test_a_run_moves_only_along_the_transition_table():
    from lowdose.daemon.metrics import RunCounters
    from lowdose.daemon.phase import PhaseError, RunPhase
    from lowdose.daemon.runs import RunState

    def run(phase=RunPhase.RECEIVING):
        counters = RunCounters(run="r", instrument="i", store="s", policy="fifo")
        return RunState(start=_start("r"), store=None, identity=b"", counters=counters, initial_phase=phase)

    live = run()
    with pytest.raises(PhaseError):
        live.advance(RunPhase.FINISHED)  # finalized before its raw stream completed
    live.advance(RunPhase.RESTORING)
    assert live.raw_complete and not live.finished
    live.advance(RunPhase.FINISHED)
    assert live.finished and live.counters.snapshot().state == "finished"
    with pytest.raises(PhaseError):
        live.advance(RunPhase.RECEIVING)

    resumed = run(RunPhase.RESUMED)
    resumed.heard_from(b"hook-2")  # its hook is back
    assert resumed.phase is RunPhase.RECEIVING and resumed.identity == b"hook-2"
    resumed.heard_from(b"hook-3")  # and stays receiving
    assert resumed.phase is RunPhase.RECEIVING
    with pytest.raises(PhaseError):
        run(RunPhase.FINISHED)


def _drain(client, seconds):
    """Every reply ``client`` gets within ``seconds``."""
    out, deadline = [], time.monotonic() + seconds
    while True:
        try:
            out.append(client.recv(max(deadline - time.monotonic(), 0.01)))
        except TimeoutError:
            return out


def test_another_client_cannot_take_over_a_run_or_its_acks(daemon):
    # The issue: one message with the victim's run id from another DEALER redirected every later ack.
    ep = daemon.cfg.server.endpoints[0]
    token = p.new_owner_token()
    victim, intruder = WireClient(ep), WireClient(ep)
    victim.send(_start("run-own", owner=token))
    for seq in range(3):
        victim.send_frame("run-own", seq, ramp(seq), t=seq)
    victim.recv_until(lambda m: 2 in acked([m]))
    intruder.send(_start("run-own"))  # no token (an old client's start)
    intruder.send(_start("run-own", owner=p.new_owner_token()))  # a guessed token
    intruder.send_frame("run-own", 3, ramp(99), t=3)  # a frame it never started
    intruder.send(p.End(run="run-own", frames=4))
    replies = _drain(intruder, 1.0)
    assert [(type(m), m.code, m.seq) for m in replies] == [(p.Error, "not_owner", None)] * 2 + [
        (p.Error, "not_owner", 3), (p.Error, "not_owner", None)]
    for seq in range(3, 6):
        victim.send_frame("run-own", seq, ramp(seq), t=seq)
    victim.send(p.End(run="run-own", frames=6))
    _, seen = victim.recv_until(lambda m: isinstance(m, p.Ack) and m.finished)
    assert acked(seen) >= {3, 4, 5}
    assert not [m for m in _drain(intruder, 0.5) if isinstance(m, p.Ack)]  # not one ack went astray
    assert daemon.wait_idle(30)
    raw = zarr.open_array(str(daemon.cfg.storage.output_dir / "run-own.ome.zarr" / "raw" / "0"), mode="r")
    np.testing.assert_array_equal(raw[3, 0, 0], ramp(3))  # the intruder's frame 3 was never written
    victim.close()
    intruder.close()


def test_the_owner_keeps_its_run_across_reconnects_restarts_and_replays(tmp_path):
    from lowdose.daemon.store import RunStore
    from lowdose.plugins.acquisition.sender import FrameSender, replay_spool
    from lowdose.wire.hook_config import HookConfig

    cfg = _cfg(tmp_path, policy="fifo")
    hook = HookConfig(endpoint=cfg.server.endpoints[0], spool_dir=tmp_path / "spool", ack_timeout_s=0.5,
                      close_timeout_s=20)
    d = Daemon(cfg)
    d.start()
    sender = FrameSender(hook, _start("run-keep"))
    sender.start()
    for t in range(3):
        sender.submit(ramp(t), p.FrameIndex(t=t))
    deadline = time.monotonic() + 10
    while sender.counters().acked < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    token = sender.start_msg.owner
    assert token and sender.counters().acked == 3
    d.stop()
    stored = RunStore.read_state(tmp_path / "data" / "run-keep.ome.zarr")["start"]["owner"]
    assert stored.startswith("sha256:") and token not in stored  # the store keeps a digest, not the secret
    for t in range(3, 6):
        sender.submit(ramp(t), p.FrameIndex(t=t))
    sender.abort_to_spool()  # the hook process goes away with frames 3-5 unacked
    d2 = Daemon(cfg)
    d2.start()
    try:
        assert d2.runs.get("run-keep").phase == "resumed"
        intruder = WireClient(cfg.server.endpoints[0])
        intruder.send(_start("run-keep"))
        assert intruder.recv().code == "not_owner"  # the resumed run still knows its owner
        intruder.close()
        other = WireClient(cfg.server.endpoints[0])  # a new connection, the same token: a reconnect
        other.send(_start("run-keep", owner=token))
        assert acked([other.recv()]) == {0, 1, 2}
        other.close()
        (report,) = replay_spool(tmp_path / "spool", hook, timeout=20)  # yet another connection
        assert report.acked == 3 and report.unacked == 0, report
        assert d2.runs.get("run-keep").store.raw_count() == 6
    finally:
        d2.stop()


def _threads_and_fds():
    import os
    import threading

    return threading.active_count(), len(os.listdir("/proc/self/fd"))


def test_finished_and_idle_runs_release_their_files_and_threads(tmp_path):
    # The issue: each start kept ~2 fds and 1-2 threads for ever (300 runs: 7 -> 570 threads).
    cfg = load_config(None, overrides={
        "server.endpoints": [f"ipc://{tmp_path}/d.sock"], "server.preview_endpoint": None,
        "storage.output_dir": str(tmp_path / "data"), "storage.fsync": False,
        "storage.keep_finished_runs": 40, "storage.idle_close_s": 0.5, "restore.denoiser": "identity",
    })
    d = Daemon(cfg)
    d.start()
    try:
        def runs(first, n):
            for i in range(first, first + n):
                _stream(d, f"short-{i}", range(3), end_frames=3)
            deadline = time.monotonic() + 30
            while d.runs.active() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not d.runs.active()

        import threading

        runs(0, 10)
        before, names_before = _threads_and_fds(), {t.name for t in threading.enumerate()}
        runs(10, 110)
        after = _threads_and_fds()
        new_threads = sorted({t.name for t in threading.enumerate()} - names_before)
        assert after[0] <= before[0] + 2 and after[1] <= before[1] + 4, (before, after, new_threads)
        assert len(d.runs.all()) == 40  # only the newest finished runs stay, as small records
        from prometheus_client import generate_latest

        scraped = generate_latest(d.metrics.registry).decode()
        # ... and so do their Prometheus label sets (one per run ever served would grow every scrape)
        assert 'run="short-119"' in scraped and 'run="short-0"' not in scraped
        assert scraped.count("lowdose_frames_written_total{") == 40
        assert query_status(cfg.server.endpoints[0])["runs"][-1]["state"] == "finished"

        # an idle unfinished run is closed, and reopened when its hook speaks again
        c = WireClient(cfg.server.endpoints[0])
        c.send(_start("run-idle", owner=p.new_owner_token()))
        c.send_frame("run-idle", 0, ramp(0), t=0)
        c.recv_until(lambda m: 0 in acked([m]))
        deadline = time.monotonic() + 10
        while not d.runs.get("run-idle").store.closed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.runs.get("run-idle").store.closed
        c.send_frame("run-idle", 1, ramp(1), t=1)
        c.recv_until(lambda m: 1 in acked([m]))
        assert d.runs.get("run-idle").store.raw_count() == 2
        c.close()
    finally:
        d.stop()


def _send_run(d, run, n, *, first_seq=0, ack_timeout_s=3.0, owner=None):
    """A real FrameSender: ``n`` ramp frames from ``first_seq``, then the end at ``first_seq + n``."""
    from lowdose.plugins.acquisition.sender import FrameSender
    from lowdose.wire.hook_config import HookConfig

    cfg = HookConfig(endpoint=d.cfg.server.endpoints[0], spool_dir=d.cfg.storage.output_dir.parent / "spool",
                     ack_timeout_s=ack_timeout_s, heartbeat_s=0.25, close_timeout_s=20.0)
    sender = FrameSender(cfg, _start(run, owner=owner), first_seq=first_seq)
    sender.start()
    for seq in range(first_seq, first_seq + n):
        sender.submit(ramp(seq), {"t": seq})
    return sender.finish(timeout=20)


def test_an_acknowledged_end_survives_a_kill_and_the_resumed_run_is_finalized(tmp_path):
    from lowdose.daemon.store import RunStore

    # a slow model, so the daemon stops (as a kill would: nothing in memory survives) before it finalizes
    d = Daemon(_cfg(tmp_path, policy="fifo", batch_size=1, denoiser_options={"delay_ms": 50}))
    d.start()
    try:
        report = _send_run(d, "run-ended", 20)
        assert report is not None and report.ok, report  # the hook heard finished: it will never end the run again
    finally:
        d.stop()
    store = tmp_path / "data" / "run-ended.ome.zarr"
    assert "summary" not in RunStore.read_state(store)

    d2 = Daemon(_cfg(tmp_path, policy="fifo"))
    d2.start()
    try:
        st = d2.runs.get("run-ended")
        assert st is not None and st.end is not None and st.end.frames == 20
        assert d2.wait_idle(15), st.phase
        assert st.finished
    finally:
        d2.stop()
    state = RunStore.read_state(store)
    assert state["summary"]["end_reason"] == "finished" and state["end"]["frames"] == 20
    assert (store / "lowdose" / "tables").exists()
    restored = zarr.open_array(str(store / "restored" / "0"), mode="r")
    assert restored.shape[0] == 20


def test_a_hook_ending_a_run_the_restarted_daemon_holds_complete_is_confirmed(tmp_path):
    # The daemon died after storing the End but before the hook heard finished; its successor resumes
    # the run complete. The hook comes back resending every frame (more than its window), so the reply
    # to its Start, finished, comes before its End; it must count, not the grace after the End.
    from lowdose.wire.protocol import new_owner_token

    token = new_owner_token()
    d = Daemon(_cfg(tmp_path, policy="fifo", batch_size=1, denoiser_options={"delay_ms": 50}))
    d.start()
    try:
        # the finished ack this test's hook "missed"; the same hook (same owner token) comes back below
        _stream(d, "run-reend", range(12), end_frames=12, owner=token)
    finally:
        d.stop()
    from lowdose.daemon.store import RunStore

    state = RunStore.read_state(tmp_path / "data" / "run-reend.ome.zarr")
    assert "summary" not in state and state["end"]["frames"] == 12
    d2 = Daemon(_cfg(tmp_path, policy="fifo"))
    d2.start()
    try:
        t0 = time.monotonic()
        report = _send_run(d2, "run-reend", 12, ack_timeout_s=3.0, owner=token)
        assert report is not None and report.ok and report.finished, report
        assert time.monotonic() - t0 < 3.0  # not the 2 x ack_timeout_s grace
    finally:
        d2.stop()


def test_status_reply_keeps_within_its_budget_unfinished_runs_first():
    from lowdose.daemon.status import fit_runs

    runs = [{"run": f"r{i}", "state": "finished" if i % 10 else "receiving", "store": "x" * 900}
            for i in range(1000)]
    kept, omitted = fit_runs(runs, 128 * 1024)
    assert omitted == 1000 - len(kept) and 0 < len(kept) < 1000
    assert sum(len(json.dumps(r)) + 2 for r in kept) <= 128 * 1024
    names = [r["run"] for r in kept]
    assert {f"r{i}" for i in range(0, 1000, 10)} <= set(names)  # every unfinished run is shown
    assert "r999" in names and "r1" not in names  # then the newest finished, not the oldest
    assert names == sorted(names, key=lambda n: int(n[1:]))  # in the registry's order
    assert fit_runs(runs[:3], 64 * 1024) == (runs[:3], 0)
