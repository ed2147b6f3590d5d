"""Self-supervised adaptation of a shipped (or trained) network to one user's sample and camera.

From noisy frames only, warm-started from the model's weights:

- **Noise2Noise** between independent frames of the same field (repeated exposures, or time-lapse
  neighbours as DeepCAD-RT uses them): the network sees frame t and is scored against frame t+1 or
  t-1. Their noise is independent, so the loss is the error against the truth plus a constant.
- **Blind-spot (N2V2)** when there is a single frame: masked pixels are replaced by the median of
  their neighbours (never themselves) and scored against their own noisy value.

A vertical stripe of every frame (the last eighth of the columns) is held out: training crops never
touch it, and the validation loss is measured there from step 0 (the unadapted model) on, so the
returned weights are the best on pixels the adaptation did not see, never worse than the start.
The same :class:`Adapter` serves ``lowdose adapt`` (a stack, a time budget) and the daemon's online
adaptation (frames arriving during a run, see ``models/online.py``).
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from .n2v import blind_spot_mask

Mode = Literal["auto", "n2n", "n2v"]
MARGIN = 32  # context columns left of the held-out stripe when it is scored


@dataclass
class AdaptConfig:
    mode: Mode = "auto"  # auto: n2n with two or more frames of a field, n2v with one
    batch: int = 8
    crop: int = 64
    lr: float = 3e-4
    ema: float = 0.98  # short runs: an EMA over ~50 steps smooths the noisy self-supervised gradients
    val_fraction: float = 0.125  # the held-out stripe's share of the columns
    val_frames: int = 8  # frames (pairs) the validation loss is measured on
    seed: int = 0
    # >1: a causal window (the frame and the window-1 before it as channels; FastUNet only). An
    # experiment measured by benchmarks/temporal.py: no restore path feeds a window yet.
    window: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "n2n", "n2v"):
            raise ValueError(f"mode must be auto, n2n or n2v, not {self.mode!r}")
        if self.batch < 1 or self.crop < 16 or self.lr <= 0:
            raise ValueError("batch >= 1, crop >= 16 and lr > 0 are needed")


@dataclass
class _Field:
    """One field of view over time, normalised once as inference normalises whole frames."""

    x: torch.Tensor  # (T, C, Y, X) network input
    next: torch.Tensor | None  # (T-1, 1, Y, X) frame t+1 in frame t's units
    prev: torch.Tensor | None  # (T-1, 1, Y, X) frame t-1 in frame t's units (for t >= 1)
    own: torch.Tensor  # (T, 1, Y, X) each frame in its own units (blind-spot target)


@dataclass
class Progress:
    step: int
    elapsed_s: float
    loss: float
    val_loss: float | None
    val_start: float


class Adapter:
    """Fine-tunes a copy of a network denoiser's weights on frames of the user's sample.

    ``base`` is what :func:`lowdose.models.load` returns for a single-pass model (``unet``,
    ``n2v`` or a checkpoint of either): its ``net``, its ``network_pair`` (the input and target
    representation) and its ``multiple`` are used, so a differently shaped shipped network adapts
    the same way.
    """

    def __init__(self, base: Any, cfg: AdaptConfig | None = None, device: torch.device | None = None) -> None:
        if getattr(base, "checkpoint", None) is None or not hasattr(base, "network_pair"):
            raise ValueError(
                f"model {getattr(base, 'name', base)!r} cannot be adapted: only single-pass networks "
                f"(unet, n2v, or checkpoints of them) can; the ddpm cannot"
            )
        self.base = base
        self.cfg = cfg or AdaptConfig()
        self.device = device or torch.device("cpu")
        self.multiple = int(getattr(base, "multiple", 8))
        self.net = copy.deepcopy(base.net).float()
        if self.cfg.window > 1:
            self.net = widen_input(self.net, self.cfg.window)
        self.net = self.net.to(self.device).train()
        self.ema = copy.deepcopy(self.net).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.gen = torch.Generator().manual_seed(self.cfg.seed)
        self.fields: list[_Field] = []
        self.mode: Literal["n2n", "n2v"] = "n2n"
        self.step_count = 0
        self.val_history: list[dict[str, float]] = []
        self.best_state: dict[str, torch.Tensor] = self._ema_state()
        self.best_val: float | None = None
        self.frames_seen = 0

    # ------------------------------------------------------------------ data

    def set_frames(self, fields: Sequence[np.ndarray], offset: float | None, gain: float | None) -> None:
        """Train on ``fields`` from now on: each (T, Y, X) ADU, one field of view, time in order."""
        fields = [np.asarray(f, np.float32) for f in fields if len(f)]
        if not fields:
            raise ValueError("no frames to adapt on")
        shapes = {f.shape[1:] for f in fields}
        if len(shapes) != 1:
            raise ValueError(f"all frames must have one shape, got {sorted(shapes)}")
        mode = self.cfg.mode
        if mode == "auto":
            mode = "n2n" if any(len(f) >= 2 for f in fields) else "n2v"
        if mode == "n2n":
            fields = [f for f in fields if len(f) >= 2]
            if not fields:
                raise ValueError("Noise2Noise needs two or more frames of a field; use mode n2v for a single frame")
        self.mode = mode
        self.fields = [self._prepare(f, offset, gain) for f in fields]
        self.frames_seen = sum(len(f) for f in fields)
        h, w = shapes.pop()
        self.val_cols = max(16, int(round(w * self.cfg.val_fraction / 8)) * 8)
        self.train_w = w - self.val_cols
        self.crop = min(self.cfg.crop, h, self.train_w)
        self.crop -= self.crop % self.multiple
        if self.crop < 16:
            raise ValueError(f"frames of {h}x{w} leave no room for training crops beside the held-out stripe")
        if self.best_val is not None:
            # new frames: the best weights so far are scored again, on the new held-out pixels
            scratch = copy.deepcopy(self.ema)
            scratch.load_state_dict(self.best_state)
            self.best_val = self.validate(scratch)

    def _prepare(self, frames: np.ndarray, offset: float | None, gain: float | None) -> _Field:
        x, own = self.base.network_pair(frames, frames, offset=offset, gain=gain)
        if self.cfg.window > 1:
            x = torch.cat([x] + [self.base.network_pair(frames, frames[np.maximum(np.arange(len(frames)) - k, 0)],
                                                        offset=offset, gain=gain)[1]
                                 for k in range(1, self.cfg.window)], 1)
        nxt = prev = None
        if len(frames) >= 2:
            _, nxt = self.base.network_pair(frames[:-1], frames[1:], offset=offset, gain=gain)
            _, prev = self.base.network_pair(frames[1:], frames[:-1], offset=offset, gain=gain)
        return _Field(x=x, next=nxt, prev=prev, own=own)

    def _sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        c = self.crop
        weights = np.array([len(f.x) for f in self.fields], float)
        for _ in range(self.cfg.batch):
            fld = self.fields[int(self.rng.choice(len(self.fields), p=weights / weights.sum()))]
            n, _, h, _ = fld.x.shape
            t = int(self.rng.integers(n - 1 if self.mode == "n2n" and self.cfg.window > 1 else n))
            if self.mode == "n2n":
                assert fld.next is not None and fld.prev is not None
                # with a window the frame before is an input: only the next one is an independent target
                forward = t == 0 or (t < n - 1 and (self.cfg.window > 1 or self.rng.random() < 0.5))
                target = fld.next[t] if forward else fld.prev[t - 1]
            else:
                target = fld.own[t]
            y0 = int(self.rng.integers(0, h - c + 1))
            x0 = int(self.rng.integers(0, self.train_w - c + 1))
            k, flip = int(self.rng.integers(4)), bool(self.rng.random() < 0.5)
            for out, a in ((xs, fld.x[t]), (ys, target)):
                a = torch.rot90(a[:, y0 : y0 + c, x0 : x0 + c], k, (1, 2))
                out.append(torch.flip(a, (2,)) if flip else a)
        return torch.stack(xs).to(self.device), torch.stack(ys).to(self.device)

    # ------------------------------------------------------------------ training

    def _errors(
        self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, region: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared errors of the scored pixels and how many there are (all, or the blind spots)."""
        if self.mode == "n2n":
            err = (net(x) - y) ** 2
            if region is None:
                return err.sum(), torch.tensor(float(err.numel()))
            return err[region].sum(), region.sum().float()
        masked, mask = blind_spot_mask(x[:, :1], generator=gen)
        if region is not None:
            mask = mask & region
        err = ((net(torch.cat([masked, x[:, 1:]], 1)) - y) ** 2) * mask
        return err.sum(), mask.sum().float()

    def step(self, lr_scale: float = 1.0) -> float:
        """One optimiser step on a random batch of crops; returns its loss."""
        if not self.fields:
            raise RuntimeError("set_frames() first")
        warm = min(1.0, (self.step_count + 1) / 20)
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * lr_scale * warm
        x, y = self._sample()
        total, count = self._errors(self.net, x, y, self.gen)
        loss = total / count.clamp(min=1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        decay = min(self.cfg.ema, (1 + self.step_count) / (10 + self.step_count))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.net.parameters()):
                pe.lerp_(p, 1 - decay)
        self.step_count += 1
        return float(loss.item())

    def _val_band(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the held-out stripe plus its left context, for up to ``val_frames`` frames."""
        xs, ys = [], []
        per = max(1, self.cfg.val_frames // len(self.fields))
        for fld in self.fields:
            n = len(fld.x) - (1 if self.mode == "n2n" else 0)
            for t in np.unique(np.linspace(0, n - 1, min(n, per)).round().astype(int)):
                xs.append(fld.x[t])
                ys.append(fld.next[t] if self.mode == "n2n" else fld.own[t])  # type: ignore[index]
        x, y = torch.stack(xs), torch.stack(ys)
        h, w = x.shape[-2:]
        band = min(w, self.val_cols + MARGIN)
        band += (-band) % self.multiple
        band = min(band, w - w % self.multiple)
        h8 = h - h % self.multiple
        return x[..., :h8, w - band :], y[..., :h8, w - band :]

    @torch.no_grad()
    def validate(self, net: nn.Module | None = None) -> float:
        """The loss on the held-out stripe (lower is better); with N2N, error to the truth plus a constant."""
        net = self.ema if net is None else net
        x, y = self._val_band()
        stripe = torch.zeros_like(y, dtype=torch.bool)
        stripe[..., -self.val_cols :] = True
        gen = torch.Generator().manual_seed(12345)  # the same blind spots at every validation
        total = count = 0.0
        for i in range(0, len(x), 2):
            e, n = self._errors(net, x[i : i + 2].to(self.device), y[i : i + 2].to(self.device), gen,
                                stripe[i : i + 2].to(self.device))
            total, count = total + float(e), count + float(n)
        return total / max(count, 1.0)

    def score(self) -> float:
        """Validate the current EMA weights, keep them if they are the best so far; return the score."""
        val = self.validate()
        if self.best_val is None or val < self.best_val:
            self.best_val = val
            self.best_state = self._ema_state()
        self.val_history.append({"step": self.step_count, "val_loss": val})
        return val

    def _ema_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.ema.state_dict().items()}

    # ------------------------------------------------------------------ output

    def checkpoint(self, data: dict[str, Any], training: dict[str, Any], metrics: dict[str, Any]) -> Any:
        """The best weights as a checkpoint of the base model's kind and architecture."""
        from .checkpoint import Checkpoint, lowdose_version

        base = self.base.checkpoint
        return Checkpoint(
            kind=base.kind, arch={**base.arch, **({"in_channels": self.net.down[0][0].in_channels}
                                                  if self.cfg.window > 1 else {})},
            state_dict=dict(self.best_state),
            normalisation=dict(base.normalisation), noise_model=dict(base.noise_model),
            diffusion=dict(base.diffusion), data=data, metrics=metrics, training=training,
            lowdose_version=lowdose_version(),
        )


def widen_input(net: nn.Module, window: int) -> nn.Module:
    """A FastUNet that also sees ``window - 1`` previous frames, starting as the single-frame one
    (the new input channels' weights are zero)."""
    from .unet import FastUNet

    if not isinstance(net, FastUNet):
        raise ValueError("a causal window needs a FastUNet")
    first = net.down[0][0]
    own = first.in_channels  # the frame, and its noise map for a noise-map unet
    wide = nn.Conv2d(own + window - 1, first.out_channels, 3, padding=1)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, :own] = first.weight
        wide.bias.copy_(first.bias)
    net.down[0][0] = wide
    return net


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's tensors: names an in-memory model version as a file's checksum would."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        buf = io.BytesIO()
        np.save(buf, state[k].detach().cpu().float().numpy(), allow_pickle=False)
        h.update(buf.getvalue())
    return h.hexdigest()


@dataclass
class AdaptRun:
    """What one time-bounded adaptation did."""

    mode: str
    steps: int
    seconds: float
    val_start: float
    val_best: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def improvement(self) -> float:
        """Relative fall of the held-out loss (0.05: 5 % lower than the unadapted model's)."""
        return 1.0 - self.val_best / self.val_start if self.val_start > 0 else 0.0


def run_adaptation(
    adapter: Adapter, *, max_minutes: float, max_steps: int | None = None, val_every: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> AdaptRun:
    """Train until ``max_minutes`` (or ``max_steps``), validating as it goes; the adapter keeps the best."""
    budget = 60.0 * max_minutes
    t0 = time.perf_counter()
    val_start = adapter.score()
    # validation costs a few steps' time: about a tenth of the budget, at most every 30 s
    every_s = min(30.0, max(2.0, budget / 10))
    last_val = time.perf_counter()
    loss = math.nan
    val: float | None = val_start
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= budget or (max_steps is not None and adapter.step_count >= max_steps):
            break
        frac = elapsed / budget if max_steps is None else adapter.step_count / max(max_steps, 1)
        loss = adapter.step(lr_scale=0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        due = (adapter.step_count % val_every == 0) if val_every else (time.perf_counter() - last_val >= every_s)
        if due:
            val = adapter.score()
            last_val = time.perf_counter()
        if on_progress is not None:
            on_progress(Progress(adapter.step_count, time.perf_counter() - t0, loss, val, val_start))
    if not adapter.val_history or adapter.val_history[-1]["step"] != adapter.step_count:
        adapter.score()
    assert adapter.best_val is not None
    return AdaptRun(mode=adapter.mode, steps=adapter.step_count, seconds=time.perf_counter() - t0,
                    val_start=val_start, val_best=adapter.best_val, history=list(adapter.val_history))
