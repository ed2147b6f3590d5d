"""Schedule, DDPM samplers and the diffusion denoiser."""

import numpy as np
import pytest
import torch

from lowdose.models import schedule
from lowdose.models.checkpoint import Checkpoint
from lowdose.models.diffusion import ConditionalDiffusion
from lowdose.models.restorer import denoiser_from_checkpoint
from lowdose.models.unet import DiffusionUNet


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cosine_schedule_is_monotone_and_bounded() -> None:
    ab = schedule.discrete_alpha_bars(200)
    assert ab.shape == (201,) and ab[0] == pytest.approx(1.0)
    assert torch.all(ab[1:] < ab[:-1])
    assert ab[-1] < 1e-3
    assert torch.all(schedule.betas(200) <= schedule.MAX_BETA + 1e-12)
    assert schedule.sampling_grid(200, 10) == [200, 180, 160, 140, 120, 100, 80, 60, 40, 20, 0]
    with pytest.raises(ValueError):
        schedule.sampling_grid(200, 0)


def _tiny_net(seed: int = 0) -> DiffusionUNet:
    torch.manual_seed(seed)
    net = DiffusionUNet(base=8, mults=(1, 2), attention=True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m", "ancestral"])
def test_samplers_deterministic_under_seed(sampler: str) -> None:
    diff = ConditionalDiffusion(steps=20)
    net = _tiny_net()
    cond = torch.randn(1, 1, 16, 16)
    a = diff.sample(net, cond, samples=2, sampler=sampler, steps=5, seed=7)
    b = diff.sample(net, cond, samples=2, sampler=sampler, steps=5, seed=7)
    c = diff.sample(net, cond, samples=2, sampler=sampler, steps=5, seed=8)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    assert not torch.equal(a.mean, c.mean)
    assert a.evaluations == (20 if sampler == "ancestral" else 5)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_fast_and_ancestral_agree_on_learnable_case(prediction: str) -> None:
    """When the clean frame is a deterministic function of the condition (here: equal to it),
    the optimal network is known in closed form; both samplers must recover the frame."""
    diff = ConditionalDiffusion(steps=200, prediction=prediction)

    def optimal(x: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        xt, x0 = x[:, :1], x[:, 1:]
        ab = torch.sigmoid(log_snr)[:, None, None, None]
        eps = (xt - ab.sqrt() * x0) / (1 - ab).sqrt()
        if prediction == "x0":
            return x0
        return eps if prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0

    cond = torch.rand(2, 1, 12, 12) * 2 - 1
    slow = diff.sample(optimal, cond, samples=1, sampler="ancestral", seed=0).mean
    fast = diff.sample(optimal, cond, samples=1, sampler="ddim", steps=10, seed=0).mean
    solver = diff.sample(optimal, cond, samples=1, sampler="dpmpp2m", steps=4, seed=0).mean
    assert torch.allclose(fast, cond, atol=1e-3)
    assert torch.allclose(slow, cond, atol=1e-3)
    assert torch.allclose(solver, cond, atol=1e-3)
    assert torch.allclose(fast, slow, atol=2e-3)


def test_dpm_solver_is_exact_where_ddim_is_first_order() -> None:
    """For a Gaussian x0 ~ N(m, s^2) the optimal denoiser is known in closed form and the exact
    probability-flow ODE maps noise z to m + s z. With 10 steps the second-order solver lands
    several times closer to the converged (200-step) solution than DDIM (measured: 0.016 vs 0.055)."""
    diff = ConditionalDiffusion(steps=200, prediction="x0")
    m, s = 0.3, 0.5

    def optimal(x: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        ab = torch.sigmoid(log_snr)[:, None, None, None]
        xt = x[:, :1]
        # E[x0 | xt] for x0 ~ N(m, s^2), xt = sqrt(ab) x0 + sqrt(1 - ab) eps
        var = ab * s**2 + (1 - ab)
        return m + ab.sqrt() * s**2 * (xt - ab.sqrt() * m) / var

    cond = torch.zeros(1, 1, 32, 32)
    reference = diff.sample(optimal, cond, samples=1, sampler="ddim", steps=200, seed=3).mean
    g = torch.Generator().manual_seed(3)
    assert torch.allclose(reference, m + s * torch.randn((1, 1, 32, 32), generator=g), atol=0.03)
    ddim = diff.sample(optimal, cond, samples=1, sampler="ddim", steps=10, seed=3).mean
    dpm = diff.sample(optimal, cond, samples=1, sampler="dpmpp2m", steps=10, seed=3).mean
    assert (dpm - reference).abs().mean() < 0.5 * (ddim - reference).abs().mean()


def test_tiny_ddpm_loss_falls() -> None:
    torch.manual_seed(0)
    diff = ConditionalDiffusion(steps=200)
    net = DiffusionUNet(base=8, mults=(1, 2), attention=False)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    x0 = torch.linspace(-1, 1, 8).expand(4, 1, 8, 8).contiguous()
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(25):
        loss = diff.loss(net, x0, x0, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])


def test_diffusion_denoiser_returns_uncertainty() -> None:
    net = _tiny_net()
    ck = Checkpoint(
        kind="ddpm", arch={"name": "DiffusionUNet", "base": 8, "mults": [1, 2]},
        state_dict=net.state_dict(), normalisation={}, diffusion={"steps": 20},
    )
    frames = np.random.default_rng(0).poisson(20, (2, 24, 40)).astype(np.uint16) + 100
    den = denoiser_from_checkpoint(ck, name="tiny", device="cpu", samples=3, steps=3)
    assert den.info.has_uncertainty
    out = den.restore(frames, offset=100.0)
    assert out.frames.shape == frames.shape and out.frames.dtype == np.uint16
    assert out.uncertainty is not None and out.uncertainty.shape == frames.shape
    assert out.uncertainty.dtype == np.float32 and np.all(out.uncertainty >= 0)
    one = denoiser_from_checkpoint(ck, name="tiny", device="cpu", samples=1, steps=3)
    assert one.restore(frames).uncertainty is None and not one.info.has_uncertainty
