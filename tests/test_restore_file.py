"""``lowdose restore STACK --out OUT.tif``: a stack on disk restored by the daemon's own plug-ins into
float32, with nothing lost on a bad input or a failure half-way."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from lowdose.cli import app
from lowdose.models.simulate import CameraModel, held_out_set
from lowdose.restore_file import partial_path, restore_file

runner = CliRunner()
CAMERA = CameraModel(offset=100.0, gain=2.0)


def invoke(*args):
    return runner.invoke(app, ["restore", *[str(a) for a in args]])


def _psnr(a: np.ndarray, truth: np.ndarray) -> float:
    peak = float(truth.max() - truth.min())
    return float(10 * np.log10(peak**2 / np.mean((a.astype(np.float64) - truth) ** 2)))


@pytest.fixture(scope="module")
def stack():
    return held_out_set(3, 128, 10.0, CAMERA, seed=4321)


def test_a_tiff_stack_is_restored_into_float32_and_beats_the_raw(tmp_path, stack, one_torch_thread):
    noisy, clean = stack
    tifffile.imwrite(tmp_path / "s.tif", noisy)
    for name in ("classical", "auto"):
        r = invoke(tmp_path / "s.tif", "--out", tmp_path / f"{name}.tif", "--denoiser", name)
        assert r.exit_code == 0, r.output
        assert "3 frame(s) of 128x128" in r.output and "offset and gain estimated from the noise of 3 frame(s)" in r.output
        out = tifffile.imread(tmp_path / f"{name}.tif")
        assert out.shape == noisy.shape and out.dtype == np.float32
        assert np.any(out != np.rint(out)), "the restoration keeps sub-ADU values"
        for i in range(3):
            assert _psnr(out[i], clean[i]) > _psnr(noisy[i], clean[i]) + 5, (name, i)
    assert not list(tmp_path.glob("*.partial.*"))
    assert (tifffile.imread(tmp_path / "s.tif") == noisy).all(), "the input is untouched"


def test_a_single_frame_stays_2d_and_npy_works(tmp_path, stack):
    noisy, _ = stack
    tifffile.imwrite(tmp_path / "one.tif", noisy[0])
    r = invoke(tmp_path / "one.tif", "-o", tmp_path / "one_r.npy", "--denoiser", "classical", "--offset", 100, "--gain", 2)
    assert r.exit_code == 0, r.output
    assert "offset 100.0 ADU, gain 2 ADU/e-: offset given; gain given" in r.output
    assert np.load(tmp_path / "one_r.npy").shape == noisy.shape[1:]


def test_a_hyperstack_keeps_its_shape_and_axes(tmp_path, stack):
    noisy, clean = stack
    planes = np.concatenate([noisy, noisy[::-1]]).reshape(3, 2, *noisy.shape[1:])
    tifffile.imwrite(tmp_path / "h.tif", planes, imagej=True, metadata={"axes": "TCYX"})
    r = invoke(tmp_path / "h.tif", "-o", tmp_path / "h_r.tif", "--denoiser", "classical", "--offset", 100, "--gain", 2)
    assert r.exit_code == 0, r.output
    with tifffile.TiffFile(tmp_path / "h_r.tif") as tif:
        assert tif.series[0].axes == "TCYX" and tif.series[0].shape == planes.shape
        out = tif.asarray()
    flat_truth = np.concatenate([clean, clean[::-1]])
    for i, plane in enumerate(out.reshape(-1, *noisy.shape[1:])):
        assert _psnr(plane, flat_truth[i]) > _psnr(planes.reshape(-1, *noisy.shape[1:])[i], flat_truth[i]) + 5, i


def test_the_diffusion_model_writes_its_uncertainty_beside(tmp_path, stack, one_torch_thread):
    noisy, _ = stack
    np.save(tmp_path / "s.npy", noisy[:1, :64, :64])
    r = invoke(tmp_path / "s.npy", "-o", tmp_path / "d.tif", "--denoiser", "ddpm", "--options", '{"samples": 2}')
    assert r.exit_code == 0, r.output
    unc = tifffile.imread(tmp_path / "d.uncertainty.tif")
    assert unc.shape == (1, 64, 64) and (unc > 0).all()


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("rank1", "expected (T, Y, X) or (Y, X)"),
    ("suffix", "write a .tif, .tiff or .npy"),
    ("same", "is the input stack"),
    ("exists", "--force to replace it"),
    ("no_folder", "does not exist; create it first"),
    ("bad_json", "--options is not JSON"),
    ("bad_denoiser", "unknown denoiser"),
])
def test_bad_input_is_one_line_with_exit_2_and_nothing_written(tmp_path, stack, case, message):
    noisy, _ = stack
    src = tmp_path / "s.tif"
    tifffile.imwrite(src, noisy[0, 0] if case == "rank1" else noisy)
    out = tmp_path / "r.tif"
    extra: list[object] = []
    if case == "missing":
        src = tmp_path / "nope.tif"
    elif case == "suffix":
        out = tmp_path / "r.png"
    elif case == "same":
        out = src
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "no_folder":
        out = tmp_path / "missing" / "r.tif"
    elif case == "bad_json":
        extra = ["--options", "{samples"]
    elif case == "bad_denoiser":
        extra = ["--denoiser", "nope"]
    r = invoke(src, "--out", out, "--denoiser", "classical", *extra) if case != "bad_denoiser" else invoke(src, "--out", out, *extra)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    if case == "exists":
        assert out.read_bytes() == b"keep me"
    elif case != "same":
        assert not out.exists()
    assert not list(tmp_path.rglob("*.partial.*"))


def test_the_camera_is_estimated_once_for_the_whole_stack(stack):
    from lowdose.restore_file import _calibration

    noisy, _ = stack
    counts = noisy.astype(np.float32)
    offset, gain, how = _calibration(counts, None, None, {})
    assert 0.75 < gain / CAMERA.gain < 1.33 and abs(offset - CAMERA.offset) < 15, (offset, gain)
    assert "offset and gain estimated from the noise of 3 frame(s)" in how
    offset2, gain2, how2 = _calibration(counts, None, 2.0, {})
    assert gain2 == 2.0 and abs(offset2 - CAMERA.offset) < 15 and "gain given; offset estimated" in how2
    assert _calibration(counts, None, None, {"offset": 100.0, "gain": 2.0}) == (
        100.0, 2.0, "offset from the run's metadata; gain from the run's metadata")
    flat = np.full((2, 64, 64), 100.0, np.float32)
    assert _calibration(flat, None, None, {})[:2] == (None, None)


def test_a_failure_half_way_leaves_no_file_that_passes_for_whole(tmp_path, stack, monkeypatch):
    from lowdose.plugins.denoisers import registry

    real = registry.create_denoiser

    def failing_second_batch(name, options=None, device="auto"):
        den = real("classical", options, device)
        calls = []

        class Failing:
            info = den.info

            def restore(self, frames, *, offset=None, gain=None):
                calls.append(1)
                if len(calls) == 2:
                    raise RuntimeError("injected failure on the second frame")
                return den.restore(frames, offset=offset, gain=gain)

        return Failing()

    monkeypatch.setattr(registry, "create_denoiser", failing_second_batch)
    noisy, _ = stack
    tifffile.imwrite(tmp_path / "s.tif", noisy)
    with pytest.raises(RuntimeError, match="injected"):
        restore_file(tmp_path / "s.tif", tmp_path / "r.tif", denoiser="classical")
    assert not (tmp_path / "r.tif").exists()
    assert not partial_path(tmp_path / "r.tif").exists()
