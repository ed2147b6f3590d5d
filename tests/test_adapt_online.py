"""Online adaptation (``restore.adapt``) in a real daemon: real sockets, a real store, the real UNet."""

from __future__ import annotations

import time

import numpy as np
import zarr
from typer.testing import CliRunner

from lowdose.cli import app
from lowdose.daemon.client import query_status
from lowdose.daemon.config import load_config
from lowdose.daemon.server import Daemon
from lowdose.models import load
from lowdose.models.checkpoint import load_checkpoint
from lowdose.models.online import OnlineAdaptation
from lowdose.wire import protocol as p
from test_adapt import GAIN, OFFSET, exposures, texture
from wire_client import WireClient, acked

SHAPE = (64, 64)
FRAMES = 16


def _cfg(tmp_path, **restore):
    return load_config(None, overrides={
        "server.endpoints": [f"ipc://{tmp_path}/d.sock"],
        "server.preview_endpoint": None,
        "storage.output_dir": str(tmp_path / "data"),
        "storage.fsync": False,
        "storage.restored_dtype": "float32",
        "restore.denoiser": "unet",
        "restore.device": "cpu",
        "restore.policy": "fifo",
        "restore.batch_size": 2,
        "restore.adapt": True,
        "restore.adapt_cpu_share": 1.0,
        "restore.adapt_steps_per_version": 4,
        "restore.adapt_max_steps": 40,
        "restore.adapt_final_s": 1.0,
        "restore.adapt_frames": 8,
        "restore.adapt_options": {"batch": 2, "crop": 32, "lr": 2e-3, "ema": 0.5},
        **{f"restore.{k}": v for k, v in restore.items()},
    })


def _acquire(d: Daemon, run: str, interval_s: float = 0.15) -> None:
    """A time-lapse of a fine texture at 20 photons per pixel, sent at camera pace, then ended."""
    frames = exposures(texture(SHAPE, seed=4), FRAMES, seed=3)
    c = WireClient(d.cfg.server.endpoints[0])
    c.send(p.Start(run=run, shape=SHAPE, dtype="uint16", instrument="test", sizes={"t": FRAMES},
                   camera_offset=OFFSET, camera_gain=GAIN))
    for t, f in enumerate(frames):
        c.send_frame(run, t, f, t=t)
        time.sleep(interval_s)
    c.send(p.End(run=run, frames=FRAMES))
    _, seen = c.recv_until(lambda m: isinstance(m, p.Ack) and m.finished, timeout=60)
    c.close()
    assert acked(seen) == set(range(FRAMES))  # every raw frame written and acked


def _made_by(store) -> tuple[list[dict], list[int]]:
    """The models that restored frames (provenance) and, per raw frame, which one (finalize's table)."""
    root = zarr.open_group(str(store), mode="r")
    models = root["restored"].attrs["lowdose"]["models"]
    return models, zarr.open_array(str(store / "lowdose" / "tables" / "restored_model"))[:].tolist()


def _adapted_version(entry: dict) -> int:
    return int(entry["parameters"].get("adapted", {}).get("version", 0))


def test_versions_change_during_the_run_and_backfill_ends_it_with_the_final_one(tmp_path, one_torch_thread):
    d = Daemon(_cfg(tmp_path))
    d.start()
    try:
        _acquire(d, "adapt-run")
        assert d.wait_idle(60)
    finally:
        d.stop()
    store = tmp_path / "data" / "adapt-run.ome.zarr"
    models, per_frame = _made_by(store)
    versions = [_adapted_version(m) for m in models]
    # frames were restored by the base model and by adapted versions as they appeared during the run
    assert versions[0] == 0 and max(versions) >= 1 and len(models) >= 2, versions
    assert all(m["version"].endswith(f"+adapted.{v}") for m, v in zip(models[1:], versions[1:]))
    # every frame ends restored, all by the final version (the backfill re-restored the others)
    assert len(per_frame) == FRAMES and -1 not in per_frame
    final = versions.index(max(versions))
    assert set(per_frame) == {final}
    restored = zarr.open_array(str(store / "restored" / "0"), mode="r")
    assert restored.shape[0] == FRAMES and restored.dtype == np.float32
    raw = zarr.open_array(str(store / "raw" / "0"), mode="r")
    assert float(np.abs(restored[:, 0, 0] - raw[:, 0, 0]).mean()) > 1.0  # restored, not copied
    # the same store is a stack for `lowdose adapt`: its calibration comes from the run's metadata
    out = tmp_path / "from-store.pt"
    res = CliRunner().invoke(app, ["adapt", str(store), "--out", str(out), "--steps", "3", "--batch", "2",
                                   "--crop", "32", "--max-minutes", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    on = load_checkpoint(out).data["adapted_on"]
    assert on["frames"] == FRAMES and on["offset_adu"] == OFFSET and on["gain_adu_per_e"] == GAIN
    assert "offset from the run's metadata" in on["calibration"]


class _FailingAdaptation(OnlineAdaptation):
    """Fault injection: the training raises inside after a few steps, as a bug or an OOM would."""

    def _train_step(self, adapter):
        if adapter.step_count >= 6:
            raise RuntimeError("injected failure inside the adaptation")
        return super()._train_step(adapter)


def _failing_unet():
    den = load("unet", device="cpu")
    den.start_adaptation = lambda **settings: _FailingAdaptation(den, **settings)
    return den


def test_a_failing_adaptation_stops_neither_raw_writing_nor_restoration(tmp_path, one_torch_thread, caplog):
    d = Daemon(_cfg(tmp_path, adapt_steps_per_version=3), denoiser_factory=_failing_unet)
    d.start()
    try:
        _acquire(d, "fail-run", interval_s=0.05)
        assert d.wait_idle(60)
        st = query_status(d.cfg.server.endpoints[0])  # the daemon still answers
    finally:
        d.stop()
    run = next(r for r in st["runs"] if r["run"] == "fail-run")
    assert run["frames_written"] == FRAMES
    assert "injected failure inside the adaptation" in caplog.text
    models, per_frame = _made_by(tmp_path / "data" / "fail-run.ome.zarr")
    assert len(per_frame) == FRAMES and -1 not in per_frame  # every frame restored all the same
    # it ends with the newest version that was good before the failure (or the base model)
    assert len(set(per_frame)) == 1 and _adapted_version(models[per_frame[0]]) == max(map(_adapted_version, models))
