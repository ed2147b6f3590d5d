"""The simulated low-light camera in a real UniMMCore MDA, through the hook."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import frame_pixels
from useq import MDASequence

from lowdose.models.simulate import CameraModel, Specimen, expected_adu
from lowdose.plugins.acquisition.pymmcore_plus_hook import PymmcorePlusHook


@pytest.mark.parametrize("sequenced", [True, False], ids=["sequenced", "snapped"])
def test_sim_camera_mda_delivers_frames_with_the_expected_mean(sim_core, fake_daemon, hook_cfg_factory, sequenced):
    core, camera = sim_core
    core.mda.engine.use_hardware_sequencing = sequenced
    hook = PymmcorePlusHook(hook_cfg_factory(fake_daemon.endpoint), run="sim", camera_offset=camera.get_offset())
    core.mda.run(MDASequence(time_plan={"interval": 0, "loops": 30}), output=hook)
    report = hook.close(timeout=20)
    assert report is not None and report.ok, report

    frames = fake_daemon.frames("sim")
    assert sorted(frames) == list(range(30))
    start = fake_daemon.starts[0]
    assert start.shape == (128, 128) and start.pixel_size_um == pytest.approx(0.1) and start.camera_offset == 100.0
    # the same truth the models' simulator gives, independently constructed
    spec = Specimen((128, 128), seed=3)
    cam_model = CameraModel(offset=100.0, gain=1.0, read_noise=1.5)
    for seq, rec in frames.items():
        pixels = frame_pixels(rec)
        expected = camera.expected_adu_for(seq)
        np.testing.assert_allclose(expected, expected_adu(spec.truth(seq), 40.0, cam_model), rtol=1e-5)
        # shot + read noise averaged over 16k pixels: the means agree to a fraction of an ADU
        assert abs(pixels.mean() - expected.mean()) < 0.3, (seq, pixels.mean(), expected.mean())
        # and the frame is exactly the one the camera's number says
        np.testing.assert_array_equal(pixels, camera.render(seq))
        if sequenced:
            assert rec.frame.metadata["camera"]["sim_frame"] == str(seq)
    # the specimen moves: truth differs between the first and last frame
    assert not np.allclose(camera.truth_for(0), camera.truth_for(29))
    # the noise is the physics: variance = shot (mean photons) + read noise^2 + quantisation
    expected0 = camera.expected_adu_for(0)
    residual = frame_pixels(frames[0]).astype(float) - expected0
    predicted = (expected0 - 100.0).mean() + 1.5**2 + 1 / 12
    assert residual.var() == pytest.approx(predicted, rel=0.1)


def test_sim_camera_properties_control_the_dose(sim_core):
    core, camera = sim_core
    assert core.getCameraDevice() == "SimCam" and core.getImageWidth() == 128
    core.setProperty("SimCam", "peak_photons", 400.0)
    core.setExposure(1.0)
    core.snapImage()
    bright = core.getImage().astype(float)
    core.setProperty("SimCam", "peak_photons", 100.0)
    core.snapImage()
    dim = core.getImage().astype(float)
    ratio = (bright.mean() - 100.0) / (dim.mean() - 100.0)
    assert ratio == pytest.approx(4.0, rel=0.05)
    assert float(core.getProperty("SimCam", "Offset")) == 100.0
    core.setProperty("SimCam", "image_width", 64)
    core.snapImage()
    assert core.getImage().shape == (128, 64)
