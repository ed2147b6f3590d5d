"""The simulator's fine-texture option: off by default, pixel-scale variance when on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from lowdose.models.data import SimulatedSource
from lowdose.models.scenes import FineTexture
from lowdose.models.simulate import PairGenerator
from lowdose.models.train import TrainConfig, _sources


def _fine(img: np.ndarray) -> float:
    """Std of what a 1.5 px blur removes: pixel-scale structure only."""
    return float((img - ndimage.gaussian_filter(img, 1.5, mode="wrap")).std())


def test_texture_is_off_by_default_and_changes_nothing() -> None:
    a = PairGenerator(seed=4, n_scenes=3, scene_size=96, domain="randomised")
    b = PairGenerator(seed=4, n_scenes=3, scene_size=96, domain="randomised", texture=FineTexture())
    c = PairGenerator(seed=4, n_scenes=3, scene_size=96, domain="randomised", texture=FineTexture(0.0, (0.1, 0.2)))
    for x, y, z in zip(a.canvases, b.canvases, c.canvases):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    pa, pb = a.sample(4, 48, np.random.default_rng(2)), b.sample(4, 48, np.random.default_rng(2))
    np.testing.assert_array_equal(pa.noisy, pb.noisy)
    np.testing.assert_array_equal(pa.clean, pb.clean)
    assert TrainConfig(model="unet", out_dir=Path(".")).sim_texture == 0.0


def test_texture_adds_pixel_scale_variance_and_keeps_the_truth_valid() -> None:
    truth = ndimage.gaussian_filter(np.random.default_rng(0).random((128, 128)), 3.0, mode="wrap").astype(np.float32)
    truth /= truth.max()
    tex = FineTexture(1.0, (0.1, 0.1))
    for seed in range(4):  # both kinds of texture (multiplicative, sqrt of brightness)
        out = tex.apply(np.random.default_rng(seed), truth)
        assert out.dtype == np.float32 and out.min() >= 0.0
        assert _fine(out) > 5 * _fine(truth)
        # weak and zero-mean: ~10 % of the brightness here, no change of the mean
        change = out - truth
        assert 0.05 < change.std() / truth.mean() < 0.2 and abs(float(change.mean())) < 0.002
    # a fraction of scenes: about half of the calls leave the truth untouched
    rng = np.random.default_rng(1)
    untouched = sum(np.array_equal(FineTexture(0.5).apply(rng, truth), truth) for _ in range(40))
    assert 10 <= untouched <= 30


def test_texture_threads_through_the_training_config() -> None:
    cfg = TrainConfig(model="unet", out_dir=Path("."), simulate=True, sim_domain="randomised", sim_scenes=2,
                      sim_texture=1.0, sim_texture_amplitude=(0.1, 0.15), val_size=2)
    src, _ = _sources(cfg)
    assert isinstance(src, SimulatedSource) and src.gen.texture == FineTexture(1.0, (0.1, 0.15))
    assert src.summary()["fine_texture"] == {"fraction": 1.0, "amplitude": [0.1, 0.15], "corr_px": [0.5, 1.2]}
    plain = PairGenerator(seed=0, n_scenes=2, scene_size=96, domain="randomised")
    textured = PairGenerator(seed=0, n_scenes=2, scene_size=96, domain="randomised", texture=FineTexture(1.0))
    assert _fine(textured.canvases[0]) > _fine(plain.canvases[0])


@pytest.mark.parametrize("bad", [dict(fraction=1.5), dict(amplitude=(0.0, 0.1)), dict(amplitude=(0.3, 0.1)),
                                 dict(corr_px=(0.0, 1.0))])
def test_bad_texture_settings_name_the_problem(bad: dict) -> None:
    with pytest.raises(ValueError, match="fine texture"):
        FineTexture(**bad)
    with pytest.raises(ValueError, match="domain='randomised'"):
        PairGenerator(n_scenes=1, texture=FineTexture(0.5))
