"""FrameSender against a real ROUTER socket playing the daemon: acks, errors, silence, restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zmq.auth
from conftest import FakeDaemon, frame_pixels

from lowdose.wire.protocol import Start
from lowdose.plugins.acquisition.sender import FrameSender, SenderPhase, replay_spool
from lowdose.plugins.acquisition.spool import Spool

SHAPE = (32, 48)


def _start(run: str = "run-a") -> Start:
    return Start(run=run, shape=SHAPE, dtype="uint16", instrument="test", source="test", sizes={"t": 0})


def _frame(seq: int) -> np.ndarray:
    return np.random.default_rng(seq).integers(0, 65535, SHAPE, dtype=np.uint16)


def _assert_all_delivered(daemon: FakeDaemon, run: str, n: int) -> None:
    frames = daemon.frames(run)
    assert sorted(frames) == list(range(n))
    for seq, rec in frames.items():
        assert rec.frame.seq == seq and rec.frame.index.t == seq
        np.testing.assert_array_equal(frame_pixels(rec), _frame(seq))


def _submit(sender: FrameSender, n: int, first: int = 0) -> None:
    for i in range(first, first + n):
        assert sender.submit(_frame(i), {"t": i}, exposure_ms=5.0, metadata={"i": i}) == i


def test_frames_arrive_once_in_order_and_are_dropped_when_acked(fake_daemon, hook_cfg_factory):
    cfg = hook_cfg_factory(fake_daemon.endpoint)
    with FrameSender(cfg, _start()) as sender:
        _submit(sender, 200)
    report = sender.wait()
    assert report is not None and report.ok, report
    assert report.acked == 200 and report.frames == 200 and report.spool_dir is None
    _assert_all_delivered(fake_daemon, "run-a", 200)
    assert fake_daemon.duplicates("run-a") == 0
    # in order on the wire
    assert [s for _, s in fake_daemon.receipts] == list(range(200))
    assert fake_daemon.ends["run-a"].frames == 200
    c = report.counters
    assert (c.queued, c.sent, c.acked, c.resent, c.spooled, c.in_memory_bytes) == (200, 200, 200, 0, 0, 0)
    # bookkeeping ends with the unacked frames: nothing per frame survives its ack (a long run stays flat)
    assert len(sender._ledger.unacked) == 0 and len(sender._ledger.mem_order) == 0
    assert c.daemon_alive and c.last_ack_time is not None
    assert not (cfg.spool_dir / "run-a").exists()
    # one identity per connection incarnation, and the DEALER stayed within its window
    (ident,) = fake_daemon.identities
    assert ident.startswith(b"run-a.0.") and len(ident) == len(b"run-a.0.") + 16  # + an unguessable part


def test_spool_takes_frames_past_the_memory_bound_and_empties_after_acks(hook_cfg_factory, tmp_path):
    daemon = FakeDaemon()  # not started yet: the daemon is down
    frame_bytes = SHAPE[0] * SHAPE[1] * 2
    cfg = hook_cfg_factory(daemon.endpoint, memory_mb=10 * frame_bytes / 2**20)
    sender = FrameSender(cfg, _start("run-spool"))
    sender.start()
    try:
        _submit(sender, 100)
        spool = Spool(cfg.spool_dir, "run-spool")
        deadline = time.monotonic() + 10
        while sender.counters().spooled_now < 90 and time.monotonic() < deadline:
            time.sleep(0.01)
        c = sender.counters()
        assert c.spooled_now == 90 and c.spooled == 90
        assert c.in_memory_bytes <= 10 * frame_bytes
        assert spool.seqs() == list(range(90))  # oldest first
        assert spool.read_start().run == "run-spool"
        assert not c.daemon_alive and c.acked == 0

        daemon.start()  # the daemon comes up: everything is sent from RAM and disk
        report = sender.finish(timeout=20)
        assert report is not None and report.ok, report
        _assert_all_delivered(daemon, "run-spool", 100)
        assert report.counters.spooled_now == 0
        assert not spool.dir.exists()
    finally:
        sender.close(timeout=1)
        daemon.close()


def test_silent_daemon_is_presumed_dead_and_everything_is_resent(fake_daemon, hook_cfg_factory):
    cfg = hook_cfg_factory(fake_daemon.endpoint, ack_timeout_s=0.5)
    sender = FrameSender(cfg, _start("run-silent"))
    sender.start()
    try:
        _submit(sender, 20)
        assert fake_daemon.wait_for(lambda: len(fake_daemon.frames("run-silent")) == 20)
        fake_daemon.silent = True  # hung: reads, answers nothing, writes nothing
        _submit(sender, 30, first=20)
        time.sleep(1.5)
        assert sender.counters().reconnects >= 1
        assert not sender.counters().daemon_alive
        fake_daemon.silent = False
        report = sender.finish(timeout=20)
        assert report is not None and report.ok, report
        _assert_all_delivered(fake_daemon, "run-silent", 50)
        assert report.counters.resent >= 1
        assert len(fake_daemon.identities) >= 2  # a fresh socket per Lazy Pirate retry
    finally:
        sender.close(timeout=1)


def test_daemon_restart_with_unknown_run_gets_start_and_unacked_frames_again(fake_daemon, hook_cfg_factory):
    cfg = hook_cfg_factory(fake_daemon.endpoint, ack_timeout_s=0.6)
    sender = FrameSender(cfg, _start("run-restart"))
    sender.start()
    try:
        _submit(sender, 30)
        assert fake_daemon.wait_for(lambda: sender.counters().acked == 30)
        fake_daemon.ack = False  # frames 30.. reach "disk" but their acks never leave
        _submit(sender, 10, first=30)
        assert fake_daemon.wait_for(lambda: len(fake_daemon.frames("run-restart")) >= 38)
        fake_daemon.kill()  # SIGKILL: the run is forgotten, the stored frames stay
        _submit(sender, 20, first=40)
        fake_daemon.ack = True
        fake_daemon.restart()
        report = sender.finish(timeout=20)
        assert report is not None and report.ok, report
        _assert_all_delivered(fake_daemon, "run-restart", 60)
        assert len(fake_daemon.starts) >= 2  # the run was announced again
        c = report.counters
        assert c.reconnects + c.restarts >= 1
        assert c.acked == 60 and c.unacked == 0
    finally:
        sender.close(timeout=1)


def test_daemon_restarted_within_the_ack_timeout_gets_the_frames_it_lost(fake_daemon, hook_cfg_factory):
    # The replacement daemon resumes the run (no unknown_run) and answers heartbeats at once, so the
    # ack timer never runs out; only its new instance id says that the frames in flight are gone.
    cfg = hook_cfg_factory(fake_daemon.endpoint, ack_timeout_s=3.0, heartbeat_s=1.0)  # the shipped defaults
    run = "run-quick-restart"
    sender = FrameSender(cfg, _start(run))
    sender.start()
    try:
        _submit(sender, 30)
        assert fake_daemon.wait_for(lambda: sender.counters().acked == 30)
        fake_daemon.ack = False
        _submit(sender, 10, first=30)
        assert fake_daemon.wait_for(lambda: len(fake_daemon.frames(run)) == 30 + cfg.window_frames)
        fake_daemon.kill()
        with fake_daemon._lock:  # killed before they were durable: the new daemon has none of them
            for seq in range(30, 40):
                fake_daemon.store.pop((run, seq), None)
        fake_daemon.known_runs.add(run)  # resumed from its records
        fake_daemon.ack = True
        time.sleep(0.2)
        fake_daemon.restart()
        report = sender.finish(timeout=8)
        assert report is not None and report.ok, report
        _assert_all_delivered(fake_daemon, run, 40)
        assert report.counters.reconnects == 0  # the instance change, not the Lazy Pirate timeout, resent them
        assert report.counters.daemon == fake_daemon.id
    finally:
        sender.close(timeout=1)


def test_unknown_run_error_triggers_one_restart(fake_daemon, hook_cfg_factory):
    cfg = hook_cfg_factory(fake_daemon.endpoint, ack_timeout_s=5.0)
    sender = FrameSender(cfg, _start("run-forgot"))
    sender.start()
    try:
        _submit(sender, 10)
        assert fake_daemon.wait_for(lambda: sender.counters().acked == 10)
        fake_daemon.known_runs.clear()  # the daemon forgets the run but stays connected
        _submit(sender, 10, first=10)
        assert fake_daemon.wait_for(lambda: sender.counters().acked == 20, timeout=5)
        c = sender.counters()
        assert c.restarts >= 1 and c.reconnects == 0
        assert len(fake_daemon.starts) == 1 + c.restarts
        report = sender.finish(timeout=10)
        assert report is not None and report.ok
        _assert_all_delivered(fake_daemon, "run-forgot", 20)
    finally:
        sender.close(timeout=1)


def test_rejected_frame_is_kept_aside_and_never_resent(hook_cfg_factory):
    daemon = FakeDaemon(reject={5}).start()
    cfg = hook_cfg_factory(daemon.endpoint)
    try:
        sender = FrameSender(cfg, _start("run-reject"))
        sender.start()
        _submit(sender, 12)
        report = sender.finish(timeout=10)
        assert report is not None
        assert report.rejected == 1 and report.acked == 11 and report.unacked == 0 and report.finished
        assert not report.ok
        assert sorted(daemon.frames("run-reject")) == [s for s in range(12) if s != 5]
        assert [s for _, s in daemon.receipts].count(5) == 1
        spool = Spool(cfg.spool_dir, "run-reject")
        assert spool.rejected() == [5] and spool.seqs() == []
        assert report.spool_dir == spool.dir
        assert "invalid" in (spool.dir / "rejected" / "000000000005.reason.txt").read_text()
        sender.close()
    finally:
        daemon.close()


def test_submit_is_constant_time_and_never_blocks_without_a_daemon(hook_cfg_factory):
    daemon = FakeDaemon(keep_pixels=False)  # not started: nobody is listening
    cfg = hook_cfg_factory(daemon.endpoint, memory_mb=1e6)
    small = np.zeros((16, 16), np.uint16)
    big = np.zeros((1024, 1024), np.uint16)  # 2 MiB: a copy alone would take ~100 us
    sender = FrameSender(cfg, _start("run-o1").model_copy(update={"shape": (16, 16)}))
    sender.start()
    try:
        timings: dict[str, list[float]] = {"small": [], "big": []}
        for name, arr in (("small", small), ("big", big)) * 2:
            for i in range(150):
                t0 = time.perf_counter()
                sender.submit(arr, {"t": i})
                timings[name].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in timings.items()}
        assert med["small"] < 100e-6 and med["big"] < 100e-6, med
        assert med["big"] < 5 * med["small"] + 20e-6, med
        assert sender.counters().queued == 600
        assert sender.counters().sent == 0
        daemon.start()
        report = sender.finish(timeout=30)
        assert report is not None and report.acked == 600 and report.unacked == 0
    finally:
        sender.close(timeout=1)
        daemon.close()


def test_unacked_frames_stay_in_the_spool_at_close_and_replay_later(hook_cfg_factory):
    daemon = FakeDaemon()
    cfg = hook_cfg_factory(daemon.endpoint)
    sender = FrameSender(cfg, _start("run-replay"))
    sender.start()
    _submit(sender, 25)
    report = sender.close(timeout=0.5)  # nobody listening
    assert report is not None and report.unacked == 25 and not report.finished
    spool = Spool(cfg.spool_dir, "run-replay")
    assert report.spool_dir == spool.dir and spool.seqs() == list(range(25))
    assert spool.read_end() is not None and spool.read_end().frames == 25

    daemon.start()
    try:
        reports = replay_spool(cfg.spool_dir, cfg, timeout=20)
        assert len(reports) == 1 and reports[0].ok, reports
        _assert_all_delivered(daemon, "run-replay", 25)
        assert daemon.ends["run-replay"].frames == 25
        assert not spool.dir.exists()
    finally:
        daemon.close()


def test_spooled_frames_survive_a_killed_hook_process(hook_cfg_factory, tmp_path):
    daemon = FakeDaemon()
    frame_bytes = SHAPE[0] * SHAPE[1] * 2
    cfg = hook_cfg_factory(daemon.endpoint, memory_mb=5 * frame_bytes / 2**20)
    script = textwrap.dedent(
        f"""
        import os, signal, time
        import numpy as np
        from lowdose.wire.hook_config import HookConfig
        from lowdose.wire.protocol import Start
        from lowdose.plugins.acquisition.sender import FrameSender
        cfg = HookConfig.model_validate_json({cfg.model_dump_json()!r})
        s = FrameSender(cfg, Start(run="run-crash", shape={SHAPE}, dtype="uint16"))
        s.start()
        for i in range(40):
            s.submit(np.random.default_rng(i).integers(0, 65535, {SHAPE}, dtype=np.uint16), {{"t": i}})
        while s.counters().spooled_now < 35:
            time.sleep(0.01)
        print("spooled", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "spooled" in proc.stdout
    spool = Spool(cfg.spool_dir, "run-crash")
    assert spool.seqs() == list(range(35))
    assert spool.read_end() is None
    assert not any(p.name.endswith(".tmp") for p in spool.dir.iterdir())

    daemon.start()
    try:
        reports = replay_spool(spool.dir, cfg, timeout=20)
        assert len(reports) == 1 and reports[0].acked == 35 and reports[0].unacked == 0
        frames = daemon.frames("run-crash")
        assert sorted(frames) == list(range(35))
        for seq, rec in frames.items():
            np.testing.assert_array_equal(frame_pixels(rec), _frame(seq))
        assert "run-crash" not in daemon.ends  # the original run never ended
    finally:
        daemon.close()


def test_curve_encrypted_connection(hook_cfg_factory, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(keys, "server")
    _, client_secret = zmq.auth.create_certificates(keys, "scope")
    os.chmod(client_secret, 0o600)  # the hook refuses a secret key others can read
    _, secret = zmq.auth.load_certificate(server_secret)
    daemon = FakeDaemon(curve_secret=secret).start()
    try:
        cfg = hook_cfg_factory(
            daemon.endpoint, curve_server_public_key=server_public, curve_client_secret_key=client_secret
        )
        with FrameSender(cfg, _start("run-curve")) as sender:
            _submit(sender, 10)
        assert sender.wait().ok
        _assert_all_delivered(daemon, "run-curve", 10)
        # a client without the keys gets nowhere
        plain = hook_cfg_factory(daemon.endpoint, close_timeout_s=0.5)
        report = FrameSender(plain, _start("run-plain")).close(timeout=0.5)
        assert report is not None and not report.finished
        assert daemon.frames("run-plain") == {}
    finally:
        daemon.close()


@pytest.mark.parametrize("window", [1, 3])
def test_window_limits_frames_in_flight(hook_cfg_factory, window):
    daemon = FakeDaemon(ack=False).start()
    cfg = hook_cfg_factory(daemon.endpoint, window_frames=window, ack_timeout_s=30)
    sender = FrameSender(cfg, _start(f"run-w{window}"))
    sender.start()
    try:
        _submit(sender, 20)
        time.sleep(0.5)
        assert len(daemon.receipts) == window
        assert sender.counters().in_flight == window
        daemon.ack = True
    finally:
        sender.abort_to_spool()
        daemon.close()
    assert Spool(cfg.spool_dir, f"run-w{window}").seqs() == list(range(20))


def test_unconfirmed_end_stops_after_a_short_grace_with_nothing_at_risk(hook_cfg_factory):
    daemon = FakeDaemon(confirm_end=False).start()
    cfg = hook_cfg_factory(daemon.endpoint, ack_timeout_s=0.3, close_timeout_s=30)
    try:
        sender = FrameSender(cfg, _start("run-noconfirm"))
        sender.start()
        _submit(sender, 10)
        t0 = time.monotonic()
        report = sender.finish()
        assert time.monotonic() - t0 < 5  # not the 30 s close timeout
        assert report is not None and report.acked == 10 and report.unacked == 0
        assert not report.finished and report.spool_dir is None
        assert "did not confirm" in (report.counters.last_error or "")
        assert daemon.ends["run-noconfirm"].frames == 10
    finally:
        daemon.close()


def test_phase_goes_from_announcing_to_settled_and_the_end_is_public(fake_daemon, hook_cfg_factory):
    sender = FrameSender(hook_cfg_factory(fake_daemon.endpoint), _start("run-phase"))
    assert sender.phase is SenderPhase.ANNOUNCING and not sender.end_requested
    sender.start()
    try:
        _submit(sender, 5)
        assert fake_daemon.wait_for(lambda: sender.counters().acked == 5)
        assert sender.phase is SenderPhase.STREAMING
        report = sender.finish(timeout=10)
        assert report is not None and report.ok
        assert sender.end_requested and sender.phase is SenderPhase.SETTLED
        with pytest.raises(RuntimeError):
            sender.submit(_frame(0))
    finally:
        sender.close(timeout=1)


def test_phase_is_abandoned_when_the_close_timeout_leaves_frames_unacked(hook_cfg_factory):
    daemon = FakeDaemon()  # never started: nobody answers
    sender = FrameSender(hook_cfg_factory(daemon.endpoint), _start("run-abandon"))
    sender.start()
    try:
        _submit(sender, 3)
        report = sender.close(timeout=0.3)
        assert report is not None and report.unacked == 3
        assert sender.phase is SenderPhase.ABANDONED
    finally:
        daemon.close()


def test_frames_submitted_after_the_sender_thread_died_are_kept_in_the_spool(hook_cfg_factory, tmp_path):
    """Rule 2 even when the sender is gone: a frame submitted after its thread stopped (here it could not
    load its key) must land in the spool and be reported unacked, not vanish in the hand-off queue."""
    keys = tmp_path / "keys"
    keys.mkdir()
    server_public, _ = zmq.auth.create_certificates(keys, "server")
    _, client_secret = zmq.auth.create_certificates(keys, "scope")
    os.chmod(client_secret, 0o644)  # refused: the thread fails as it connects
    cfg = hook_cfg_factory("tcp://127.0.0.1:1", curve_server_public_key=server_public,
                           curve_client_secret_key=client_secret)
    sender = FrameSender(cfg, _start("run-orphan"))
    sender.start()
    deadline = time.monotonic() + 10
    while sender.phase is not SenderPhase.ABANDONED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sender.phase is SenderPhase.ABANDONED
    time.sleep(0.1)  # the thread's last words (spooling, report) are said before we submit
    seqs = [sender.submit(_frame(k), {"t": k}) for k in range(3)]
    report = sender.close(timeout=1.0)
    assert report.unacked == 3 and "chmod 600" in (report.counters.last_error or "")
    assert Spool(cfg.spool_dir, "run-orphan").seqs() == seqs
