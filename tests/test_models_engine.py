"""Inference through lowdose.models.load: units, dtypes, tiling, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch

from lowdose.models import CheckpointError, ModelNotFoundError, available, default_live_model, load
from lowdose.models.checkpoint import Checkpoint, save_checkpoint
from lowdose.models.simulate import held_out_set
from lowdose.models.unet import FastUNet
from lowdose.plugins.denoisers.interface import Denoiser


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save_unet(path: Path, identity: bool = False, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = FastUNet(base=4, depth=2, residual=True)
    if identity:  # residual net with a zero head: output == input in normalised units
        torch.nn.init.zeros_(net.head.weight)
        torch.nn.init.zeros_(net.head.bias)
    else:
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
    ck = Checkpoint(
        kind="unet", arch={"name": "FastUNet", "base": 4, "depth": 2, "residual": True},
        state_dict=net.state_dict(), normalisation={},
    )
    save_checkpoint(ck, path)
    return path


def test_identity_model_preserves_units_dtype_and_full_range(tmp_path: Path) -> None:
    den = load(_save_unet(tmp_path / "id.pt", identity=True), device="cpu")
    assert isinstance(den, Denoiser)
    rng = np.random.default_rng(0)
    frames = rng.integers(90, 65535, size=(2, 40, 56)).astype(np.uint16)
    frames[0, 0, 0], frames[1, 0, 0] = 65535, 0  # the extremes survive (no clipping)
    out = den.restore(frames, offset=100.0, gain=2.0)
    assert out.frames.dtype == np.uint16 and out.frames.shape == frames.shape
    assert np.abs(out.frames.astype(np.int64) - frames).max() <= 1
    f32 = frames.astype(np.float32) * 0.5 + 3.25
    out32 = den.restore(f32)
    assert out32.frames.dtype == np.float32
    np.testing.assert_allclose(out32.frames, f32, rtol=1e-5, atol=0.02)


def test_random_model_output_in_input_units(tmp_path: Path) -> None:
    den = load(_save_unet(tmp_path / "r.pt"), device="cpu")
    noisy, clean = held_out_set(1, 64, 50.0)
    out = den.restore(noisy, offset=100.0, gain=1.0).frames
    # camera counts in, camera counts out: same order of magnitude as the input
    assert 50 < float(np.median(out)) < 400


def test_tiled_equals_whole_frame(tmp_path: Path) -> None:
    path = _save_unet(tmp_path / "t.pt")
    noisy, _ = held_out_set(2, 200, 20.0)
    whole = load(path, device="cpu", tile=256).restore(noisy.astype(np.float32), offset=100.0).frames
    tiled_den = load(path, device="cpu", tile=64, overlap=32)
    tiled = tiled_den.restore(noisy.astype(np.float32), offset=100.0).frames
    scale = np.abs(whole - 100).max()
    assert np.abs(tiled - whole).max() < 1e-3 * scale


def test_wrong_rank_is_a_clear_error(tmp_path: Path) -> None:
    den = load(_save_unet(tmp_path / "w.pt"), device="cpu")
    with pytest.raises(ValueError, match=r"\(N, Y, X\)"):
        den.restore(np.zeros((32, 32), np.uint16))
    with pytest.raises(ValueError, match="rank 4"):
        den.restore(np.zeros((1, 1, 32, 32), np.uint16))


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ModelNotFoundError, match="shipped models") as exc:
        load("no-such-model")
    for name in available():
        assert name in str(exc.value)


def test_corrupt_and_foreign_checkpoints(tmp_path: Path) -> None:
    good = _save_unet(tmp_path / "g.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a lowdose model"):
        load(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "missing.pt")


def test_default_live_model_on_cpu_is_a_fast_model() -> None:
    assert default_live_model("cpu") in ("unet", "n2v", "classical")
