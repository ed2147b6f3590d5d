"""Failure paths with real parts: a full disk, CURVE security, metrics, the status command, dying loops."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import zarr

from lowdose.daemon import server
from lowdose.daemon.client import DaemonUnreachable, query_status
from lowdose.daemon.config import load_config
from lowdose.wire.protocol import FrameIndex, Start
from lowdose.daemon.server import Daemon
from lowdose.plugins.acquisition.sender import FrameSender


def _cfg(tmp_path, output_dir, **over):
    return load_config(None, overrides={
        "server.endpoints": [f"ipc://{tmp_path}/d.sock"],
        "server.preview_endpoint": None,
        "storage.output_dir": str(output_dir),
        "restore.denoiser": "identity",
        "hook.endpoint": f"ipc://{tmp_path}/d.sock",
        "hook.spool_dir": str(tmp_path / "spool"),
        "hook.ack_timeout_s": 1.0,
        **over,
    })


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a real ENOSPC, then room again with a remount (needs root, as CI runs)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_loses_no_frame_and_the_daemon_keeps_serving(tmp_path, small_disk):
    cfg = _cfg(tmp_path, small_disk / "data")
    d = Daemon(cfg)
    d.start()
    try:
        rng = np.random.default_rng(1)
        frames = [rng.integers(0, 65535, (128, 128), dtype=np.uint16) for _ in range(40)]  # incompressible
        sender = FrameSender(cfg.hook, Start(run="full", shape=(128, 128), dtype="uint16"))
        sender.start()
        for t, f in enumerate(frames):
            sender.submit(f, FrameIndex(t=t))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            runs = d.status()["runs"]
            if runs and runs[0]["frames_failed"] > 0:
                break
            time.sleep(0.05)
        status = d.status()["runs"][0]
        assert status["frames_failed"] > 0, "the disk never filled: the test proved nothing"
        assert sender.counters().unacked > 0  # the hook still holds what the daemon could not write
        # room again: the hook's retries land every frame
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        report = sender.close(timeout=60)
        assert report.acked == 40 and report.unacked == 0, report
        assert d.wait_idle(30)
        raw = zarr.open_array(str(small_disk / "data" / "full.ome.zarr" / "raw" / "0"), mode="r")
        assert raw.shape[0] == 40
        for t in (0, 17, 39):
            np.testing.assert_array_equal(raw[t, 0, 0], frames[t])
    finally:
        d.stop()


def test_stalled_writer_keeps_hooks_connected(tmp_path):
    # A hung disk (here: the raw write path held) fills the write queue and the daemon stops reading.
    # Its heartbeats must tell the hook it is alive, or the hook reconnects and resends everything.
    cfg = _cfg(tmp_path, tmp_path / "data", **{
        "storage.write_queue_frames": 2, "server.heartbeat_s": 0.1, "hook.ack_timeout_s": 1.0,
    })
    d = Daemon(cfg)
    d.start()
    try:
        sender = FrameSender(cfg.hook, Start(run="stall", shape=(16, 16), dtype="uint16"))
        sender.start()
        sender.submit(np.zeros((16, 16), np.uint16), FrameIndex(t=0))
        deadline = time.monotonic() + 10
        while sender.counters().acked < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        store = d.runs.get("stall").store
        with store._raw_lock:  # the writer thread now blocks inside write_raw
            for t in range(1, 30):
                sender.submit(np.full((16, 16), t, np.uint16), FrameIndex(t=t))
            time.sleep(3.5)  # three and a half ack timeouts
            assert d.status()["runs"][0]["frames_written"] == 1
            stalled = sender.counters()
        assert stalled.unacked == 29 and stalled.reconnects == 0, stalled
        report = sender.close(timeout=20)
        assert report.acked == 30 and report.unacked == 0 and report.counters.reconnects == 0, report
    finally:
        d.stop()


def test_curve_authenticates_microscopes(tmp_path):
    import zmq.auth

    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    keys.mkdir()
    server_pub, server_sec = zmq.auth.create_certificates(str(keys), "daemon")
    scope_pub, scope_sec = zmq.auth.create_certificates(str(keys), "scope1")
    _, intruder_sec = zmq.auth.create_certificates(str(keys), "intruder")
    for secret in (server_sec, scope_sec, intruder_sec):
        os.chmod(secret, 0o600)  # both ends refuse a secret key others can read
    (allowed / "scope1.key").write_bytes(open(scope_pub, "rb").read())
    port = 5700 + (hash(str(tmp_path)) % 200)
    endpoint = f"tcp://127.0.0.1:{port}"
    cfg = _cfg(tmp_path, tmp_path / "data", **{
        "server.endpoints": [endpoint], "hook.endpoint": endpoint,
        "server.curve": {"enabled": True, "server_secret_key": server_sec, "authorized_keys_dir": str(allowed)},
        "hook.curve_server_public_key": server_pub,
    })
    d = Daemon(cfg)
    d.start()
    try:
        pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
        good_cfg = cfg.hook.model_copy(update={"curve_client_secret_key": scope_sec})
        good = FrameSender(good_cfg, Start(run="curve-ok", shape=(64, 64), dtype="uint16"))
        good.start()
        good.submit(pixels, FrameIndex(t=0))
        assert good.close(timeout=20).acked == 1

        bad_cfg = cfg.hook.model_copy(update={"curve_client_secret_key": intruder_sec, "close_timeout_s": 3})
        bad = FrameSender(bad_cfg, Start(run="curve-bad", shape=(64, 64), dtype="uint16"))
        bad.start()
        bad.submit(pixels, FrameIndex(t=0))
        report = bad.close(timeout=3)
        assert report.acked == 0 and report.unacked == 1  # refused, and kept in the spool, not lost
        assert d.runs.get("curve-bad") is None
    finally:
        d.stop()


def test_prometheus_metrics_and_status_command(tmp_path):
    port = 9300 + (hash(str(tmp_path)) % 500)
    cfg = _cfg(tmp_path, tmp_path / "data", **{"metrics.port": port})
    d = Daemon(cfg)
    d.start()
    try:
        sender = FrameSender(cfg.hook, Start(run="metrics", shape=(16, 16), dtype="uint16", instrument="scope-7"))
        sender.start()
        for t in range(5):
            sender.submit(np.full((16, 16), t, np.uint16), FrameIndex(t=t))
        assert sender.close(timeout=20).acked == 5
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'lowdose_frames_written_total{run="metrics"} 5.0' in body
        proc = subprocess.run(
            [sys.executable, "-m", "lowdose.cli", "status", "--endpoint", cfg.hook.endpoint, "--json"],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert '"run": "metrics"' in proc.stdout and '"instrument": "scope-7"' in proc.stdout
    finally:
        d.stop()
    proc = subprocess.run(
        [sys.executable, "-m", "lowdose.cli", "status", "--endpoint", cfg.hook.endpoint, "--timeout", "0.5"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "no lowdose daemon answered" in proc.stderr


def test_acquire_command_runs_a_useq_file_on_the_democamera(tmp_path):
    import yaml

    cfg = _cfg(tmp_path, tmp_path / "data")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    seq = tmp_path / "seq.yaml"
    seq.write_text("time_plan:\n  interval: 0\n  loops: 12\n")
    d = Daemon(cfg)
    d.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lowdose.cli", "acquire", str(seq), "--config", str(config_path), "--run", "acq-1"],
            capture_output=True, text=True, timeout=180,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert d.wait_idle(30)
        raw = zarr.open_array(str(tmp_path / "data" / "acq-1.ome.zarr" / "raw" / "0"), mode="r")
        assert raw.shape == (12, 1, 1, 512, 512)
    finally:
        d.stop()
    bad = tmp_path / "bad.yaml"
    bad.write_text("time_plan: {loops: -3}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lowdose.cli", "acquire", str(bad), "--config", str(config_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "not a valid useq-schema MDASequence" in proc.stderr


# ----------------------------------------------------------------------------- crash-only (rule 2)


def _arm_failure(monkeypatch, owner, name: str) -> threading.Event:
    """``owner.name`` raises RuntimeError once, on its first call after the returned event is set."""
    original = getattr(owner, name)
    armed = threading.Event()

    def fail_once_armed(*args, **kwargs):
        if armed.is_set():
            armed.clear()
            raise RuntimeError(f"injected failure in {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, fail_once_armed)
    return armed


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


# Each loop of the daemon, and one of the calls it makes outside its own error handling: a bug there
# ends the loop (server.RunStore is whatever class the daemon's stores are).
LOOP_DEATHS = {
    "write loop": (lambda: server.RunStore, "write_raw"),
    "restore loop": (lambda: server.RunStore, "unrestored"),
    "I/O thread": (lambda: Daemon, "_handle"),
}


@pytest.mark.parametrize("loop", list(LOOP_DEATHS))
def test_a_dead_loop_silences_the_daemon_and_its_successor_gets_every_frame(tmp_path, monkeypatch, loop):
    owner, method = LOOP_DEATHS[loop]
    armed = _arm_failure(monkeypatch, owner(), method)
    cfg = _cfg(tmp_path, tmp_path / "data", **{"hook.heartbeat_s": 0.25})
    frames = [np.full((16, 16), 1000 + t, np.uint16) for t in range(30)]
    d = Daemon(cfg)
    d.start()
    try:
        sender = FrameSender(cfg.hook, Start(run="crash", shape=(16, 16), dtype="uint16"))
        sender.start()
        for t in range(10):
            sender.submit(frames[t], FrameIndex(t=t))
        assert _wait(lambda: sender.counters().acked == 10, 20)
        armed.set()
        sender.submit(frames[10], FrameIndex(t=10))  # the write loop or the I/O thread dies of this one
        assert d.failed.wait(20), f"the {loop} did not die: the test proved nothing"
        assert loop in str(d.failure) and isinstance(d.failure.error, RuntimeError)
        with pytest.raises(DaemonUnreachable):  # no heartbeat, no status: silence
            query_status(cfg.hook.endpoint, timeout=0.5)
        for t in range(11, 30):  # the acquisition goes on while no daemon answers
            sender.submit(frames[t], FrameIndex(t=t))
    finally:
        d.stop()
    assert _wait(lambda: sender.counters().unacked >= 19, 10)  # the hook holds what was never acked

    d2 = Daemon(cfg)  # what the service manager does: a fresh daemon, same endpoint and stores
    d2.start()
    try:
        report = sender.close(timeout=60)
        assert report.acked == 30 and report.unacked == 0 and report.rejected == 0, report
        assert d2.wait_idle(30)
        assert d2.status()["runs"][0]["state"] == "finished"
    finally:
        d2.stop()
    root = zarr.open_group(str(tmp_path / "data" / "crash.ome.zarr"), mode="r")
    assert root["raw/0"].shape[0] == root["restored/0"].shape[0] == 30
    for t in range(30):
        np.testing.assert_array_equal(root["raw/0"][t, 0, 0], frames[t])


def test_serve_exits_non_zero_with_one_line_when_a_loop_dies(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from lowdose.cli import app
    from lowdose.daemon.restore_loop import RestoreLoop
    from lowdose.daemon.supervisor import EX_SOFTWARE

    # the restore loop's idle work runs as soon as it starts: it dies at once
    _arm_failure(monkeypatch, RestoreLoop, "_finalize_ready_runs").set()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_cfg(tmp_path, tmp_path / "data").model_dump(mode="json")))
    result = CliRunner().invoke(app, ["serve", "--config", str(config_path)])
    assert result.exit_code == EX_SOFTWARE == 70, result.output
    died = [line for line in result.output.splitlines() if "died" in line]
    assert died == [f"error: the restore loop died of RuntimeError: injected failure in _finalize_ready_runs; "
                    f"exiting {EX_SOFTWARE}"], result.output


def test_serve_raises_daemon_failed_and_a_stopped_daemon_is_no_failure(tmp_path, monkeypatch):
    from lowdose.daemon.server import DaemonFailed, serve

    cfg = _cfg(tmp_path, tmp_path / "data")
    armed = _arm_failure(monkeypatch, server.RunStore, "write_raw")

    def send_one_frame(daemon):
        from wire_client import WireClient

        armed.set()
        client = WireClient(cfg.hook.endpoint)
        client.send(Start(run="serve-crash", shape=(8, 8), dtype="uint16"))
        client.send_frame("serve-crash", 0, np.zeros((8, 8), np.uint16))
        client.recv()  # the start's ack; the frame's never comes
        client.close()

    with pytest.raises(DaemonFailed, match="the write loop died of RuntimeError") as info:
        serve(cfg, ready=send_one_frame)
    assert info.value.death.loop == "write loop"
    # stopping is not dying: the supervisor stands down before the loops are stopped
    d = Daemon(cfg)
    d.start()
    d.stop()
    assert d.failure is None and not d.failed.is_set()


def test_with_curve_a_run_belongs_to_the_key_that_started_it(tmp_path):
    # A stolen owner token is not enough: the run is bound to the CURVE key of its first start.
    import zmq
    import zmq.auth

    from lowdose.wire import protocol as p

    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    server_pub, server_sec = zmq.auth.create_certificates(str(keys), "daemon")
    pairs = [zmq.auth.create_certificates(str(keys), name) for name in ("scope1", "scope2")]
    for pub, _ in pairs:
        (allowed / os.path.basename(pub)).write_bytes(open(pub, "rb").read())
    os.chmod(server_sec, 0o600)
    port = 5900 + (hash(str(tmp_path)) % 90)
    endpoint = f"tcp://127.0.0.1:{port}"
    cfg = _cfg(tmp_path, tmp_path / "data", **{
        "server.endpoints": [endpoint],
        "server.curve": {"enabled": True, "server_secret_key": server_sec, "authorized_keys_dir": str(allowed)},
    })
    d = Daemon(cfg)
    d.start()
    ctx = zmq.Context()
    socks = []
    try:
        for _, secret in pairs:
            pub, sec = zmq.auth.load_certificate(secret)
            s = ctx.socket(zmq.DEALER)
            s.curve_secretkey, s.curve_publickey = sec, pub
            s.curve_serverkey = zmq.auth.load_certificate(server_pub)[0]
            s.setsockopt(zmq.LINGER, 0)
            s.connect(endpoint)
            socks.append(s)
        token = p.new_owner_token()
        start = Start(run="curve-own", shape=(8, 8), dtype="uint16", owner=token)
        replies = []
        for s in socks:
            s.send_multipart(p.encode(start))
            assert s.poll(5000)
            replies.append(p.decode(s.recv_multipart())[0])
        assert isinstance(replies[0], p.Ack) and replies[1].code == "not_owner", replies
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.term()
        d.stop()
