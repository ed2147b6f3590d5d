"""``lowdose adapt``: self-supervised adaptation of a shipped network to a user's stack, on a CPU."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage
from typer.testing import CliRunner

from lowdose.cli import app
from lowdose.models import load
from lowdose.models.adapt import AdaptConfig, Adapter, run_adaptation
from lowdose.models.adapt_data import AdaptError, estimate_camera, read_stack
from lowdose.models.checkpoint import load_checkpoint

OFFSET, GAIN = 100.0, 2.0


def texture(shape, seed=0):
    """Fine isotropic texture (chromatin-like), a structure the simulator the UNet learned never renders."""
    rng = np.random.default_rng(seed)
    t = ndimage.gaussian_filter(rng.random(shape), 1.2)
    return ((t - t.min()) / np.ptp(t)) ** 2


def exposures(truth, n, photons=20.0, seed=1):
    rng = np.random.default_rng(seed)
    e = rng.poisson(np.clip(truth, 0, None)[None] * photons, (n, *truth.shape)) + rng.normal(0, 1.5, (n, *truth.shape))
    return np.clip(np.rint(OFFSET + GAIN * e), 0, 65535).astype(np.uint16)


def run(*args):
    return CliRunner().invoke(app, ["adapt", *map(str, args)])


def test_adapt_cli_lowers_the_held_out_loss_and_writes_a_loadable_model(tmp_path, one_torch_thread):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, exposures(texture((64, 64)), 6))
    out = tmp_path / "adapted.pt"
    res = run(stack, "--from", "unet", "--out", out, "--offset", OFFSET, "--gain", GAIN, "--max-minutes", 1,
              "--steps", 40, "--batch", 4, "--crop", 32, "--lr", 1e-3, "--quiet")
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(out)
    assert ck.metrics["val_loss_best"] < ck.metrics["val_loss_start"]  # the held-out loss fell
    assert ck.training["mode"] == "n2n" and ck.training["step"] == 40
    on = ck.data["adapted_on"]
    assert on["frames"] == 6 and on["source"] == str(stack) and on["offset_adu"] == OFFSET and len(on["sha256"]) == 64
    card = out.with_suffix(".md").read_text()
    assert on["sha256"][:16] in card and "Noise2Noise" in card
    # what the user does with it: one frame at a time, in camera counts
    den = load(out, device="cpu")
    frame = exposures(texture((64, 64), seed=5), 1, seed=9)[0]
    restored = den.restore(frame[None], offset=OFFSET, gain=GAIN)
    assert restored.frames.shape == (1, 64, 64) and restored.frames.dtype == np.uint16
    assert den.info.checksum == ck.checksum
    base = load("unet", device="cpu").restore(frame[None], offset=OFFSET, gain=GAIN).frames
    assert not np.array_equal(base, restored.frames)  # the adapted weights are the ones restoring


def test_adapted_model_restores_unseen_frames_better(one_torch_thread):
    """Noise2Noise on 6 frames of one field of a texture; scored on another field it never saw."""
    truth = texture((64, 128), seed=2)
    seen, unseen = truth[:, :64], truth[:, 64:]
    base = load("unet", device="cpu")
    adapter = Adapter(base, AdaptConfig(batch=4, crop=32, lr=1e-3))
    adapter.set_frames([exposures(seen, 6).astype(np.float32)], OFFSET, GAIN)
    result = run_adaptation(adapter, max_minutes=5, max_steps=60, val_every=20)
    assert result.val_best < result.val_start and len(result.history) >= 3
    adapted = load("unet", device="cpu")
    adapted.net.load_state_dict(adapter.best_state)
    noisy = exposures(unseen, 2, seed=7).astype(np.float32)
    clean = OFFSET + GAIN * 20.0 * unseen
    err = {name: np.mean((den.restore(noisy, offset=OFFSET, gain=GAIN).frames - clean) ** 2)
           for name, den in (("base", base), ("adapted", adapted))}
    assert err["adapted"] < err["base"], err


def test_single_frame_adapts_with_the_blind_spot(tmp_path, one_torch_thread):
    stack = tmp_path / "one.tif"
    # (Y, X); 128^2: in one 64^2 frame too few blocks show the noise line, and the offset is asked for
    tifffile.imwrite(stack, exposures(texture((128, 128)), 1)[0])
    out = tmp_path / "one.pt"
    res = run(stack, "--out", out, "--max-minutes", 1, "--steps", 10, "--batch", 2, "--crop", 32, "--quiet")
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(out)
    assert ck.training["mode"] == "n2v" and "estimated" in ck.data["adapted_on"]["calibration"]
    assert load(out, device="cpu").restore(exposures(texture((64, 64)), 1)).frames.shape == (1, 64, 64)


def test_offset_and_gain_are_estimated_from_the_noise():
    truth = texture((96, 96), seed=3) + 0.05
    off, gain = estimate_camera(exposures(truth, 4).astype(np.float32))
    assert abs(gain - GAIN) < 0.5 and abs(off - OFFSET) < 15  # read noise shifts it by gain * 1.5^2
    given_off, none = estimate_camera(exposures(truth, 4).astype(np.float32), gain=GAIN)
    assert none is None and abs(given_off - OFFSET) < 15


def test_a_moving_sample_is_not_taken_for_noise():
    """Live cells move between frames: the camera is measured within each frame, never across them
    (differences between frames drifting 2 px apart read a gain 4-5x too high)."""
    from lowdose.models.simulate import CameraModel, Specimen, expose

    rng = np.random.default_rng(4)
    cam = CameraModel(offset=OFFSET, gain=GAIN, read_noise=1.5)
    sp = Specimen((256, 256), kind="nuclei", seed=3, drift_px_per_frame=2.0)
    frames = np.stack([expose(sp.truth(float(t)), 100.0, cam, rng) for t in range(8)]).astype(np.float32)
    off, gain = estimate_camera(frames)
    assert 0.8 < gain / GAIN < 1.25, gain
    assert abs(off - (OFFSET - GAIN * 1.5**2)) < 5, off  # the offset absorbs the read noise


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: tifffile.imwrite(p / "s.tif", np.zeros((2, 2, 64, 64), np.uint16)), "expected (T, Y, X) or (Y, X)"),
        (lambda p: np.save(p / "s.npy", np.zeros((0, 64, 64), np.uint16)), "is empty"),
        (lambda p: (p / "s.tif").write_bytes(b"not a tiff at all"), "cannot read"),
        (lambda p: tifffile.imwrite(p / "s.tif", np.full((64, 64), 100, np.uint16)), "give --offset"),
        (lambda p: tifffile.imwrite(p / "s.tif", np.zeros((3, 8, 8), np.uint16)), "too small"),
        (lambda p: None, "does not exist"),
    ],
    ids=["wrong-rank", "empty", "unreadable", "no-offset", "too-small", "missing"],
)
def test_bad_stacks_are_one_line_errors_with_exit_2(tmp_path, make, message):
    make(tmp_path)
    stack = next(iter(sorted(tmp_path.glob("s.*"))), tmp_path / "s.tif")
    res = run(stack, "--out", tmp_path / "o.pt", "--max-minutes", 0.1)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.pt").exists()


def test_models_that_cannot_adapt_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", exposures(texture((64, 64)), 2))
    res = run(tmp_path / "s.tif", "--from", "ddpm", "--out", tmp_path / "o.pt", "--offset", OFFSET)
    assert res.exit_code == 2 and "cannot be adapted" in res.output, res.output
    res = run(tmp_path / "s.tif", "--out", tmp_path / "o.pt", "--offset", OFFSET, "--gain", -1)
    assert res.exit_code == 2 and "--gain must be > 0" in res.output, res.output


def test_read_stack_keeps_the_calibration_given(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", exposures(texture((64, 64)), 3))
    s = read_stack(tmp_path / "s.tif", offset=90.0, gain=1.5)
    assert (s.offset, s.gain, s.calibration) == (90.0, 1.5, "offset given; gain given")
    assert s.frames.shape == (3, 64, 64) and s.frames.dtype == np.float32
    with pytest.raises(AdaptError, match="NaN"):
        np.save(tmp_path / "n.npy", np.full((2, 64, 64), np.nan, np.float32))
        read_stack(tmp_path / "n.npy", offset=0.0)


def test_a_causal_window_starts_as_the_single_frame_model_and_trains(one_torch_thread):
    base = load("unet", device="cpu")
    adapter = Adapter(base, AdaptConfig(batch=2, crop=32, window=3))
    frames = exposures(texture((64, 64)), 4).astype(np.float32)
    adapter.set_frames([frames], OFFSET, GAIN)
    x = adapter.fields[0].x
    own = base.spec.channels  # the frame, and its noise map for a noise-map unet
    assert x.shape == (4, own + 2, 64, 64)
    with torch.no_grad():  # zero weights on the previous frames: the base model's output
        np.testing.assert_allclose(adapter.net(x[:1]).numpy(), base.net(x[:1, :own]).numpy(), atol=1e-5)
    assert np.isfinite(adapter.step()) and adapter.checkpoint({}, {}, {}).arch["in_channels"] == own + 2
