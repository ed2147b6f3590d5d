"""config.yaml is validated: unknown keys and bad values name their key path."""

import subprocess
import sys

import pytest

from lowdose.daemon.config import ConfigError, LowdoseConfig, load_config


def test_shipped_default_config_is_valid_and_documents_every_section():
    cfg = load_config(None)
    assert isinstance(cfg, LowdoseConfig)
    from lowdose.daemon.config import default_config_text

    text = default_config_text()
    for section in ("server:", "storage:", "restore:", "metrics:", "hook:"):
        assert section in text


def test_unknown_key_and_bad_values_are_named(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("restore:\n  polcy: fifo\n  batch_size: 0\nserver:\n  endpoints: ['http://x']\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "restore.polcy: unknown key" in text
    assert "restore.batch_size" in text
    assert "server.endpoints" in text and "tcp://" in text


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_cli_reports_invalid_config_and_exits_nonzero(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("storage:\n  compression: brotli\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lowdose.cli", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "storage.compression" in proc.stderr
