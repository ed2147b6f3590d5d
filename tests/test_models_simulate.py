"""The physical simulator: truth, camera model, training pairs."""

import time

import numpy as np
import pytest

from lowdose.models.simulate import (
    KINDS, CameraModel, PairGenerator, Specimen, expected_adu, expose, held_out_set,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("kind", KINDS)
def test_truth_shape_range_and_background(kind: str) -> None:
    sp = Specimen((96, 128), kind=kind, seed=3)
    img = sp.truth(0.0)
    assert img.shape == (96, 128) and img.dtype == np.float32
    assert 0.5 < np.percentile(img, 99.9) < 2.5
    assert 0.015 < img.min() < 0.06  # background ~0.02-0.05


def test_truth_moves_smoothly_and_deterministically() -> None:
    a = Specimen((128, 128), seed=1)
    b = Specimen((128, 128), seed=1)
    np.testing.assert_array_equal(a.truth(5.0), b.truth(5.0))
    t0, t1, t50 = a.truth(0.0), a.truth(1.0), a.truth(50.0)
    assert np.abs(t1 - t0).mean() < np.abs(t50 - t0).mean()
    assert np.abs(t50 - t0).mean() > 0.005  # it does move


def test_truth_is_fast_enough_for_live_demo() -> None:
    sp = Specimen((512, 512), seed=0)
    sp.truth(0.5)
    t = time.perf_counter()
    for i in range(10):
        sp.truth(1.0 + i * 0.37)
    per_frame = (time.perf_counter() - t) / 10
    assert per_frame < 0.05, f"{per_frame * 1e3:.1f} ms per 512^2 frame"


def test_expose_statistics_match_camera_model() -> None:
    cam = CameraModel(offset=100.0, gain=2.0, read_noise=1.5)
    truth = np.full((256, 256), 0.5, np.float32)
    frame = expose(truth, 20.0, cam, np.random.default_rng(0))
    assert frame.dtype == np.uint16
    mean = expected_adu(truth, 20.0, cam)
    assert abs(frame.mean() - mean.mean()) < 0.2
    # variance in ADU^2 = gain^2 (signal e- + read^2)  (+1/12 from rounding)
    assert frame.var() == pytest.approx(4 * (10 + 1.5**2) + 1 / 12, rel=0.05)


def test_expose_clips_to_bit_depth() -> None:
    frame = expose(np.ones((8, 8), np.float32), 1e6, CameraModel(bit_depth=12), np.random.default_rng(0))
    assert frame.max() == 4095


def test_pair_generator_and_held_out_set() -> None:
    gen = PairGenerator(seed=0, n_scenes=2, scene_size=96)
    b = gen.sample(3, 48)
    assert b.noisy.shape == b.clean.shape == (3, 48, 48)
    assert np.all(b.clean >= b.offset[:, None, None])
    noisy, clean = held_out_set(2, 64, 5.0)
    assert noisy.dtype == np.uint16 and clean.shape == (2, 64, 64)
