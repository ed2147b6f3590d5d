"""``lowdose adapt``: a stack in, an adapted checkpoint and its model card out.

The checkpoint is of the base model's kind and architecture, so ``lowdose.models.load(OUT.pt)``
restores with it exactly as with the base; its ``data`` names the stack it was adapted on (path,
sha256, frames, calibration) and ``training`` the base model and the run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .adapt import AdaptConfig, Adapter, AdaptRun, Progress, run_adaptation
from .adapt_data import AdaptError, Stack, read_stack
from .checkpoint import save_checkpoint


@dataclass(frozen=True)
class AdaptOutcome:
    path: Path
    card: Path
    stack: Stack
    run: AdaptRun
    checksum: str


def adapt_stack(
    stack: str | Path, *, base: str | Path, out: str | Path, offset: float | None = None, gain: float | None = None,
    max_minutes: float = 2.0, max_steps: int | None = None, val_every: int | None = None,
    cfg: AdaptConfig | None = None, device: str = "cpu", threads: int | None = None,
    on_progress: Callable[[Progress], None] | None = None, on_start: Callable[[Stack, Adapter], None] | None = None,
    max_frames: int | None = 64,
) -> AdaptOutcome:
    """Adapt model ``base`` (a shipped name or a checkpoint) to ``stack``; write ``out`` and ``out``.md."""
    from . import load

    out = Path(out)
    if out.suffix != ".pt":
        raise AdaptError(f"--out {out}: the adapted model is a checkpoint; name it ….pt")
    if max_minutes <= 0:
        raise AdaptError(f"--max-minutes must be > 0, got {max_minutes}")
    if threads:
        torch.set_num_threads(threads)
    den = load(base, device=device)  # first: an unknown model fails before the stack is read
    data = read_stack(stack, offset=offset, gain=gain, max_frames=max_frames)
    try:
        adapter = Adapter(den, cfg, device=den.engine.device)
        adapter.set_frames([data.frames], data.offset, data.gain)
    except ValueError as exc:
        raise AdaptError(f"cannot adapt {den.info.name!r} to {stack}: {exc}") from None
    if on_start is not None:
        on_start(data, adapter)
    run = run_adaptation(adapter, max_minutes=max_minutes, max_steps=max_steps, val_every=val_every,
                         on_progress=on_progress)
    ckpt = adapter.checkpoint(
        data={"adapted_on": data.summary(), "held_out": f"last {adapter.val_cols} columns of every frame",
              "mode": run.mode},
        training={"adapted_from": f"{den.info.name} ({den.info.checksum[:12]})", "finetuned_from": None,
                  "base_checksum": den.info.checksum, "mode": run.mode, "step": run.steps,
                  "seconds": round(run.seconds, 1), "config": asdict(adapter.cfg),
                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        metrics={"val_loss_start": run.val_start, "val_loss_best": run.val_best, "history": run.history},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    checksum = save_checkpoint(ckpt, out, with_optimizer=False)
    card = out.with_suffix(".md")
    card.write_text(render_adapted_card(out, checksum, den.info.name, den.info.checksum, data, run, adapter))
    return AdaptOutcome(path=out, card=card, stack=data, run=run, checksum=checksum)


def render_adapted_card(
    path: Path, checksum: str, base: str, base_checksum: str, data: Stack, run: AdaptRun, adapter: Adapter
) -> str:
    what = ("Noise2Noise between neighbouring frames of the field" if run.mode == "n2n"
            else "blind-spot (N2V2) training on a single frame")
    s: dict[str, Any] = data.summary()
    lines = [
        f"# Model card: `{path.name}` (adapted)", "",
        f"`{base}` (sha256 `{base_checksum[:16]}…`) adapted self-supervised to one user's stack: {what}.",
        "", "## Adapted on", "",
        f"- stack: `{s['source']}`, {s['frames']} frame(s) of {s['shape'][0]}x{s['shape'][1]} {s['dtype']}, "
        f"sha256 `{data.sha256[:16]}…`",
        f"- camera: offset {data.offset:.2f} ADU, gain {data.gain:.4g} ADU/e- ({data.calibration})",
        f"- held out: the last {adapter.val_cols} columns of every frame (never in a training crop)",
        "", "## Run", "",
        f"- {run.steps} steps in {run.seconds:.0f} s, batch {adapter.cfg.batch} crops of {adapter.crop} px, "
        f"lr {adapter.cfg.lr}, EMA {adapter.cfg.ema}, seed {adapter.cfg.seed}",
        f"- held-out loss: {run.val_start:.6g} unadapted -> {run.val_best:.6g} adapted "
        f"({100 * run.improvement:+.1f} % lower; the weights kept are the best seen)",
        f"- history: `{json.dumps(run.history)}`",
        "", "## Use", "",
        f"- `lowdose.models.load({str(path)!r}).restore(frames, offset={data.offset:.1f}, gain={data.gain:.4g})`, "
        f"or `restore.denoiser_options: {{weights: {path}}}` with the base model's denoiser",
        f"- checkpoint sha256 `{checksum}`",
        "- it learned this sample and camera: judge it on frames it did not see (another field, a later time point)",
    ]
    return "\n".join(lines) + "\n"
