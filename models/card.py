"""Model cards: a short markdown description written next to a weights file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint
from .unet import build_network, count_parameters

DESCRIPTIONS = {
    "unet": "Compact CARE-style UNet trained on (low-dose, noise-free) pairs; one forward pass per frame: the live model. With `noise_map` in its normalisation it also reads each pixel's expected noise level (a second input channel).",
    "n2v": "Noise2Void with the N2V2 fixes (blur-pool, no full-resolution skip, neighbour-median masking), trained on noisy frames only.",
    "rddpm": "Residual diffusion over the shipped unet (models/residual.py): one pass of the unet (embedded in this file), then K samples of a small conditional diffusion model of the residual (clean - unet), scaled by each pixel's expected noise, conditioned on the unet's estimate, the frame, what the unet removed and the noise map; x0 prediction, cosine schedule, DDIM or DPM-Solver++(2M) in a few steps. The restored frame is the unet's estimate plus the posterior-mean residual, times a share chosen per frame by Stein's unbiased risk estimate (or the calibrated share); the samples' spread, times a split-conformal factor fitted on simulated truth, is the uncertainty (frames +- 1.645 x uncertainty is the 90 % interval).",
    "ddpm": "Conditional DDPM (Osuna-Vargas et al., WACV 2025, scaled down): noisy target and low-dose frame stacked as channels, continuous noise-level conditioning, cosine schedule, T = 200; DDIM or ancestral sampling; K samples averaged, their std as uncertainty.",
}


def render_card(name: str, weights: Path, benchmark: dict[str, Any] | None, notes: str = "") -> str:
    ck = load_checkpoint(weights)
    params = count_parameters(build_network(ck.arch))
    cfg = ck.training.get("config", {})
    hist = ck.metrics.get("history", [])
    last = hist[-1] if hist else {}
    lines = [
        f"# Model card: `{name}`", "", DESCRIPTIONS.get(ck.kind, ""), "",
        "## Weights", "",
        f"- file: `{weights.name}`, {weights.stat().st_size / 1e6:.2f} MB, sha256 `{ck.checksum}`",
        f"- architecture: `{json.dumps(ck.arch)}` ({params:,} parameters)",
        f"- normalisation: camera offset subtracted, divided by gain, per-frame percentiles {ck.normalisation}",
        f"- lowdose version at training: {ck.lowdose_version}",
    ]
    if ck.diffusion:
        lines.append(f"- diffusion: {json.dumps(ck.diffusion)}")
    lines += [
        "", "## Data", "",
        f"- {json.dumps(ck.data)}",
        f"- noise model: {json.dumps(ck.noise_model)}",
        "", "## Recipe", "",
        f"- `lowdose train recipe {ck.training.get('recipe') or name} --out DIR` "
        f"(Python: `lowdose.models.train.train_recipe({(ck.training.get('recipe') or name)!r}, DIR)`)",
        f"- {cfg.get('epochs')} epochs x {cfg.get('steps_per_epoch')} steps, batch {cfg.get('batch')}, "
        f"crop {cfg.get('crop')} px, lr {cfg.get('lr')}, EMA {cfg.get('ema')}, seed {cfg.get('seed')}; "
        + (f"{ck.training.get('step')} optimizer steps of fine-tuning from {ck.training['finetuned_from'].split('(')[-1].rstrip(')')} "
           "(earlier weights, see Notes)" if ck.training.get("finetuned_from")
           else f"{ck.training.get('step')} optimizer steps in total"),
        f"- final validation (simulated crops, normalised units): PSNR {last.get('val_psnr', float('nan')):.2f} dB "
        f"(input {last.get('val_psnr_input', float('nan')):.2f} dB), SSIM {last.get('val_ssim', float('nan')):.3f}",
    ]
    if notes:
        lines += ["", "## Notes", "", notes]
    if benchmark:
        lines += ["", "## Measured quality (benchmarks/quality.py, held-out simulated frames)", "",
                  "Float output (float32 frames in, as with `storage.restored_dtype: float32`); uint16 output "
                  "rounds to whole ADU, which costs up to ~4 dB at 5 photons/pixel.", "",
                  "| peak photons | method | PSNR dB | SSIM | MS-SSIM |", "|---|---|---|---|---|"]
        for r in benchmark.get("rows", []):
            if r["method"] == "raw" or r["method"].split()[0] == name:
                lines.append(f"| {r['dose']:g} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['ms_ssim']:.3f} |")
        study = benchmark.get("sampler_study", []) if ck.kind == "ddpm" else []
        if study:
            lines += ["", "Samplers (K = 1, first held-out frame per dose):", "",
                      "| peak photons | sampler | PSNR dB | SSIM |", "|---|---|---|---|"]
            lines += [f"| {r['dose']:g} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} |" for r in study]
        speed = {k: v for k, v in benchmark.get("speed_ms", {}).items() if k.split()[0] == name}
        if speed:
            lines += ["", "Speed on a 2-core CPU VM (no GPU):", "", "| setting | ms / 512^2 | ms / 2048^2 |", "|---|---|---|"]
            for k, v in speed.items():
                lines.append(f"| {k} | {v['ms_512']:.0f} | {v['ms_2048']:.0f} ({v['2048']}) |")
    return "\n".join(lines) + "\n"


def write_card(name: str, weights: Path, benchmark_json: Path | None = None, notes: str = "") -> Path:
    bench = json.loads(benchmark_json.read_text()) if benchmark_json and benchmark_json.exists() else None
    out = weights.with_suffix(".md")
    out.write_text(render_card(name, weights, bench, notes))
    return out
