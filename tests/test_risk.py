"""The risk estimate (error measured without the truth) and ``auto``'s per-frame blend built on it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lowdose.models.denoisers import resolve_auto
from lowdose.models.risk_weighted import RiskWeightedDenoiser
from lowdose.models.simulate import CameraModel, Specimen, expose
from lowdose.plugins.denoisers.noise_model import fit_noise
from lowdose.plugins.denoisers.registry import create_denoiser
from lowdose.plugins.denoisers.risk import (
    CameraNoise,
    Candidates,
    fit_combination,
    fit_or_keep,
    gaussian_centre_tap,
    pixel_risk,
    probe_divergence,
)

CAM = CameraModel(offset=100.0, gain=1.5, read_noise=2.0)


def _scene(side: int = 192, seed: int = 0, kind: str = "nuclei") -> np.ndarray:
    return Specimen((side, side), kind=kind, seed=seed).truth(0.0)


def _exposed(dose: float, seed: int, side: int = 192, cam: CameraModel = CAM, kind: str = "nuclei"):
    truth = _scene(side, seed, kind)
    noisy = expose(truth, dose, cam, np.random.default_rng(seed)).astype(np.float64)
    clean = cam.offset + cam.gain * dose * np.clip(truth, 0, None)
    return noisy, clean


def test_the_estimate_is_unbiased_for_a_linear_filter() -> None:
    """Averaged over exposures, the estimate without the truth equals the error against it."""
    tap = gaussian_centre_tap(1.5)
    est, true = [], []
    for seed in range(6):
        y, x = _exposed(20.0, seed)
        f = ndimage.gaussian_filter(y, 1.5)
        # the camera rounds to whole ADU: 1/12 ADU^2 more variance, as read noise in e-
        noise = CameraNoise(CAM.offset, CAM.gain, float(np.hypot(CAM.read_noise, np.sqrt(1 / 12) / CAM.gain)))
        v = noise.variance(y)
        est.append(pixel_risk(y.ravel(), f.ravel()[None], (tap * v).ravel()[None], v.ravel()).mean())
        true.append(np.mean((f - x) ** 2))
    assert np.mean(est) == pytest.approx(np.mean(true), rel=0.08)
    # and it ranks filters as the truth does: too little and too much smoothing both cost
    y, x = _exposed(20.0, 99)
    v = CameraNoise(CAM.offset, CAM.gain, CAM.read_noise).variance(y)
    sigmas = (0.5, 1.5, 6.0)
    outs = [ndimage.gaussian_filter(y, s) for s in sigmas]
    risks = [pixel_risk(y.ravel(), o.ravel()[None], (gaussian_centre_tap(s) * v).ravel()[None], v.ravel()).mean()
             for s, o in zip(sigmas, outs)]
    truths = [np.mean((o - x) ** 2) for o in outs]
    assert np.argmin(risks) == np.argmin(truths) == 1


def test_one_random_probe_measures_a_filters_derivative() -> None:
    y, _ = _exposed(20.0, 1)
    v = CameraNoise(CAM.offset, CAM.gain, CAM.read_noise).variance(y)
    probe = np.random.default_rng(0).standard_normal(y.shape)
    step = 0.3 * CAM.gain
    f, fp = ndimage.gaussian_filter(y, 2.0), ndimage.gaussian_filter(y + step * probe, 2.0)
    measured = probe_divergence(f, fp, probe, step, v).sum()
    assert measured == pytest.approx(gaussian_centre_tap(2.0) * v.sum(), rel=0.1)


@pytest.mark.parametrize("read_noise", [0.0, 2.0])
def test_the_frames_say_their_read_noise_and_whether_the_gain_holds(read_noise: float) -> None:
    cam = CameraModel(offset=100.0, gain=1.5, read_noise=read_noise)
    y, _ = _exposed(30.0, 3, side=256, cam=cam)
    fit = fit_noise(y[None], cam.offset, cam.gain)
    assert fit.read_noise == pytest.approx(read_noise, abs=0.5)
    assert fit.agrees(), fit
    # told a gain 2.5x too high, the frames' noise is far below what it predicts
    wrong = fit_noise(y[None], cam.offset, cam.gain * 2.5)
    assert not wrong.agrees(), wrong


def _candidates(y: np.ndarray, sigmas: tuple[float, ...]) -> tuple[Candidates, np.ndarray]:
    v = CameraNoise(CAM.offset, CAM.gain, CAM.read_noise).variance(y)
    outs = [y] + [ndimage.gaussian_filter(y, s) for s in sigmas]
    divs = [v] + [gaussian_centre_tap(s) * v for s in sigmas]
    names = ("raw", *(f"g{s}" for s in sigmas))
    return Candidates(names, np.stack([o.ravel() for o in outs]), np.stack([d.ravel() for d in divs])), v


def test_the_blend_smooths_at_low_dose_and_keeps_detail_at_high_dose() -> None:
    sigmas = (1.0, 3.0)
    low, x_low = _exposed(3.0, 5, kind="filaments")
    high, x_high = _exposed(3000.0, 5, kind="filaments")
    for y, x, heavy in ((low, x_low, "g3.0"), (high, x_high, "raw")):
        cands, v = _candidates(y, sigmas)
        fit = fit_combination(y, cands, v, ("convex",))
        assert fit.weights.min() >= 0 and fit.weights.sum() == pytest.approx(1.0)
        assert cands.names[int(np.argmax(fit.weights))] == heavy, fit.as_dict()
        blend = (fit.weights @ cands.outputs).reshape(y.shape)
        best_alone = min(np.mean((o.reshape(y.shape) - x) ** 2) for o in cands.outputs)
        assert np.mean((blend - x) ** 2) <= 1.02 * best_alone


def test_a_blend_not_clearly_better_keeps_the_reference() -> None:
    y, _ = _exposed(20.0, 6)
    both, v = _candidates(y, (1.0, 1.0001))
    twins = Candidates(both.names[1:], both.outputs[1:], both.divergence[1:])  # nothing to gain by blending
    kept = fit_or_keep(y, twins, v, keep=0)
    assert kept.mode == "kept" and kept.weights.tolist() == [1.0, 0.0]
    small = y[:64, :64]
    cands_small, v_small = _candidates(small, (1.0, 3.0))
    assert fit_or_keep(small, cands_small, v_small, keep=0).mode == "kept"  # too few pixels to trust


@pytest.mark.usefixtures("one_torch_thread")
def test_auto_blends_the_model_by_estimated_risk_and_keeps_it_when_the_camera_is_wrong() -> None:
    assert resolve_auto("cpu") == "risk-weighted"
    den = create_denoiser("auto", {}, device="cpu")
    assert isinstance(den, RiskWeightedDenoiser)
    assert den.info.name == "risk-weighted"
    assert den.info.parameters["learned"]["name"] == "dose-aware"
    y, x = _exposed(300.0, 7, side=160, kind="filaments")
    frames = y[None].astype(np.float32)
    out = den.restore(frames, offset=CAM.offset, gain=CAM.gain).frames
    assert out.shape == frames.shape and out.dtype == np.float32
    base = den.learned.restore(frames, offset=CAM.offset, gain=CAM.gain).frames
    (fit,) = den.last_fit
    assert fit.risk <= fit.candidate_risk["dose-aware"] + 1e-9
    assert np.mean((out[0] - x) ** 2) <= 1.05 * np.mean((base[0] - x) ** 2)
    # a gain three times too high: the estimate cannot be trusted, the model alone restores
    wrong = den.restore(frames, offset=CAM.offset, gain=CAM.gain * 3).frames
    np.testing.assert_array_equal(wrong, den.learned.restore(frames, offset=CAM.offset, gain=CAM.gain * 3).frames)
    assert den.last_fit == [] and den.last_noise is not None and not den.last_noise.agrees()


def test_filtering_only_the_window_gives_the_whole_frames_filter_there() -> None:
    from lowdose.models.risk_weighted import _filtered_window

    frame = np.random.default_rng(0).random((300, 280))
    for win in [(slice(0, 128), slice(0, 128)), (slice(100, 228), slice(60, 188)), (slice(172, 300), slice(152, 280))]:
        for sigma in (0.7, 3.0):
            np.testing.assert_allclose(_filtered_window(frame, win, sigma), ndimage.gaussian_filter(frame, sigma)[win],
                                       rtol=0, atol=1e-12)


def test_frames_too_small_to_fit_alone_are_fitted_together() -> None:
    """A cropped ROI or single z-slices (here four 64x64 frames): one blend for the batch, fitted on
    all of it; it must hold with the read noise 0.8x and 1.25x, so at a few photons it keeps the model."""
    from lowdose.models.scenes import random_scene
    from lowdose.plugins.denoisers.classical import VstNlmDenoiser

    cam = CameraModel(offset=200.0, gain=0.8, read_noise=3.0)
    rng = np.random.default_rng(0)
    t = random_scene(rng, (256, 256))
    truth = np.stack([t[64 * i : 64 * (i + 1), :64] for i in range(4)]) / np.percentile(t, 99.9)
    classical = VstNlmDenoiser()
    blend = RiskWeightedDenoiser(classical)
    for dose, blended in ((100.0, True), (3.0, False)):
        noisy = np.stack([expose(x, dose, cam, rng) for x in truth]).astype(np.float32)
        clean = cam.offset + cam.gain * dose * truth
        alone = classical.restore(noisy, offset=cam.offset, gain=cam.gain).frames
        out = blend.restore(noisy, offset=cam.offset, gain=cam.gain).frames
        fits = blend.last_fit
        assert len(fits) == 4 and all(f is fits[0] for f in fits)  # one fit, shared
        mse_alone, mse_blend = np.mean((alone - clean) ** 2), np.mean((out - clean) ** 2)
        if blended:
            assert fits[0].mode == "convex", fits[0].as_dict()
            assert mse_blend < 0.8 * mse_alone
        else:
            assert fits[0].mode == "kept", fits[0].as_dict()
            assert np.array_equal(out, alone)


def test_the_diffusion_model_can_be_blended_too_and_stays_deterministic() -> None:
    """The best restoration afterwards (README "Restoring afterwards"): the blend over `ddpm`. Its
    probe is only a derivative if the sampler draws the same noise for the probed frame."""
    den = create_denoiser("risk-weighted", {"model": "ddpm", "samples": 1}, device="cpu")
    assert den.info.parameters["learned"]["name"] == "ddpm"
    y, x = _exposed(300.0, 11, side=160, kind="filaments")
    frames = y[None].astype(np.float32)
    out = den.restore(frames, offset=CAM.offset, gain=CAM.gain).frames
    np.testing.assert_array_equal(out, den.restore(frames, offset=CAM.offset, gain=CAM.gain).frames)
    base = den.learned.restore(frames, offset=CAM.offset, gain=CAM.gain).frames
    (fit,) = den.last_fit
    assert fit.risk <= fit.candidate_risk["ddpm"] + 1e-9
    assert np.mean((out[0] - x) ** 2) <= 1.05 * np.mean((base[0] - x) ** 2)
