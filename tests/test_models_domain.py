"""Domain randomisation (scenes, detectors) and the noise-level-conditioned UNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lowdose.models import load
from lowdose.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from lowdose.models.detectors import expose_random
from lowdose.models.normalize import NormSpec, fit_scale, network_input
from lowdose.models.scenes import STRUCTURES, random_scene
from lowdose.models.simulate import CameraModel, PairGenerator, Specimen, expose
from lowdose.models.train import TrainConfig, main_train
from lowdose.models.unet import FastUNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_each_structure_renders_a_normalised_textured_scene(structure: str) -> None:
    img = random_scene(np.random.default_rng(3), (96, 96), (structure,))
    assert img.shape == (96, 96) and img.dtype == np.float32 and np.isfinite(img).all()
    assert img.min() >= 0 and 0.7 < np.percentile(img, 99.9) < 1.5
    # structure, not a flat field: high-pass energy well above zero
    hp = img - np.roll(img, 1, 0)
    assert hp.std() > 1e-3


def test_scenes_are_reproducible_and_varied() -> None:
    a = random_scene(np.random.default_rng(7), (64, 64))
    b = random_scene(np.random.default_rng(7), (64, 64))
    c = random_scene(np.random.default_rng(8), (64, 64))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01


def test_detectors_have_their_noise_statistics() -> None:
    rng = np.random.default_rng(0)
    lam = np.full((200, 200), 30.0, np.float32)
    pc = expose_random(lam, rng, "photon_counting")
    assert pc.offset == 0.0 and pc.gain == 1.0
    assert abs(pc.noisy.mean() - 30) < 0.3 and abs(pc.noisy.var() / 30 - 1) < 0.05  # Poisson, no read noise
    em = expose_random(lam, rng, "emccd")
    e = (em.noisy - em.offset) / em.gain
    assert abs(e.mean() - 30) < 0.6
    assert 1.7 < e.var() / 30 < 2.3  # the EM register's excess noise factor ~2
    sc = expose_random(lam, rng, "scmos")
    e = (sc.noisy - sc.offset) / sc.gain
    assert abs(e.mean() - 30) < 1.0 and e.var() > 30  # shot + read noise + fixed pattern
    with pytest.raises(ValueError):
        PairGenerator(n_scenes=1, domain="cartoon")


def test_randomised_pairs_share_units_and_reproduce_from_a_seed() -> None:
    gen = PairGenerator(seed=1, n_scenes=3, scene_size=96, peak_photons=(1.0, 1000.0), domain="randomised")
    b = gen.sample(6, 48, np.random.default_rng(5))
    assert b.noisy.shape == b.clean.shape == (6, 48, 48)
    for i in range(6):  # clean is the expected count: noisy averages to it, in the same units
        assert abs(float(b.noisy[i].mean() - b.clean[i].mean())) < 0.2 * b.gain[i] * max(b.peak_photons[i], 5)
    again = PairGenerator(seed=1, n_scenes=3, scene_size=96, peak_photons=(1.0, 1000.0), domain="randomised")
    np.testing.assert_array_equal(again.sample(6, 48, np.random.default_rng(5)).noisy, b.noisy)


def test_noise_map_tells_the_dose() -> None:
    truth = Specimen((64, 64), kind="nuclei", seed=2).truth(0.0)
    cam = CameraModel()
    spec = NormSpec(noise_map=True)
    maps = []
    for dose in (3.0, 300.0):
        f = expose(truth, dose, cam, np.random.default_rng(0)).astype(np.float32)[None]
        x = network_input(f, fit_scale(f, spec, 100.0, 1.0), spec)
        assert x.shape == (1, 2, 64, 64) and x.dtype == np.float32
        maps.append(float(x[0, 1].mean()))
    # relative noise falls ~ 1/sqrt(dose): 100x the photons, ~10x less noise in unit range
    assert 5 < maps[0] / maps[1] < 20
    assert NormSpec().channels == 1 and spec.channels == 2 and spec.to_dict()["noise_map"] is True


def test_two_channel_unet_tiles_exactly_and_restores_in_camera_units(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = FastUNet(in_channels=2, base=4, depth=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "nm.pt"
    save_checkpoint(Checkpoint(kind="unet", arch={"name": "FastUNet", "in_channels": 2, "base": 4, "depth": 2},
                               state_dict=net.state_dict(), normalisation={"noise_map": True}), path)
    frames = expose(Specimen((150, 170), seed=1).truth(0.0), 20.0, CameraModel(), np.random.default_rng(1))
    frames = frames[None].astype(np.float32)
    whole = load(path, device="cpu", tile=256).restore(frames, offset=100.0, gain=1.0).frames
    tiled = load(path, device="cpu", tile=64, overlap=32).restore(frames, offset=100.0, gain=1.0).frames
    assert np.abs(tiled - whole).max() < 1e-3 * np.abs(whole - 100).max()
    assert 50 < float(np.median(whole)) < 400


def test_noise_conditioned_training_on_randomised_scenes(tmp_path: Path) -> None:
    hist: list[dict] = []
    cfg = TrainConfig(model="unet", out_dir=tmp_path / "u", simulate=True, sim_domain="randomised",
                      sim_photons=(1.0, 1000.0), noise_map=True, sim_scenes=3, epochs=2, steps_per_epoch=15,
                      batch=4, crop=32, lr=3e-3, arch={"base": 4, "depth": 2}, val_size=2, progress=False,
                      threads=None)
    best = main_train(cfg, on_epoch=lambda e, s: hist.append(s))
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    ck = load_checkpoint(best)
    assert ck.normalisation.get("noise_map") is True and ck.arch["in_channels"] == 2
    assert "domain-randomised" in ck.data["source"]
    frames = expose(Specimen((64, 64), seed=3).truth(0.0), 10.0, CameraModel(), np.random.default_rng(2))
    out = load(best, device="cpu").restore(frames[None].astype(np.float32), offset=100.0, gain=1.0)
    assert out.frames.shape == (1, 64, 64) and np.isfinite(out.frames).all()
    # a fine-tuned model keeps its base's input channels
    tuned = main_train(TrainConfig(**{**cfg.__dict__, "out_dir": tmp_path / "f", "finetune": str(best),
                                      "noise_map": False, "epochs": 1, "steps_per_epoch": 2}))
    assert load_checkpoint(tuned).normalisation.get("noise_map") is True


def test_noise_map_is_refused_for_blind_spot_models(tmp_path: Path) -> None:
    cfg = TrainConfig(model="n2v", out_dir=tmp_path, simulate=True, noise_map=True, sim_scenes=1, epochs=1,
                      steps_per_epoch=1, batch=2, crop=32, arch={"base": 4, "depth": 2}, progress=False, threads=None)
    with pytest.raises(ValueError, match="blind-spot"):
        main_train(cfg)


@pytest.mark.parametrize("loss", ["noise-relative", "psnr"])
def test_noise_aware_losses_train_and_a_stage_stops_at_its_epoch(tmp_path: Path, loss: str) -> None:
    hist: list[dict] = []
    cfg = TrainConfig(model="unet", out_dir=tmp_path / loss, simulate=True, sim_domain="randomised", noise_map=True,
                      loss=loss, sim_scenes=2, epochs=5, stop_epoch=1, steps_per_epoch=4, batch=2, crop=32,
                      arch={"base": 4, "depth": 2}, val_size=2, progress=False, threads=None)
    main_train(cfg, on_epoch=lambda e, s: hist.append(s))
    assert len(hist) == 1 and np.isfinite(hist[0]["train_loss"])
    assert load_checkpoint(tmp_path / loss / "last.pt").training["config"]["loss"] == loss


def test_unknown_loss_is_a_clear_error(tmp_path: Path) -> None:
    cfg = TrainConfig(model="unet", out_dir=tmp_path, simulate=True, loss="l1", sim_scenes=1, epochs=1,  # type: ignore[arg-type]
                      steps_per_epoch=1, batch=2, crop=32, arch={"base": 4, "depth": 2}, progress=False, threads=None)
    with pytest.raises(ValueError, match="loss must be one of"):
        main_train(cfg)


def test_the_shipped_unet_recipe_fine_tunes_its_earlier_stages() -> None:
    from lowdose.models.train import RECIPES, STAGES

    assert STAGES["unet"] == "unet-stage2" and STAGES["unet-stage2"] == "unet-stage1"
    assert RECIPES["unet-stage1"]["noise_map"] is True
    assert RECIPES["unet-stage1"]["stop_epoch"] < RECIPES["unet-stage1"]["epochs"]
    assert RECIPES["unet-stage2"]["loss"] == "psnr" and RECIPES["unet-stage2"].get("sim_texture", 0.0) == 0.0
    assert RECIPES["unet"]["loss"] == "psnr" and 0.0 < RECIPES["unet"]["sim_texture"] < 1.0
