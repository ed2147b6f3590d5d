"""The command line as a new user meets it: messages instead of tracebacks, private keys,
progress, whole store paths, a live status, replay, and a demo that tidies up after itself."""

from __future__ import annotations

import json
import os
import stat
import tempfile

import numpy as np
import pytest
import yaml
import zmq.auth
from typer.testing import CliRunner

from conftest import free_tcp_endpoint
from lowdose.cli import app
from lowdose.daemon.config import load_config
from lowdose.daemon.server import Daemon
from lowdose.plugins.acquisition.sender import FrameSender
from lowdose.wire.protocol import FrameIndex, Start

runner = CliRunner()


def invoke(*args: str, **env: str):
    return runner.invoke(app, [str(a) for a in args], env=env or None)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _cfg(tmp_path, **over):
    return load_config(None, overrides={
        "server.endpoints": [f"ipc://{tmp_path}/d.sock"],
        "server.preview_endpoint": None,
        "storage.output_dir": str(tmp_path / "data"),
        "restore.denoiser": "identity",
        "hook.endpoint": f"ipc://{tmp_path}/d.sock",
        "hook.spool_dir": str(tmp_path / "spool"),
        "hook.ack_timeout_s": 1.0,
        **over,
    })


def _config_file(tmp_path, cfg) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return str(path)


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in result.stderr, result.stderr


# ----------------------------------------------------------------------------- item 4: keys


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_keys_are_private_and_an_existing_pair_is_kept(tmp_path):
    d = tmp_path / "keys"
    result = invoke("keys", d, "--name", "scope1")
    assert result.exit_code == 0, result.output
    public, secret = d / "scope1.key", d / "scope1.key_secret"
    assert _mode(secret) == 0o600 and _mode(d) == 0o700 and _mode(public) == 0o644
    assert zmq.auth.load_certificate(str(secret))[1] is not None
    before = secret.read_bytes()

    _one_line_error(invoke("keys", d, "--name", "scope1"), "--force")
    assert secret.read_bytes() == before

    assert invoke("keys", d, "--name", "scope1", "--force").exit_code == 0
    assert secret.read_bytes() != before and _mode(secret) == 0o600
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []  # no staging folder left


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_daemon_and_hook_refuse_a_secret_key_others_can_read(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    server_pub, server_sec = zmq.auth.create_certificates(str(keys), "daemon")
    _, scope_sec = zmq.auth.create_certificates(str(keys), "scope")
    for secret in (server_sec, scope_sec):
        os.chmod(secret, 0o644)
    endpoint = free_tcp_endpoint()
    cfg = _cfg(tmp_path, **{
        "server.endpoints": [endpoint], "hook.endpoint": endpoint,
        "server.curve": {"enabled": True, "server_secret_key": server_sec, "authorized_keys_dir": str(keys)},
        "hook.curve_server_public_key": server_pub, "hook.curve_client_secret_key": scope_sec,
    })
    config = _config_file(tmp_path, cfg)
    _one_line_error(invoke("serve", "--config", config), f"chmod 600 {server_sec}")

    sender = FrameSender(cfg.hook, Start(run="perm", shape=(8, 8), dtype="uint16"))
    sender.start()
    sender.submit(np.zeros((8, 8), np.uint16), FrameIndex(t=0))
    report = sender.close(timeout=1.0)
    assert report.unacked == 1 and f"chmod 600 {scope_sec}" in report.counters.last_error  # kept, not sent

    seq = tmp_path / "seq.yaml"
    seq.write_text("time_plan: {interval: 0, loops: 2}\n")
    _one_line_error(invoke("acquire", seq, "--config", config), f"chmod 600 {scope_sec}")


# ----------------------------------------------------------------------------- items 5, 6: user errors


def test_user_errors_are_one_escaped_line_with_exit_2(tmp_path):
    _one_line_error(invoke("status", "--endpoint", "foo"), "--endpoint", "tcp://")
    _one_line_error(invoke("status", "--endpoint", "tcp://foo", "--timeout", "0.2"), "tcp://127.0.0.1:5571")

    out = tmp_path / "out" / "demo.ome.zarr"
    bad = invoke("demo", "--denoiser", "foo", "--output", out)
    _one_line_error(bad, "--denoiser", "lowdose denoisers")
    assert "restore.denoiser" not in bad.output and not out.parent.exists()
    out.mkdir(parents=True)
    _one_line_error(invoke("demo", "--output", out, "--frames", "1"), "--overwrite")

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("server:\n  endpoints: [a: b: c]\n")
    _one_line_error(invoke("config", "--check", bad_yaml), "expected ',' or ']', but got ':'")


def test_debug_shows_the_traceback_and_bugs_keep_theirs(monkeypatch):
    from lowdose.console import UserError

    result = invoke("--debug", "status", "--endpoint", "foo")
    assert isinstance(result.exception, UserError)

    def broken():
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("lowdose.denoiser_list.list_denoisers", broken)
    result = invoke("denoisers")
    assert isinstance(result.exception, ZeroDivisionError)  # not dressed up as a user error


# ----------------------------------------------------------------------------- item 9: small things


def test_version_and_denoisers_say_what_they_are():
    from lowdose import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"lowdose {__version__}"
    result = invoke("denoisers")
    assert result.exit_code == 0, result.output
    assert "non-local means" in result.stdout and "restored = raw" in result.stdout
    assert "device here: " in result.stdout and "auto picks " in result.stdout


def test_replay_sends_a_spool_to_the_daemon(tmp_path, fake_daemon, hook_cfg_factory):
    nobody = hook_cfg_factory(free_tcp_endpoint(), close_timeout_s=0.3)
    sender = FrameSender(nobody, Start(run="offline", shape=(8, 8), dtype="uint16"))
    sender.start()
    for t in range(3):
        sender.submit(np.full((8, 8), t, np.uint16), FrameIndex(t=t))
    assert sender.close(timeout=0.3).unacked == 3

    result = invoke("replay", nobody.spool_dir, "--endpoint", fake_daemon.endpoint, "--timeout", "10")
    assert result.exit_code == 0, result.output
    assert "run offline: 3 of 3 frames acked" in result.stdout
    assert sorted(fake_daemon.frames("offline")) == [0, 1, 2]
    _one_line_error(invoke("replay", tmp_path / "nope"), "spool_dir")


# ----------------------------------------------------------------------------- items 7, 8: a real daemon


@pytest.fixture
def daemon(tmp_path):
    # a long folder name: the store path must survive a 120-column terminal whole
    cfg = _cfg(tmp_path, **{"storage.output_dir": str(tmp_path / ("stores-of-a-facility-" * 3))})
    d = Daemon(cfg)
    d.start()
    yield cfg
    d.stop()


def test_status_shows_whole_paths_live_and_backfill_and_watches(daemon):
    endpoint = daemon.hook.endpoint
    empty = invoke("status", "--endpoint", endpoint, COLUMNS="120")
    assert empty.exit_code == 0 and "no runs yet" in empty.stdout, empty.output

    sender = FrameSender(daemon.hook, Start(run="cells-1", shape=(16, 16), dtype="uint16"))
    sender.start()
    for t in range(4):
        sender.submit(np.full((16, 16), t, np.uint16), FrameIndex(t=t))
    assert sender.close(timeout=20).acked == 4

    result = invoke("status", "--endpoint", endpoint, COLUMNS="120")
    assert result.exit_code == 0, result.output
    store = str(daemon.storage.output_dir / "cells-1.ome.zarr")
    assert len(store) > 120 - 20 and store in result.stdout
    assert "live + backfill" in result.stdout and "cells-1" in result.stdout

    watched = invoke("status", "--endpoint", endpoint, "--watch", "--interval", "0.05", "--count", "3")
    assert watched.exit_code == 0, watched.output
    assert "cells-1" in watched.stdout and "Ctrl-C to stop" in watched.stdout
    gone = invoke("status", "--endpoint", free_tcp_endpoint(), "--watch", "--count", "1", "--timeout", "0.2")
    assert gone.exit_code == 0 and "still trying" in gone.stdout


def test_status_says_frames_wait_in_the_spool_and_why(tmp_path, daemon):
    config = _config_file(tmp_path, daemon)
    offline = daemon.hook.model_copy(update={"endpoint": free_tcp_endpoint(), "close_timeout_s": 0.3})
    sender = FrameSender(offline, Start(run="offline-2", shape=(8, 8), dtype="uint16"))
    sender.start()
    for t in range(5):
        sender.submit(np.full((8, 8), t, np.uint16), FrameIndex(t=t))
    assert sender.close(timeout=0.3).unacked == 5

    down = invoke("status", "--config", config, "--endpoint", offline.endpoint, "--timeout", "0.2")
    _one_line_error(down, "no lowdose daemon answered")  # still an error: no daemon there ...
    assert "spool of offline-2: 5 frames waiting" in down.stdout  # ... but the frames waiting here are said
    assert f"lowdose replay {daemon.hook.spool_dir}" in down.stdout

    up = invoke("status", "--config", config, "--json")
    assert up.exit_code == 0, up.output
    (spool,) = json.loads(up.stdout)["local_spools"]
    assert spool["run"] == "offline-2" and spool["pending"] == 5 and spool["rejected"] == 0 and spool["ended"]

    assert invoke("replay", daemon.hook.spool_dir, "--config", config).exit_code == 0
    after = invoke("status", "--config", config)
    assert after.exit_code == 0 and "offline-2" in after.stdout and "waiting" not in after.stdout, after.output


def test_acquire_shows_progress_and_where_the_store_is(tmp_path, daemon):
    seq = tmp_path / "seq.yaml"
    seq.write_text("time_plan: {interval: 0, loops: 5}\n")
    config = _config_file(tmp_path, daemon)
    _one_line_error(invoke("acquire", seq, "--config", config, "--run", "acq[2]"), "--run")
    result = invoke("acquire", seq, "--config", config, "--run", "acq-2", COLUMNS="400")
    assert result.exit_code == 0, result.output
    assert "FinishReport(" not in result.stdout
    assert "acquired" in result.stdout and "acked by the daemon" in result.stdout and "5/5" in result.stdout
    assert str(daemon.storage.output_dir / "acq-2.ome.zarr") in result.stdout
    assert "acked 5" in result.stdout and "left unacked 0" in result.stdout


def test_demo_keeps_its_log_next_to_the_store_and_nothing_in_tmp(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "d.ome.zarr"
    result = invoke("demo", "--frames", "3", "--size", "64", "--denoiser", "identity", "--output", out,
                    COLUMNS="400")
    assert result.exit_code == 0, result.output
    log = tmp_path / "d.daemon.log"
    assert log.is_file() and str(log) in result.stdout
    assert list(scratch.iterdir()) == []
