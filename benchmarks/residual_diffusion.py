"""Residual diffusion (kind ``rddpm``) against the unet it refines: quality, calibrated coverage, speed.

    python benchmarks/residual_diffusion.py                      # the shipped ddpm (an rddpm)
    python benchmarks/residual_diffusion.py --model runs/rddpm/best.pt --old-ddpm old_ddpm.pt

Per dose (5, 20, 100 photons per pixel at the brightest), measured in the same run:
PSNR of the unet and of the residual model's mean of K = 1/4/8 samples, and the share
of pixels whose truth lies inside the calibrated 90 % interval (frames +- 1.645 x
uncertainty), on
  - simulated held-out frames: ``held_out_set`` (benchmarks/quality.py's seeds) and
    domain-randomised frames from seeds no recipe, calibration or test uses;
  - real validation images with truth (benchmarks/real_data.py; validation only, the
    same exposures and seeds as benchmarks/real_quality.py) and the real-noise time-lapse
    scored against its independent noisy reference (PSNR only: it has no truth);
and the time per 512^2 frame on this CPU. The last line is the headline: the MSE of the
K = 8 mean over the unet's, worst real case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import score  # noqa: E402

from lowdose.models import load  # noqa: E402
from lowdose.models.calibration import Z90, SimFrames, simulated_frames  # noqa: E402
from lowdose.models.simulate import CameraModel, held_out_set  # noqa: E402

DOSES = (5.0, 20.0, 100.0)
KS = (1, 4, 8)
QUALITY_CAMERA = CameraModel(offset=100.0, gain=1.0, read_noise=1.5)  # benchmarks/quality.py's


def _restore(den, noisy: np.ndarray, offset: float, gain: float):
    return den.restore(noisy.astype(np.float32), offset=offset, gain=gain)


def evaluate(models: dict[str, object], noisy: np.ndarray, clean: np.ndarray | None, offsets, gains,
             reference=None) -> dict[str, dict[str, float]]:
    """PSNR (and coverage where there is an uncertainty and a truth) of each model, mean over frames."""
    out: dict[str, dict[str, float]] = {}
    for name, den in models.items():
        ps, cov, t0 = [], [], time.perf_counter()
        for i in range(len(noisy)):
            r = _restore(den, noisy[i : i + 1], float(offsets[i]), float(gains[i]))
            if clean is not None:
                ps.append(score(r.frames[0], clean[i])[0])
                if r.uncertainty is not None:
                    cov.append(float(np.mean(np.abs(clean[i] - r.frames[0]) <= Z90 * r.uncertainty[0])))
            else:  # independent noisy reference: subtract its noise variance (unbiased MSE)
                ref, var, dr = reference
                mse = max(float(np.mean((r.frames[0].astype(np.float64) - ref[i]) ** 2)) - var[i], 1e-6)
                ps.append(10 * np.log10(dr**2 / mse))
        out[name] = {"psnr": float(np.mean(ps)), "s_per_frame": (time.perf_counter() - t0) / len(noisy)}
        if cov:
            out[name]["coverage"] = float(np.mean(cov))
    return out


def build_models(model: str, old_ddpm: str | None, steps: int, sampler: str, estimates: list[str]) -> dict[str, object]:
    models: dict[str, object] = {"unet": load("unet", device="cpu")}
    for est in estimates:
        tag = "" if est == estimates[0] else f" {est}"
        for k in KS:
            models[f"rddpm K={k}{tag}"] = load(model, device="cpu", samples=k, steps=steps, sampler=sampler,
                                               estimate=est)
    if old_ddpm:
        models["old ddpm K=4"] = load(old_ddpm, device="cpu", samples=4, steps=10)
    return models


def sim_cases(frames: int, size: int) -> list[tuple[str, float, SimFrames]]:
    cases = []
    for k, dose in enumerate(DOSES):
        noisy, clean = held_out_set(frames, size, dose, QUALITY_CAMERA, seed=20_000 + 100 * k)
        n = len(noisy)
        cases.append(("sim held-out", dose, SimFrames(noisy.astype(np.float32), clean,
                                                      np.full(n, QUALITY_CAMERA.offset), np.full(n, QUALITY_CAMERA.gain))))
        cases.append(("sim randomised", dose, simulated_frames(frames, size, seed=717_000 + int(dose), photons=(dose, dose))))
    return cases


def real_cases(size: int) -> tuple[list[tuple[str, float, SimFrames]], list, list[str]]:
    from real_data import real_noisy_sets, real_sets

    sets, missing = real_sets(size)
    cases = []
    for k, ds in enumerate(sets):
        for j, dose in enumerate(DOSES):
            noisy, clean = ds.expose(dose, 30_000 + 100 * k + j)  # benchmarks/real_quality.py's seeds
            n = len(noisy)
            cases.append((ds.name, dose, SimFrames(noisy.astype(np.float32), clean, np.full(n, ds.camera.offset),
                                                   np.full(n, ds.camera.gain))))
    noisy_sets, missing2 = real_noisy_sets()
    return cases, noisy_sets, missing + missing2


def ms_per_512(models: dict[str, object]) -> dict[str, float]:
    frame = (np.random.default_rng(0).poisson(20, (1, 512, 512)) + 100).astype(np.float32)
    out = {}
    for name, den in models.items():
        if name.startswith("old") or name.count(" ") > 1:  # the plain DDPM's cost is known; other estimates cost the same
            continue
        den.restore(frame[:, :128, :128], offset=100.0, gain=1.0)  # warm-up
        t = time.perf_counter()
        den.restore(frame, offset=100.0, gain=1.0)
        out[name] = (time.perf_counter() - t) * 1e3
        print(f"speed: {name:<14} {out[name]:9.0f} ms / 512^2", flush=True)
    return out


def _print(dataset: str, dose: float, res: dict[str, dict[str, float]]) -> None:
    for name, r in res.items():
        cov = f"  coverage {r['coverage']:.3f}" if "coverage" in r else ""
        print(f"{dataset:<15} dose {dose:>5g}: {name:<13} PSNR {r['psnr']:6.2f}{cov}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ddpm", help="the residual model: shipped name or checkpoint path")
    ap.add_argument("--old-ddpm", help="a plain-DDPM checkpoint to score beside it (K = 4, 10 steps)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--estimates", default="posterior", help="comma-separated: posterior, samples (the first is "
                    "the headline's)")
    ap.add_argument("--frames", type=int, default=4, help="simulated frames per dose and set")
    ap.add_argument("--size", type=int, default=128, help="simulated frame size")
    ap.add_argument("--real-size", type=int, default=256)
    ap.add_argument("--no-sim", action="store_true")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--no-timings", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    models = build_models(a.model, a.old_ddpm, a.steps, a.sampler, a.estimates.split(","))
    rows: list[dict] = []
    cases = [] if a.no_sim else sim_cases(a.frames, a.size)
    noisy_sets, missing = [], []
    if not a.no_real:
        real, noisy_sets, missing = real_cases(a.real_size)
        cases += real
    for dataset, dose, s in cases:
        res = evaluate(models, s.noisy, s.clean, s.offset, s.gain)
        _print(dataset, dose, res)
        rows += [{"dataset": dataset, "dose": dose, "method": m, **r} for m, r in res.items()]
    for ds in noisy_sets:
        n = len(ds.frames)
        res = evaluate(models, ds.frames, None, np.full(n, ds.camera.offset), np.full(n, ds.camera.gain),
                       reference=(ds.reference, ds.reference_var, ds.data_range))
        _print(ds.name, 0, res)
        rows += [{"dataset": ds.name, "dose": 0.0, "method": m, **r} for m, r in res.items()]
    speed = {} if a.no_timings else ms_per_512(models)
    for line in missing:
        print(f"missing dataset {line}")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "speed_ms_512": speed, "model": a.model, "steps": a.steps,
                                      "sampler": a.sampler}, indent=1))
    print(headline(rows))


def headline(rows: list[dict]) -> str:
    by: dict[tuple[str, float], dict[str, float]] = {}
    for r in rows:
        by.setdefault((r["dataset"], r["dose"]), {})[r["method"]] = r["psnr"]
    real = {k: v["rddpm K=8"] - v["unet"] for k, v in by.items() if not k[0].startswith("sim") and "rddpm K=8" in v}
    cases = real or {k: v["rddpm K=8"] - v["unet"] for k, v in by.items() if "rddpm K=8" in v}
    if not cases:
        return "residual_diffusion: nothing scored"
    worst = min(cases.values())
    mean = float(np.mean(list(cases.values())))
    return (f"residual_diffusion: {10 ** (-worst / 10):.3f} MSE of rddpm K=8 / unet, worst of {len(cases)} "
            f"{'real' if real else 'simulated'} cases ({worst:+.2f} dB worst, {mean:+.2f} dB mean)")


if __name__ == "__main__":
    main()
