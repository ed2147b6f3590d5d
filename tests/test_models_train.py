"""Training: loss falls, checkpoints round-trip exactly, resume, user data, N2V masking."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from lowdose.models import load
from lowdose.models.checkpoint import CheckpointError, build_from_checkpoint, load_checkpoint
from lowdose.models.data import load_frames
from lowdose.models.n2v import blind_spot_mask
from lowdose.models.simulate import held_out_set
from lowdose.models.train import TrainConfig, main_train


pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"base": 4, "depth": 2}


def _cfg(tmp: Path, model: str = "unet", **kw) -> TrainConfig:
    base = dict(
        model=model, out_dir=tmp / model, simulate=True, epochs=2, steps_per_epoch=15, batch=4,
        crop=32, lr=3e-3, arch=TINY, val_size=2, progress=False, threads=None, sim_scenes=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_unet_loss_falls_and_checkpoint_round_trips(tmp_path: Path) -> None:
    hist: list[dict] = []
    best = main_train(_cfg(tmp_path), on_epoch=lambda e, s: hist.append(s))
    assert len(hist) == 2 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    ck = load_checkpoint(best)
    assert ck.kind == "unet" and ck.lowdose_version and ck.metrics["history"]
    assert ck.data["source"].endswith("PairGenerator") and ck.noise_model["type"] == "poisson-gaussian"
    assert ck.optimizer is None  # best.pt is the shipped form
    noisy, _ = held_out_set(1, 48, 20.0)
    a = load(best, device="cpu").restore(noisy, offset=100.0).frames
    b = load(best, device="cpu").restore(noisy, offset=100.0).frames
    np.testing.assert_array_equal(a, b)
    # the weights in the file are exactly the trained ones
    net = build_from_checkpoint(load_checkpoint(tmp_path / "unet" / "last.pt"))
    for (k, v), w in zip(net.state_dict().items(), load_checkpoint(tmp_path / "unet" / "last.pt").state_dict.values()):
        assert torch.equal(v, w), k


def test_resume_continues_epochs(tmp_path: Path) -> None:
    main_train(_cfg(tmp_path, epochs=1))
    hist: list[dict] = []
    main_train(_cfg(tmp_path, epochs=2, resume=True), on_epoch=lambda e, s: hist.append((e, s)))
    assert [e for e, _ in hist] == [2]
    ck = load_checkpoint(tmp_path / "unet" / "last.pt")
    assert ck.training["step"] == 30 and len(ck.metrics["history"]) == 2


def test_time_budget_stops_after_an_epoch_and_resume_finishes(tmp_path: Path) -> None:
    hist: list[int] = []
    main_train(_cfg(tmp_path, epochs=3, max_minutes=0.0), on_epoch=lambda e, s: hist.append(e))
    assert hist == [1]
    main_train(_cfg(tmp_path, epochs=3, resume=True), on_epoch=lambda e, s: hist.append(e))
    assert hist == [1, 2, 3] and load_checkpoint(tmp_path / "unet" / "last.pt").training["step"] == 45


def test_bf16_autocast_path_trains_on_cpu(tmp_path: Path) -> None:
    # The CUDA default (amp="auto" on a GPU) runs this same code path with device_type="cuda".
    hist: list[dict] = []
    from lowdose.models.train import _autocast_dtype

    assert _autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert _autocast_dtype("auto", torch.device("cpu")) is None and _autocast_dtype("off", torch.device("cuda")) is None
    main_train(_cfg(tmp_path, amp="bf16"), on_epoch=lambda e, s: hist.append(s))
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    with pytest.raises(ValueError, match="amp must be"):
        main_train(_cfg(tmp_path, amp="fp8", out_dir=tmp_path / "bad"))


def test_gpu_recipes_build_and_the_shippable_one_fits_the_repository() -> None:
    from lowdose.models.train import RECIPES
    from lowdose.models.unet import build_network, count_parameters

    sizes = {name: count_parameters(build_network(RECIPES[name]["arch"])) for name in ("ddpm-gpu", "ddpm-paper")}
    assert sizes["ddpm-gpu"] * 4 < 50e6 < sizes["ddpm-paper"] * 4  # float32 bytes: tens of MB at most to ship


def test_finetune_requires_matching_kind(tmp_path: Path) -> None:
    best = main_train(_cfg(tmp_path, epochs=1))
    with pytest.raises(CheckpointError, match="cannot fine-tune"):
        main_train(_cfg(tmp_path, model="n2v", finetune=str(best)))
    out = main_train(_cfg(tmp_path, epochs=1, finetune=str(best), out_dir=tmp_path / "ft"))
    assert "finetuned_from" in load_checkpoint(out).training


def test_n2v_on_user_tiff_stack(tmp_path: Path) -> None:
    noisy, _ = held_out_set(3, 64, 10.0)
    tifffile.imwrite(tmp_path / "noisy.tif", noisy)
    hist: list[dict] = []
    best = main_train(
        _cfg(tmp_path, model="n2v", simulate=False, low=tmp_path / "noisy.tif", offset=100.0),
        on_epoch=lambda e, s: hist.append(s),
    )
    ck = load_checkpoint(best)
    assert ck.kind == "n2v" and ck.data["paired"] is False and ck.noise_model["offset"] == 100.0
    assert "val_loss" in hist[0]
    out = load(best, device="cpu").restore(noisy[:1], offset=100.0)
    assert out.frames.shape == (1, 64, 64) and out.frames.dtype == np.uint16


def test_paired_training_needs_targets(tmp_path: Path) -> None:
    noisy, _ = held_out_set(2, 32, 10.0)
    tifffile.imwrite(tmp_path / "n.tif", noisy)
    with pytest.raises(ValueError, match="high="):
        main_train(_cfg(tmp_path, simulate=False, low=tmp_path / "n.tif"))


def test_load_frames_from_lowdose_ome_zarr(tmp_path: Path) -> None:
    import zarr

    root = zarr.open_group(str(tmp_path / "rec.ome.zarr"), mode="w")
    raw = root.create_array("raw", shape=(3, 1, 1, 16, 20), dtype="uint16")
    raw[...] = np.arange(3 * 16 * 20, dtype=np.uint16).reshape(3, 1, 1, 16, 20)
    frames = load_frames(tmp_path / "rec.ome.zarr")
    assert frames.shape == (3, 16, 20) and frames[2, 0, 0] == 2 * 16 * 20


def test_blind_spot_mask_uses_neighbour_median_not_centre() -> None:
    x = torch.zeros(1, 1, 20, 20)
    x[0, 0, 10, 10] = 100.0  # an isolated hot pixel: its neighbours' median is 0
    hit = False
    for seed in range(40):
        masked, mask = blind_spot_mask(x, fraction=0.25, generator=torch.Generator().manual_seed(seed))
        assert mask.dtype == torch.bool and mask.float().mean() == pytest.approx(0.25)
        assert torch.equal(masked[~mask], x[~mask])  # unmasked pixels untouched
        if mask[0, 0, 10, 10]:
            hit = True
            assert masked[0, 0, 10, 10] == 0.0  # replaced by the neighbours, never itself
    assert hit
