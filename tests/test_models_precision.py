"""Restored precision: the default store keeps a model's sub-ADU values exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from lowdose.daemon.config import StorageConfig, load_config
from lowdose.daemon.store import RunStore
from lowdose.models import load
from lowdose.models.simulate import CameraModel, Specimen, expose
from lowdose.plugins.denoisers.interface import DenoiserInfo
from lowdose.wire.protocol import Frame, FrameIndex, Start

ROOT = Path(__file__).resolve().parents[1]
Y, X = 32, 48

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_default_restored_dtype_is_float32_in_code_and_in_both_config_files() -> None:
    assert StorageConfig().restored_dtype == "float32"
    assert load_config(None).storage.restored_dtype == "float32"
    for path in (ROOT / "config.yaml", ROOT / "lowdose" / "config.yaml"):
        assert yaml.safe_load(path.read_text())["storage"]["restored_dtype"] == "float32", path


def test_fractional_restored_values_survive_the_store_round_trip(tmp_path: Path) -> None:
    start = Start(run="prec", instrument="scope", source="test", shape=(Y, X), dtype="uint16")
    store = RunStore.open(tmp_path, start, StorageConfig(fsync=False), "0-test")
    rng = np.random.default_rng(0)
    raw = [(100 + rng.poisson(3, (Y, X))).astype(np.uint16) for _ in range(3)]
    # restored values a model returns at ~3 photons/pixel: fractions of an ADU, some below the offset
    restored = [(100.0 + rng.gamma(2.0, 1.5, (Y, X)) - 0.7).astype(np.float32) for _ in range(3)]
    frames = [(Frame(run="prec", seq=t, index=FrameIndex(t=t), shape=(Y, X), dtype="uint16"), raw[t]) for t in range(3)]
    store.write_raw(frames)
    assert store.restored_dtype == np.float32
    info = DenoiserInfo(name="unet", version="1", checksum="sha256:x", parameters={})
    store.write_restored([(FrameIndex(t=t), restored[t], None) for t in range(3)], info, "live")
    store.close()
    arr = zarr.open_group(str(tmp_path / "prec.ome.zarr"), mode="r")["restored/0"]
    assert arr.dtype == np.float32
    for t in range(3):
        got = arr[t, 0, 0]
        np.testing.assert_array_equal(got, restored[t])  # bit-exact
        assert np.mean(np.abs(got - np.rint(got)) > 0.05) > 0.5  # fractions really were kept
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "prec.ome.zarr"), mode="r")["raw/0"][1, 0, 0], raw[1])


def test_float_restoration_has_no_banding_at_a_few_photons() -> None:
    """The shipped unet on float32 input gives many distinct levels between neighbouring ADU (no posterising)."""
    truth = Specimen((96, 96), kind="nuclei", seed=4).truth(0.0)
    frame = expose(truth, 5.0, CameraModel(), np.random.default_rng(1))
    den = load("unet", device="cpu")
    out = den.restore(frame[None].astype(np.float32), offset=100.0, gain=1.0).frames[0]
    assert out.dtype == np.float32
    whole_adu_levels = np.unique(np.rint(out)).size  # what a uint16 image could show
    assert np.unique(out).size > 20 * whole_adu_levels, (np.unique(out).size, whole_adu_levels)
