"""Training of the fast UNet (paired), Noise2Void (self-supervised) and the DDPM.

``main_train`` is the entry point the ``lowdose train`` command calls;
``train_recipe`` reproduces a shipped model from the simulator.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import nn

from lowdose.wire.jsonsafe import jsonable

from . import metrics, normalize
from .checkpoint import Checkpoint, CheckpointError, build_from_checkpoint, load_checkpoint, lowdose_version, save_checkpoint
from .data import Batch, FramesSource, SimulatedSource, Source, load_frames
from .diffusion import ConditionalDiffusion
from .n2v import blind_spot_mask
from .registry import resolve
from .restorer import from_diffusion_space, to_diffusion_space
from .scenes import FineTexture
from .unet import build_network, count_parameters

ModelKind = Literal["unet", "n2v", "ddpm", "rddpm"]
LOSSES = ("mse", "noise-relative", "psnr")  # unet; the last two need the noise-map channel

DEFAULT_ARCH: dict[str, dict[str, Any]] = {
    "unet": {"name": "FastUNet", "base": 16, "depth": 3, "residual": True, "blind_spot_safe": False},
    "n2v": {"name": "FastUNet", "base": 16, "depth": 3, "residual": False, "blind_spot_safe": True},
    "ddpm": {"name": "DiffusionUNet", "base": 32, "mults": [1, 2, 2], "blocks": 1, "attention": True},
    # residual diffusion over the unet: x_t and 4 condition channels (models/residual.py); no attention,
    # so its tiles can be any size, and small enough that K samples x a few steps stay affordable on a CPU
    "rddpm": {"name": "DiffusionUNet", "base": 16, "mults": [1, 2, 2], "blocks": 1, "attention": False,
              "in_channels": 5},
}


@dataclass
class TrainConfig:
    model: ModelKind
    out_dir: Path
    low: Path | None = None  # low-dose (noisy) frames: TIFF, TIFF folder, Zarr / lowdose .ome.zarr
    high: Path | None = None  # matching high-dose frames for paired training (unet, ddpm)
    simulate: bool = False  # train on the built-in simulator instead of files
    sim_scenes: int = 12  # pre-rendered simulator scenes crops are drawn from
    offset: float | None = None  # camera offset (ADU) of the user data; None: estimated
    gain: float | None = None  # ADU per electron of the user data; None: 1
    epochs: int = 10
    steps_per_epoch: int = 200
    batch: int = 8
    crop: int = 96
    lr: float = 1e-3
    arch: dict[str, Any] = field(default_factory=dict)  # overrides of DEFAULT_ARCH
    prediction: Literal["eps", "v"] = "eps"  # ddpm only
    ema: float = 0.999
    sim_domain: Literal["simple", "randomised"] = "simple"  # simulator scenes and detectors
    sim_photons: tuple[float, float] = (2.0, 200.0)  # peak photons per pixel, log-uniform
    # randomised simulator: fraction of scenes with weak pixel-scale texture, and its relative amplitude
    sim_texture: float = 0.0
    sim_texture_amplitude: tuple[float, float] = (0.02, 0.2)
    noise_map: bool = False  # unet: feed a per-pixel noise-level channel (new models: True)
    loss: Literal["mse", "noise-relative", "psnr"] = "mse"  # unet with a noise map: see _Objective
    stop_epoch: int | None = None  # end after this epoch (a stage of a longer schedule)
    seed: int = 0
    resume: bool = False  # continue from out_dir/last.pt
    finetune: str | None = None  # shipped model name or checkpoint path to start from
    base: str = "unet"  # rddpm: the network whose estimate it refines (shipped name or checkpoint path)
    val_size: int = 12
    val_fraction: float = 0.1
    threads: int | None = 2
    device: str = "auto"
    # bf16 autocast: "auto" uses it on CUDA only (on a CPU it is slower than float32)
    amp: Literal["auto", "bf16", "off"] = "auto"
    # Stop after the epoch that passes this wall-clock budget; resume=True continues. GPU
    # machines lent by the hour and batch queues cut long runs into segments.
    max_minutes: float | None = None
    progress: bool = True
    recipe: str | None = None


# --------------------------------------------------------------------------- data


def _sources(cfg: TrainConfig) -> tuple[Source, Batch]:
    """Training source and a fixed validation batch."""
    val_crop = max(cfg.crop, 128)
    if cfg.simulate:
        texture = FineTexture(cfg.sim_texture, tuple(cfg.sim_texture_amplitude))  # type: ignore[arg-type]
        kw = dict(peak_photons=tuple(cfg.sim_photons), domain=cfg.sim_domain, texture=texture)
        src = SimulatedSource(seed=cfg.seed, n_scenes=cfg.sim_scenes, **kw)
        val_src = SimulatedSource(seed=cfg.seed + 7777, n_scenes=min(5 if cfg.sim_domain == "simple" else 16, cfg.sim_scenes), **kw)
        val = val_src.sample(cfg.val_size, val_crop, np.random.default_rng(1))
        return src, val
    if cfg.low is None:
        raise ValueError("give training data (low=..., and high=... for paired training) or simulate=True")
    noisy = load_frames(cfg.low)
    clean = load_frames(cfg.high) if cfg.high is not None else None
    if cfg.model in ("unet", "ddpm", "rddpm") and clean is None:
        raise ValueError(f"model {cfg.model!r} trains on pairs: give high=... (or use model='n2v')")
    # n2v ignores targets for its loss but uses them, when given, to report PSNR/SSIM
    offset = cfg.offset if cfg.offset is not None else normalize.estimate_offset(noisy[: min(len(noisy), 16)])
    src = FramesSource(noisy, clean, offset, cfg.gain or 1.0, str(cfg.low))
    train_src, val_src = src.split(cfg.val_fraction)
    val = val_src.sample(cfg.val_size, min(val_crop, *noisy.shape[1:]), np.random.default_rng(1))
    return train_src, val


def _normalise(b: Batch, spec: normalize.NormSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Network input (N, C, Y, X) and target (N, 1, Y, X) in unit range."""
    scale = normalize.fit_scale(b.noisy, spec, b.offset, b.gain)
    x = torch.from_numpy(normalize.network_input(b.noisy, scale, spec))
    y = None if b.clean is None else torch.from_numpy(normalize.to_unit(b.clean, scale))[:, None]
    return x, y


# --------------------------------------------------------------------------- model pieces


class _Objective:
    """Loss and prediction of one model kind, on normalised tensors."""

    def __init__(self, kind: ModelKind, prediction: str, seed: int, loss: str = "mse") -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.kind = kind
        self.loss_kind = loss
        self.diffusion = ConditionalDiffusion(200, prediction) if kind == "ddpm" else None  # type: ignore[arg-type]
        self.gen = torch.Generator().manual_seed(seed)

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "unet":
            assert y is not None
            err = torch.mean((net(x) - y) ** 2, dim=(1, 2, 3))
            if self.loss_kind == "mse" or x.shape[1] < 2:
                return err.mean()
            # Each crop's error relative to its own noise variance (the noise-map channel).
            ratio = err / x[:, 1].pow(2).mean(dim=(1, 2)).clamp_min(1e-8)
            if self.loss_kind == "noise-relative":
                # ~linear in the relative error: high-dose crops weigh as much as low-dose ones;
                # log1p keeps a crop the network cannot fit (a hot pixel) from swamping a batch
                return torch.mean(torch.log1p(ratio))
            # "psnr": the mean over crops of 10 log10(MSE) up to constants, i.e. what the benchmark
            # averages. Measured: "noise-relative" gave most of its weight to the high doses and
            # lost 2-4 dB at 5 photons/pixel against plain MSE; this balances the two.
            return torch.mean(torch.log(ratio + 1e-3))
        if self.kind == "n2v":
            masked, mask = blind_spot_mask(x, generator=self.gen)
            return torch.sum(((net(masked) - x) ** 2) * mask) / mask.sum()
        assert y is not None and self.diffusion is not None
        return self.diffusion.loss(net, to_diffusion_space(y), to_diffusion_space(x), self.gen)

    @torch.no_grad()
    def predict(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.diffusion is None:
            return net(x)
        res = self.diffusion.sample(net, to_diffusion_space(x), samples=1, sampler="ddim", steps=10, seed=0)
        return from_diffusion_space(res.mean)


def _validate(
    obj: _Objective, net: nn.Module, val: Batch, spec: normalize.NormSpec, device: torch.device
) -> dict[str, float]:
    net.eval()
    x, y = _normalise(val, spec)
    with torch.no_grad():
        pred = torch.cat([obj.predict(net, x[i : i + 4].to(device)).cpu() for i in range(0, len(x), 4)])
        out: dict[str, float] = {"val_loss": float(obj.loss(net, x.to(device), None if y is None else y.to(device)))}
    net.train()
    if y is None:
        return out
    p, t = pred[:, 0].numpy(), y[:, 0].numpy()
    out["val_psnr"] = float(np.mean([metrics.psnr(t[i], p[i]) for i in range(len(t))]))
    out["val_ssim"] = float(np.mean([metrics.ssim(t[i], p[i]) for i in range(len(t))]))
    out["val_psnr_input"] = float(np.mean([metrics.psnr(t[i], x[i, 0].numpy()) for i in range(len(t))]))
    return out


def _lr_at(step: int, total: int, base: float) -> float:
    warm = min(100, total // 10 + 1)
    if step < warm:
        return base * (step + 1) / warm
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm))))


# --------------------------------------------------------------------------- main loop


def _autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if amp not in ("auto", "off"):
        raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {amp!r}")
    return None


def _train_step(
    cfg: TrainConfig, obj: _Objective, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
    source: Source, rng: np.random.Generator, spec: normalize.NormSpec, step: int, total: int,
    device: torch.device, amp_dtype: torch.dtype | None,
) -> float:
    x, y = _normalise(source.sample(cfg.batch, cfg.crop, rng), spec)
    for g in opt.param_groups:
        g["lr"] = _lr_at(step, total, cfg.lr)
    # bf16 keeps float32's exponent range, so no loss scaling is needed (fp16 would need a GradScaler)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        loss = obj.loss(net, x.to(device), None if y is None else y.to(device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    decay = min(cfg.ema, (1 + step) / (10 + step))  # short runs: the EMA warms up
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.lerp_(p, 1 - decay)
    return loss.item()


def _objective(cfg: TrainConfig, device: torch.device) -> Any:
    if cfg.model != "rddpm":
        return _Objective(cfg.model, cfg.prediction, cfg.seed, cfg.loss)
    from .residual import ResidualObjective, ResidualSpec

    _, path = resolve(cfg.base)
    ck = load_checkpoint(path)
    if ck.kind != "unet" or not normalize.NormSpec(**ck.normalisation).noise_map:
        raise CheckpointError(f"rddpm refines a noise-map unet (its condition holds the noise map); {path} is a "
                              f"{ck.kind} without one: give base='unet' or a checkpoint trained with noise_map")
    return ResidualObjective(build_from_checkpoint(ck, path).to(device), ResidualSpec(), seed=cfg.seed)


def _base_section(cfg: TrainConfig) -> dict[str, Any] | None:
    """rddpm: the refined network, embedded in the checkpoint."""
    if cfg.model != "rddpm":
        return None
    _, path = resolve(cfg.base)
    b = load_checkpoint(path)
    return {"kind": b.kind, "arch": b.arch, "state_dict": b.state_dict, "normalisation": b.normalisation,
            "checksum": b.checksum, "source": str(cfg.base)}


def _diffusion_section(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.model == "ddpm":
        return {"steps": 200, "schedule": "cosine", "prediction": cfg.prediction}
    if cfg.model == "rddpm":
        from .residual import ResidualSpec

        return {"steps": 200, "schedule": "cosine", "prediction": "x0", "residual": ResidualSpec().to_dict()}
    return {}


def _init_model(cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any], str | None]:
    if cfg.finetune:
        _, path = resolve(cfg.finetune)
        base_ckpt = load_checkpoint(path)
        if base_ckpt.kind != cfg.model:
            raise CheckpointError(f"cannot fine-tune a {cfg.model!r} model from a {base_ckpt.kind!r} checkpoint")
        return build_from_checkpoint(base_ckpt, path), dict(base_ckpt.arch), f"{path} ({base_ckpt.checksum[:12]})"
    arch = {**DEFAULT_ARCH[cfg.model], **cfg.arch}
    if cfg.noise_map:
        arch["in_channels"] = 2
    return build_network(arch), arch, None


def _norm_spec(cfg: TrainConfig) -> normalize.NormSpec:
    """A fine-tuned model keeps its base's normalisation (its noise-map channel included)."""
    if cfg.finetune or cfg.model == "rddpm":  # rddpm: the base network's input is the condition
        _, path = resolve(cfg.finetune or cfg.base)
        return normalize.NormSpec(**load_checkpoint(path).normalisation)
    if cfg.noise_map and cfg.model != "unet":
        raise ValueError(f"noise_map is for the supervised unet; {cfg.model!r} cannot use it "
                         "(a blind-spot network would see the masked pixel through the map)")
    return normalize.NormSpec(noise_map=cfg.noise_map)


def _jsonable(cfg: TrainConfig) -> dict[str, Any]:
    return jsonable(asdict(cfg))


@dataclass
class _Session:
    """One training process: the networks, the data, and how far training has come."""

    net: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    obj: Any  # _Objective, or residual.ResidualObjective for rddpm
    source: Source
    val: Batch
    spec: normalize.NormSpec
    device: torch.device
    amp_dtype: torch.dtype | None
    arch: dict[str, Any]
    finetuned_from: str | None
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    step: int = 0
    best: float = -float("inf")


def main_train(cfg: TrainConfig, on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> Path:
    """Train (or resume / fine-tune) a model; returns the path of the best checkpoint.

    Writes ``out_dir/last.pt`` (resumable, with optimizer state) after every
    epoch and ``out_dir/best.pt`` (EMA weights, best validation score).
    """
    from rich.console import Console

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _start_session(cfg, out_dir / "last.pt")
    rng = np.random.default_rng(cfg.seed + 1000 * run.start_epoch)
    t0 = time.time()
    console = Console(stderr=True)
    for epoch in range(run.start_epoch, cfg.epochs):
        losses = _train_epoch(cfg, run, rng, epoch, console)
        scores = _validate(run.obj, run.ema, run.val, run.spec, run.device)
        scores.update(epoch=epoch + 1, step=run.step, train_loss=float(np.mean(losses)),
                      minutes=(time.time() - t0) / 60)
        run.history.append(scores)
        score = scores.get("val_psnr", -scores["val_loss"])
        ckpt = _checkpoint(cfg, run, epoch, scores, best_score=max(run.best, score))
        save_checkpoint(ckpt, out_dir / "last.pt")
        if score > run.best:
            run.best = score
            save_checkpoint(ckpt, out_dir / "best.pt", with_optimizer=False)
        msg = ", ".join(f"{k}={v:.4g}" for k, v in scores.items() if isinstance(v, float))
        if cfg.progress:
            console.print(f"[{cfg.model}] epoch {epoch + 1}/{cfg.epochs}: {msg}", markup=False)
        if on_epoch:
            on_epoch(epoch + 1, scores)
        if cfg.stop_epoch is not None and epoch + 1 >= cfg.stop_epoch:
            break
        if cfg.max_minutes is not None and epoch + 1 < cfg.epochs and time.time() - t0 > 60 * cfg.max_minutes:
            if cfg.progress:
                console.print(f"[{cfg.model}] stopped after {(time.time() - t0) / 60:.1f} min "
                              f"(max_minutes={cfg.max_minutes}); continue with resume", markup=False)
            break
    return out_dir / "best.pt"


def _start_session(cfg: TrainConfig, last: Path) -> _Session:
    """Build (or resume from ``last``) everything a run needs, failing early on bad settings."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from .engine import torch_device

    device = torch_device(cfg.device)
    amp_dtype = _autocast_dtype(cfg.amp, device)  # first: a bad value fails before any data is loaded
    torch.manual_seed(cfg.seed)
    net, arch, finetuned_from = _init_model(cfg)  # first: a bad base model fails before data loading
    source, val = _sources(cfg)
    net = net.to(device).train()
    ema = copy.deepcopy(net).eval()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    run = _Session(net=net, ema=ema, opt=opt, obj=_objective(cfg, device), source=source,
                   val=val, spec=_norm_spec(cfg), device=device, amp_dtype=amp_dtype, arch=arch,
                   finetuned_from=finetuned_from)
    if cfg.resume:
        ck = load_checkpoint(last)
        if ck.optimizer is None:
            raise CheckpointError(f"{last} has no optimizer state; it cannot be resumed")
        net.load_state_dict(ck.optimizer["raw_state"])
        ema.load_state_dict(ck.state_dict)
        opt.load_state_dict(ck.optimizer["optim"])
        run.start_epoch, run.step = int(ck.training["epoch"]), int(ck.training["step"])
        run.history = list(ck.metrics.get("history", []))
        run.best = float(ck.metrics.get("best_score", run.best))
        run.arch = ck.arch
    return run


def _train_epoch(cfg: TrainConfig, run: _Session, rng: np.random.Generator, epoch: int, console: Any) -> list[float]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    total = cfg.epochs * cfg.steps_per_epoch
    losses: list[float] = []
    progress = Progress(
        TextColumn(f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=console,
        disable=not cfg.progress, transient=True,
    )
    with progress:
        task = progress.add_task("train", total=cfg.steps_per_epoch, loss="-")
        for _ in range(cfg.steps_per_epoch):
            loss_value = _train_step(cfg, run.obj, run.net, run.ema, run.opt, run.source, rng, run.spec, run.step,
                                     total, run.device, run.amp_dtype)
            run.step += 1
            losses.append(loss_value)
            progress.update(task, advance=1, loss=f"{np.mean(losses[-50:]):.4g}")
    return losses


def _checkpoint(cfg: TrainConfig, run: _Session, epoch: int, scores: dict[str, float], best_score: float) -> Checkpoint:
    source = run.source
    noise = source.summary() if cfg.simulate else {"offset": getattr(source, "offset", None),
                                                   "gain": getattr(source, "gain", None)}
    return Checkpoint(
        kind=cfg.model, arch=run.arch,
        state_dict={k: v.detach().cpu().clone() for k, v in run.ema.state_dict().items()},
        normalisation=run.spec.to_dict(),
        noise_model={"type": "poisson-gaussian", "units": "ADU", **noise},
        diffusion=_diffusion_section(cfg), base=_base_section(cfg),
        data={**source.summary(), "crop": cfg.crop, "val_size": cfg.val_size},
        metrics={"history": run.history, "best_score": best_score, "last": scores,
                 "parameters": count_parameters(run.net)},
        training={"epoch": epoch + 1, "step": run.step, "config": _jsonable(cfg), "recipe": cfg.recipe,
                  "finetuned_from": run.finetuned_from},
        lowdose_version=lowdose_version(),
        optimizer={"optim": run.opt.state_dict(),
                   "raw_state": {k: v.detach().cpu().clone() for k, v in run.net.state_dict().items()}},
    )


# --------------------------------------------------------------------------- recipes


_DDPM_GPU: dict[str, Any] = dict(
    model="ddpm", epochs=40, steps_per_epoch=500, batch=16, crop=128, lr=2e-4, ema=0.999, prediction="v",
    arch={"name": "DiffusionUNet", "base": 32, "mults": [1, 2, 4, 8], "blocks": 2, "attention": True},
)

# Budgets chosen to fit ~10-15 min each on a 2-core CPU; on a GPU, raise
# steps_per_epoch/epochs (and width) for better models.
RECIPES: dict[str, dict[str, Any]] = {
    # The shipped unet, stage 1 of 3: one network for 1-1000 photons (noise-map channel), domain-randomised
    # scenes and detectors, the "noise-relative" loss; a 36-epoch schedule ended after epoch 13
    # (~25 min on a loaded 2-core CPU). Stage 2 fine-tunes it with the "psnr" loss.
    "unet-stage1": dict(model="unet", epochs=36, stop_epoch=13, steps_per_epoch=300, batch=8, crop=96, lr=2e-3,
                        noise_map=True, loss="noise-relative", sim_domain="randomised", sim_photons=(1.0, 1500.0),
                        sim_scenes=48),
    "unet-stage2": dict(model="unet", epochs=16, steps_per_epoch=300, batch=8, crop=96, lr=1e-3, loss="psnr",
                        sim_domain="randomised", sim_photons=(1.0, 1500.0), sim_scenes=48, seed=1),
    # The shipped unet, stage 3 of 3: stage 2 fine-tuned with weak pixel-scale texture on half of the truths
    # (scenes.FineTexture), which real truths carry and PSF-blurred simulated ones lack; 3,600 steps,
    # ~13 min on one thread of this shared 2-core CPU. Chosen on real validation images (models/weights/unet.md).
    "unet": dict(model="unet", epochs=12, steps_per_epoch=300, batch=8, crop=96, lr=4e-4, loss="psnr",
                 sim_domain="randomised", sim_photons=(1.0, 1500.0), sim_scenes=48, seed=2,
                 sim_texture=0.5, sim_texture_amplitude=(0.02, 0.2)),
    # The first shipped unet (simple simulator scenes, one camera model, 2-200 photons).
    "unet-simple": dict(model="unet", epochs=12, steps_per_epoch=250, batch=8, crop=96, lr=2e-3),
    "n2v": dict(model="n2v", epochs=5, steps_per_epoch=150, batch=8, crop=96, lr=1e-3),
    "ddpm": dict(model="ddpm", epochs=6, steps_per_epoch=150, batch=8, crop=64, lr=1e-3, ema=0.995, prediction="v"),
    # Residual diffusion over the shipped unet (models/residual.py), the unet's own domain-randomised data;
    # 96 px crops of which the inner 64 px are diffused (the unet sees 16 px of context around them).
    # 7,000 steps, 26.8 min on one thread of this shared 2-core CPU; then calibrated (models/calibration.py).
    "rddpm": dict(model="rddpm", epochs=14, steps_per_epoch=500, batch=8, crop=96, lr=1e-3, ema=0.999,
                  sim_domain="randomised", sim_photons=(1.0, 1500.0), sim_scenes=48, seed=3, threads=1),
    # GPU recipes, run in resumable segments (max_minutes / resume). ddpm-gpu is the largest network
    # whose weights still fit the repository (12 M parameters, 49 MB); ddpm-paper is the paper's
    # (64 base channels, [1, 2, 4, 8], 2 blocks per level; 49 M parameters, 197 MB) for local use.
    "ddpm-gpu": _DDPM_GPU,
    "ddpm-paper": {**_DDPM_GPU, "arch": {**_DDPM_GPU["arch"], "base": 64}},
}


# recipe -> the recipe whose best checkpoint it fine-tunes
STAGES = {"unet-stage2": "unet-stage1", "unet": "unet-stage2"}


def train_recipe(name: str, out_dir: Path, *, scale: float = 1.0, **overrides: Any) -> Path:
    """Reproduce a shipped model from the simulator; ``scale`` multiplies the step budget."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    kw = {**RECIPES[name], **overrides}
    kw["steps_per_epoch"] = max(1, int(kw["steps_per_epoch"] * scale))
    if name in STAGES and "finetune" not in overrides:  # run the earlier stage first, in out_dir/<stage>
        kw["finetune"] = str(train_recipe(STAGES[name], Path(out_dir) / STAGES[name], scale=scale,
                                          **{k: v for k, v in overrides.items() if k not in ("resume",)}))
    best = main_train(TrainConfig(out_dir=Path(out_dir), simulate=True, recipe=name, **kw))
    if kw["model"] == "rddpm":  # the uncertainty is only meaningful once calibrated on simulated truth
        from .calibration import calibrate

        calibrate(best)
    return best


def export_model(checkpoint: Path, dest: Path) -> str:
    """Copy a checkpoint without optimizer state (the shipped form); returns its sha256."""
    ck = load_checkpoint(checkpoint)
    return save_checkpoint(ck, dest, with_optimizer=False)
