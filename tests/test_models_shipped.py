"""The shipped weights: present, loadable by name and as plug-ins, and actually denoising."""

import numpy as np
import pytest

from lowdose.models import available, default_live_model, load
from lowdose.models.metrics import psnr
from lowdose.models.simulate import CameraModel, held_out_set
from lowdose.plugins.denoisers.interface import Denoiser, DenoiserError
from lowdose.plugins.denoisers.registry import create_denoiser


pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHIPPED = ("unet", "n2v", "ddpm")


def test_all_models_are_shipped() -> None:
    assert set(available()) == set(SHIPPED)
    assert default_live_model("cpu") == "unet"


@pytest.mark.parametrize("name", SHIPPED)
def test_plugin_restores_and_improves(name: str) -> None:
    options = {"samples": 2, "steps": 4} if name == "ddpm" else {}
    den = create_denoiser(name, options, device="cpu")
    assert isinstance(den, Denoiser) and den.info.name == name and len(den.info.checksum) == 64
    noisy, clean = held_out_set(1, 64, 20.0, CameraModel(), seed=31_000)
    out = den.restore(noisy, offset=100.0, gain=1.0)
    assert out.frames.dtype == np.uint16 and out.frames.shape == noisy.shape
    dr = float(clean.max() - clean.min())
    gain_db = psnr(clean[0], out.frames[0].astype(float), dr) - psnr(clean[0], noisy[0].astype(float), dr)
    assert gain_db > 3.0, f"{name} gains only {gain_db:.1f} dB over the raw frame"
    if name == "ddpm":
        assert out.uncertainty is not None and out.uncertainty.shape == noisy.shape


def test_load_accepts_options_and_rejects_bad_ones() -> None:
    den = load("ddpm", device="cpu", samples=1, sampler="ancestral")
    assert den.info.parameters["sampler"] == "ancestral" and not den.info.has_uncertainty
    with pytest.raises(TypeError, match="bad option"):
        load("unet", device="cpu", samples=3)


def test_self_ensemble_keeps_shapes_and_is_at_least_as_good() -> None:
    import torch

    from lowdose.models.restorer import DIHEDRAL, from_symmetry, to_symmetry

    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    for k in range(len(DIHEDRAL)):
        assert torch.equal(from_symmetry(to_symmetry(x, k), k), x), k
    noisy, clean = held_out_set(3, 96, 5.0, CameraModel(), seed=31_500)
    noisy = noisy[:, :96, :72]  # not square: the mirrors and the half turn keep the shape
    clean = clean[:, :96, :72]
    dr = float(clean.max() - clean.min())
    scores = {}
    for k in (1, 4, 8):
        den = load("unet", device="cpu", ensemble=k)
        out = den.restore(noisy.astype(np.float32), offset=100.0, gain=1.0).frames
        assert out.shape == noisy.shape
        scores[k] = np.mean([psnr(clean[i], out[i], dr) for i in range(3)])
        assert den.info.parameters.get("ensemble", 1) == k
    assert scores[8] > scores[1] and scores[4] > scores[1], scores
    with pytest.raises(DenoiserError, match="ensemble must be one of"):
        load("unet", device="cpu", ensemble=3)


def test_default_live_model_measures_when_given_a_frame_interval() -> None:
    assert default_live_model("cpu", frame_interval_s=60.0, frame_shape=(256, 256)) == "unet"


def test_train_cli(tmp_path) -> None:
    from typer.testing import CliRunner

    from lowdose.models.cli import train_app

    runner = CliRunner()
    bad = runner.invoke(train_app, ["model", "resnet", "--out", str(tmp_path), "--simulate"])
    assert bad.exit_code != 0 and "unet, n2v or ddpm" in bad.output
    ok = runner.invoke(train_app, [
        "model", "n2v", "--out", str(tmp_path / "n2v"), "--simulate", "--epochs", "1",
        "--steps-per-epoch", "2", "--batch", "2", "--crop", "32",
    ])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "n2v" / "best.pt").is_file() and "best checkpoint" in ok.output
