"""``auto`` is dose-aware: the UNet at low dose, the classical denoiser at high dose."""

from __future__ import annotations

import numpy as np
import pytest

from lowdose.models import load
from lowdose.models.denoisers import AUTO_THRESHOLD_PEAK_PHOTONS, resolve_auto
from lowdose.models.dose_aware import DoseAwareDenoiser, peak_photons
from lowdose.models.simulate import CameraModel, Specimen, expose
from lowdose.plugins.denoisers.classical import VstNlmDenoiser
from lowdose.plugins.denoisers.registry import create_denoiser

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CAM = CameraModel(offset=100.0, gain=2.0, read_noise=1.5)


def _frame(dose: float, seed: int = 0) -> np.ndarray:
    truth = Specimen((64, 64), kind="nuclei", seed=seed).truth(0.0)
    return expose(truth, dose, CAM, np.random.default_rng(seed))


@pytest.mark.parametrize("dose", [3.0, 30.0, 300.0])
def test_peak_photons_estimates_the_dose(dose: float) -> None:
    est = peak_photons(_frame(dose)[None].astype(np.float32), CAM.offset, CAM.gain)[0]
    assert 0.6 * dose < est < 1.5 * dose + 3


def test_each_frame_goes_to_the_model_for_its_dose() -> None:
    unet, nlm = load("unet", device="cpu"), VstNlmDenoiser()
    den = DoseAwareDenoiser(unet, nlm, threshold_photons=50.0)
    frames = np.stack([_frame(5.0, 1), _frame(500.0, 2), _frame(8.0, 3)]).astype(np.float32)
    out = den.restore(frames, offset=CAM.offset, gain=CAM.gain).frames
    assert den.last_choice == ["unet", "classical", "unet"]
    np.testing.assert_allclose(out[[0, 2]], unet.restore(frames[[0, 2]], offset=CAM.offset, gain=CAM.gain).frames,
                               rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out[1], nlm.restore(frames[1:2], offset=CAM.offset, gain=CAM.gain).frames[0],
                               rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="threshold_photons"):
        DoseAwareDenoiser(unet, nlm, threshold_photons=0.0)


def test_auto_builds_on_the_dose_aware_unet_and_says_so() -> None:
    assert resolve_auto("cpu") == "risk-weighted"  # the dose-aware choice, blended by risk (tests/test_risk.py)
    den = create_denoiser("auto", {}, device="cpu")
    assert den.info.parameters["learned"]["name"] == "dose-aware"
    den = create_denoiser("dose-aware", {}, device="cpu")
    assert den.info.name == "dose-aware"
    p = den.info.parameters
    assert p["below_threshold"]["name"] == "unet" and len(p["below_threshold"]["checksum"]) == 64
    assert p["at_or_above_threshold"]["name"] == "classical"
    assert p["threshold_peak_photons"] == AUTO_THRESHOLD_PEAK_PHOTONS
    tuned = create_denoiser("dose-aware", {"threshold_photons": 10.0}, device="cpu")
    assert tuned.info.parameters["threshold_peak_photons"] == 10.0
