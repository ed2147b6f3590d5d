"""The camera noise model estimated from the frames alone: what every denoiser falls back on
when it is not told the camera's offset, gain or read noise."""

from __future__ import annotations

import numpy as np
import pytest

from lowdose.models.scenes import random_scene
from lowdose.models.simulate import CameraModel, expose
from lowdose.plugins.denoisers.classical import VstNlmDenoiser
from lowdose.plugins.denoisers.noise_model import estimate_noise_params, fit_noise
from lowdose.plugins.denoisers.registry import create_denoiser


def _textured(seed: int, side: int = 256) -> np.ndarray:
    t = random_scene(np.random.default_rng(seed), (side, side))
    return t / np.percentile(t, 99.9)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    rng = float(b.max() - b.min())
    return float(10 * np.log10(rng**2 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.parametrize("dose", [5.0, 100.0, 500.0])
@pytest.mark.parametrize("cam", [CameraModel(offset=250.0, gain=1.8, read_noise=1.5),
                                 CameraModel(offset=0.0, gain=1.0, read_noise=0.0)], ids=["scmos", "photon-counting"])
def test_the_gain_is_found_on_textured_samples_at_every_dose(cam: CameraModel, dose: float) -> None:
    """Texture at high photon counts used to pass for noise (gains 1.5-10x too high): the
    second-difference residual and the texture-rejecting line keep the gain within 25 %."""
    ratios = []
    for seed in range(3):
        noisy = expose(_textured(seed), dose, cam, np.random.default_rng(100 + seed)).astype(np.float32)
        ratios.append(estimate_noise_params(noisy).gain / cam.gain)
    assert np.all(np.abs(np.log(ratios)) < np.log(1.25)), ratios


def test_the_estimated_pair_predicts_the_variance_with_read_noise_folded_into_the_offset() -> None:
    cam = CameraModel(offset=300.0, gain=2.0, read_noise=4.0)  # a CCD: read noise one line cannot separate
    noisy = expose(_textured(7), 60.0, cam, np.random.default_rng(7)).astype(np.float32)
    est = estimate_noise_params(noisy)
    for level in (5.0, 20.0, 60.0):
        true_var = cam.gain**2 * (level + cam.read_noise**2)
        predicted = est.gain * (cam.offset + cam.gain * level - est.offset)
        assert predicted == pytest.approx(true_var, rel=0.25), (level, est)


def test_pixels_clipped_at_full_scale_do_not_pull_the_gain_down() -> None:
    cam = CameraModel(offset=100.0, gain=2.0, read_noise=1.5, bit_depth=10)  # full scale 1023 ADU
    noisy = expose(_textured(3), 1000.0, cam, np.random.default_rng(3)).astype(np.float32)
    assert np.mean(noisy == 1023) > 0.01  # the brightest percent (at least) is clipped
    assert estimate_noise_params(noisy).gain == pytest.approx(cam.gain, rel=0.2)


def test_a_frame_whose_noise_is_all_read_noise_gets_no_near_zero_gain() -> None:
    """At a fraction of a photon under 8 e- of read noise the slope is noise: a near-zero gain
    would tell a denoiser the frame has no shot noise at all, so the fallback (1 ADU/e-) is used."""
    cam = CameraModel(offset=200.0, gain=1.2, read_noise=8.0)
    noisy = expose(_textured(4, 128), 0.5, cam, np.random.default_rng(4)).astype(np.float32)
    assert estimate_noise_params(noisy).gain >= 0.5


def test_the_read_noise_is_read_only_where_dark_blocks_show_it() -> None:
    cam = CameraModel(offset=100.0, gain=1.5, read_noise=3.0)
    dim = expose(_textured(5), 10.0, cam, np.random.default_rng(5)).astype(np.float32)
    fit = fit_noise(dim, cam.offset, cam.gain)
    assert fit.usable_read_noise(1.5) == pytest.approx(3.0, abs=0.6)
    # a frame with no dark blocks (a bright, textured field): its excess is texture, not read noise
    bright_truth = 0.6 + 0.4 * _textured(5)
    bright = expose(bright_truth, 400.0, cam, np.random.default_rng(6)).astype(np.float32)
    assert fit_noise(bright, cam.offset, cam.gain).usable_read_noise(1.5) == 1.5


def test_classical_stabilises_with_the_cameras_own_read_noise() -> None:
    """A CCD's 6 e- taken for an sCMOS's 1.5 leaves the transformed noise too small in the dark,
    and non-local means then barely smooths it."""
    cam = CameraModel(offset=200.0, gain=1.0, read_noise=6.0)
    truth = _textured(8, 160)
    noisy = expose(truth, 20.0, cam, np.random.default_rng(8)).astype(np.float32)[None]
    clean = cam.offset + cam.gain * 20.0 * truth
    measured = VstNlmDenoiser().restore(noisy, offset=cam.offset, gain=cam.gain).frames[0]
    fixed = VstNlmDenoiser(read_noise=1.5).restore(noisy, offset=cam.offset, gain=cam.gain).frames[0]
    assert _psnr(measured, clean) > _psnr(fixed, clean) + 1.0


def test_the_unet_without_a_gain_estimates_it_instead_of_assuming_one() -> None:
    """Told nothing, the network used to assume 1 ADU/e-: on a gain-3 camera its noise map was
    wrong by sqrt(3) and it under-smoothed. The estimated gain restores as well as the true one.
    A gain-4 camera (a map wrong by 2x): the texture-trained unet is less hurt by a wrong map."""
    cam = CameraModel(offset=100.0, gain=4.0, read_noise=1.0)
    truth = _textured(9, 192)
    noisy = expose(truth, 10.0, cam, np.random.default_rng(9)).astype(np.float32)[None]
    clean = cam.offset + cam.gain * 10.0 * truth
    unet = create_denoiser("unet", {}, device="cpu")
    told = _psnr(unet.restore(noisy, offset=cam.offset, gain=cam.gain).frames[0], clean)
    blind = _psnr(unet.restore(noisy).frames[0], clean)
    assumed_one = _psnr(unet.restore(noisy, offset=cam.offset, gain=1.0).frames[0], clean)
    assert blind > told - 0.3
    assert blind > assumed_one + 0.3, (told, blind, assumed_one)
