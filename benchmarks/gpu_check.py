"""CUDA paths of the models, checked against the CPU and timed: what a session with a GPU runs.

    python benchmarks/gpu_check.py                    # on a GPU machine: device=cuda
    python benchmarks/gpu_check.py --device cpu --size 128 --train-steps 2 --no-big   # smoke run here

For each shipped model the same held-out frames (peak 20 photons/px) are
restored on the CPU in float32 (the reference) and on DEVICE (autocast bf16/fp16,
channels-last): it prints PSNR against the truth for both, the agreement
between them (PSNR of the DEVICE output against the CPU output) and ms per
frame, as a ratio against the CPU time measured in the same run. Then it times
training steps of a recipe (default ``ddpm-gpu``, the largest DDPM that ships) and
projects the recipe's full training time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lowdose.models import load
from lowdose.models.metrics import psnr
from lowdose.models.simulate import CameraModel, held_out_set

CAMERA = CameraModel(offset=100.0, gain=1.0, read_noise=1.5)
MODEL_OPTIONS: dict[str, dict[str, object]] = {
    "unet": {},
    "n2v": {},
    "ddpm": {"samples": 1, "steps": 10, "seed": 0},  # DDIM is deterministic given the seed
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], np.ndarray], device: str, repeat: int) -> tuple[np.ndarray, float]:
    out = fn()  # warm-up: cuDNN autotuning, allocator growth
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    _sync(device)
    return out, 1000.0 * (time.perf_counter() - t0) / repeat


def check_model(name: str, device: str, size: int, big: bool, repeat: int) -> dict[str, object]:
    noisy, clean = held_out_set(2, size, 20.0, CAMERA)
    frames = noisy.astype(np.float32)  # float in, float out: no rounding hides a precision loss
    cpu = load(name, device="cpu", **MODEL_OPTIONS[name])
    dev = load(name, device=device, **MODEL_OPTIONS[name])
    ref, cpu_ms = _timed(lambda: cpu.restore(frames[:1], offset=CAMERA.offset).frames, "cpu", 1)
    out, dev_ms = _timed(lambda: dev.restore(frames[:1], offset=CAMERA.offset).frames, device, repeat)
    rng = float(clean[0].max() - clean[0].min())
    row: dict[str, object] = {
        "model": name, "device": str(dev.info.device), "tile": dev.info.tile_size, "batch": dev.info.preferred_batch,
        "psnr_cpu_db": psnr(clean[0], ref[0], rng), "psnr_device_db": psnr(clean[0], out[0], rng),
        "agreement_db": psnr(ref[0], out[0], rng), f"cpu_ms_{size}": cpu_ms, f"device_ms_{size}": dev_ms,
        "speedup": cpu_ms / dev_ms,
    }
    if big:
        big_frames = np.tile(frames[:1], (1, 2048 // size + 1, 2048 // size + 1))[:, :2048, :2048]
        _, row["device_ms_2048"] = _timed(lambda: dev.restore(big_frames, offset=CAMERA.offset).frames, device, repeat)
    return row


def time_training(recipe: str, device: str, steps: int, out: Path) -> dict[str, object]:
    from lowdose.models.train import RECIPES, TrainConfig, main_train

    kw = dict(RECIPES[recipe])
    total = kw["epochs"] * kw["steps_per_epoch"]
    cfg = TrainConfig(out_dir=out, simulate=True, recipe=recipe, device=device, progress=False, val_size=2,
                      **{**kw, "epochs": 1, "steps_per_epoch": steps})
    t0 = time.perf_counter()
    main_train(cfg)  # one epoch of `steps` steps plus a small validation
    sec = time.perf_counter() - t0
    return {"recipe": recipe, "device": device, "steps": steps, "s_per_step": sec / steps,
            "recipe_steps": total, "projected_minutes": sec / steps * total / 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", nargs="+", default=list(MODEL_OPTIONS))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-big", action="store_true", help="skip the 2048x2048 timings")
    ap.add_argument("--recipe", default="ddpm-gpu")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("gpu_check_runs"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("CUDA is not available in this torch build; run with --device cpu for a smoke run, "
                             "or install a CUDA wheel (see the README's GPU section)")
        print(f"GPU: {torch.cuda.get_device_name()} | torch {torch.__version__} | CUDA {torch.version.cuda}")
    rows = [check_model(m, a.device, a.size, not a.no_big, a.repeat) for m in a.models]
    print(f"\n| model | device | tile x batch | PSNR cpu / device dB | agreement dB | ms/{a.size}² cpu | device | speed-up | ms/2048² device |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['device']} | {r['tile']} x {r['batch']} | {r['psnr_cpu_db']:.2f} / {r['psnr_device_db']:.2f} "
              f"| {r['agreement_db']:.1f} | {r[f'cpu_ms_{a.size}']:.0f} | {r[f'device_ms_{a.size}']:.1f} | {r['speedup']:.1f}x "
              f"| {r.get('device_ms_2048', float('nan')):.1f} |")
    train = time_training(a.recipe, a.device, a.train_steps, a.out / a.recipe) if a.train_steps > 0 else None
    if train:
        print(f"\ntraining {train['recipe']} on {train['device']}: {train['s_per_step'] * 1000:.0f} ms/step; "
              f"the recipe's {train['recipe_steps']} steps would take {train['projected_minutes']:.0f} min")
    if a.json:
        a.json.write_text(json.dumps({"models": rows, "training": train}, indent=2))
    speedups = ", ".join(f"{r['model']} {r['speedup']:.1f}x" for r in rows)
    print(f"gpu_check: {speedups} ms per {a.size}² frame, cpu/{a.device}")


if __name__ == "__main__":
    main()
