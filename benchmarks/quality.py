"""Restoration quality and speed: real fluorescence images, and held-out simulated frames.

    python benchmarks/quality.py                  # full run (~20-30 min on a 2-core CPU)
    python benchmarks/quality.py --no-sim         # the real images only (~3 min)
    python benchmarks/quality.py --images 1 --size 128 --no-sampler-study --real-size 128   # smoke test

Real images first (benchmarks/real_data.py: validation only, shipped inside PyPI packages,
``pip install --no-deps stardist==0.9.2 mahotas==1.4.19 nellie==1.0.4``), scored by
benchmarks/real_quality.py; the headline (last line) is ``auto`` against the best classical
baseline on them, worst case. Then the simulated set:

Frames come from ``lowdose.models.simulate.held_out_set`` (seeds never used in
training) at peak ~5, 20 and 100 photons, camera offset 100 ADU, gain 1,
read noise 1.5 e-. Metrics are computed in ADU against the noise-free expected
image (data range = that image's range). Classical baselines get their
smoothing strength chosen per dose with the truth (an oracle advantage).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # noqa: E402
import real_quality  # noqa: E402
from baselines import gaussian  # noqa: E402

from lowdose.models import available, load  # noqa: E402
from lowdose.models.simulate import CameraModel, held_out_set  # noqa: E402

DOSES = (5.0, 20.0, 100.0)
CAMERA = CameraModel(offset=100.0, gain=1.0, read_noise=1.5)
Method = baselines.Method


# --------------------------------------------------------------------------- classical baselines


def nlm(h: float) -> Method:
    return baselines.nlm(h, CAMERA)


def bm3d_method(f: np.ndarray) -> np.ndarray:
    return baselines.bm3d(CAMERA)(f)


def tuned(make: Callable[[float], Method], grid: tuple[float, ...], noisy: np.ndarray, clean: np.ndarray) -> tuple[Method, float]:
    return baselines.tuned(make, grid, noisy, clean)


# --------------------------------------------------------------------------- learned models


def learned(name: str, device: str = "cpu", **options: object) -> Method:
    den = load(name, device=device, **options)
    # float in -> float out: a uint16 output would be rounded to whole ADU, which at a few
    # photons per pixel costs several dB that the float classical baselines do not pay
    return lambda f: den.restore(f.astype(np.float32), offset=CAMERA.offset, gain=CAMERA.gain).frames


# --------------------------------------------------------------------------- scoring


_score = baselines.score


@dataclass
class Row:
    method: str
    dose: float
    psnr: float
    ssim: float
    ms_ssim: float
    seconds_per_image: float
    note: str = ""
    mse: list[float] = field(default_factory=list)  # per image, ADU^2


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    speed_ms: dict[str, dict[str, float | str]] = field(default_factory=dict)
    uncertainty_spearman: dict[float, float] = field(default_factory=dict)
    ddpm_limit_psnr: dict[float, float] = field(default_factory=dict)
    sampler_study: list[Row] = field(default_factory=list)


def evaluate(name: str, method: Method, noisy: np.ndarray, clean: np.ndarray, dose: float, note: str = "") -> Row:
    t = time.perf_counter()
    out = method(noisy)
    dt = (time.perf_counter() - t) / len(noisy)
    s = np.array([_score(out[i], clean[i]) for i in range(len(noisy))]).mean(0)
    mse = [float(np.mean((out[i].astype(np.float64) - clean[i]) ** 2)) for i in range(len(noisy))]
    return Row(name, dose, float(s[0]), float(s[1]), float(s[2]), dt, note, mse)


def averaging_limit(k1: Row, kk: Row, k: int, clean: np.ndarray) -> float:
    """PSNR of the K -> infinity average of DDPM samples, extrapolated from K = 1 and K = k.

    The mean of k independent samples has MSE = B + V / k (B: error of the sampler's
    own mean, V: per-pixel sample variance), so two K give B. This is the best any
    amount of averaging can reach with this network; for a perfect posterior sampler
    B is the MMSE and V equals it, so K = 8 stays 10 log10(1 + 1/8) = 0.51 dB short.
    """
    out = []
    for i, (m1, mk) in enumerate(zip(k1.mse, kk.mse)):
        b = max((k * mk - m1) / (k - 1), 1e-12)
        dr = float(clean[i].max() - clean[i].min())
        out.append(10.0 * np.log10(dr**2 / b))
    return float(np.mean(out))


def ddpm_capturing(weights: str, samples: int, store: dict[str, np.ndarray], device: str = "cpu") -> Method:
    """The DDPM method that also keeps its uncertainty map for the correlation study."""
    den = load(weights, device=device, samples=samples, steps=10)

    def run(f: np.ndarray) -> np.ndarray:
        res = den.restore(f.astype(np.float32), offset=CAMERA.offset, gain=CAMERA.gain)
        assert res.uncertainty is not None
        store["uncertainty"] = res.uncertainty
        store["frames"] = res.frames
        return res.frames.astype(np.float32)

    return run


def uncertainty_correlation(frames: np.ndarray, uncertainty: np.ndarray, clean: np.ndarray, tile: int = 16) -> float:
    """Spearman correlation of per-tile mean uncertainty and per-tile RMSE, pooled over frames."""
    unc, err = [], []
    n, h, w = frames.shape
    for i in range(n):
        for y in range(0, h - tile + 1, tile):
            for x in range(0, w - tile + 1, tile):
                sl = (i, slice(y, y + tile), slice(x, x + tile))
                unc.append(float(uncertainty[sl].mean()))
                err.append(float(np.sqrt(np.mean((frames[sl].astype(np.float64) - clean[sl]) ** 2))))
    return float(stats.spearmanr(unc, err).statistic)


# --------------------------------------------------------------------------- speed


def _time(fn: Callable[[], object], repeat: int = 1) -> float:
    fn()  # warm-up (allocations, torch kernels)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1e3


def speed(methods: dict[str, Method], ddpm_evals: dict[str, int], big: bool, ddpm: str = "ddpm") -> dict[str, dict[str, float | str]]:
    rng = np.random.default_rng(0)
    frames = {s: (rng.poisson(20, (1, s, s)) + 100).astype(np.uint16) for s in (512, 2048)}
    out: dict[str, dict[str, float | str]] = {}
    for name, m in methods.items():
        ms512 = _time(lambda: m(frames[512]))
        measured = big and name in ("gaussian", "unet", "n2v", "classical", "auto")
        ms2048 = _time(lambda: m(frames[2048])) if measured else ms512 * 16
        out[name] = {"ms_512": ms512, "ms_2048": ms2048, "2048": "measured" if measured else "x16 of 512^2"}
    if ddpm_evals:
        # One network evaluation over a whole frame (tiled), times the evaluations a sampler makes.
        den = load(ddpm, device="cpu", samples=1, steps=1)
        ms_eval = _time(lambda: den.restore(frames[512]))
        for name, evals in ddpm_evals.items():
            out[name] = {"ms_512": ms_eval * evals, "ms_2048": ms_eval * evals * 16,
                         "2048": f"{evals} x one measured 512^2 evaluation, x16"}
    return out


# --------------------------------------------------------------------------- main


def run(images: int, size: int, sampler_study: bool, big: bool, timings: bool, ddpm: str = "ddpm",
        device: str = "cpu", with_ddpm: bool = True) -> Report:
    torch.set_num_threads(2)
    rep = Report()
    have = set(available())
    if not with_ddpm:
        have.discard("ddpm")
    if ddpm != "ddpm":  # a checkpoint path: score it in the shipped DDPM's place
        have.add("ddpm")
    for k, dose in enumerate(DOSES):
        noisy, clean = held_out_set(images, size, dose, CAMERA, seed=20_000 + 100 * k)
        g, gs = tuned(gaussian, (0.7, 1.0, 1.5, 2.0, 3.0), noisy, clean)
        nl, hs = tuned(nlm, (0.6, 0.8, 1.0), noisy, clean)
        methods: list[tuple[str, Method, str]] = [
            ("raw", lambda f: f.astype(np.float32), ""),
            ("gaussian", g, f"sigma={gs}"),
            ("nlm (GAT)", nl, f"h={hs}"),
            ("bm3d (GAT)", bm3d_method, ""),
        ]
        methods += [(n, learned(n, device), "") for n in ("n2v", "unet") if n in have]
        methods += [("classical", real_quality.plugin("classical", CAMERA), "lowdose GAT+NLM")]
        if "unet" in have:
            methods.append(("auto", real_quality.plugin("auto", CAMERA), "risk-weighted"))
        captured: dict[str, np.ndarray] = {}
        if "ddpm" in have:
            methods += [(f"ddpm K={kk}", learned(ddpm, device, samples=kk, steps=10), "DDIM 10 steps") for kk in (1, 4)]
            methods.append(("ddpm K=8", ddpm_capturing(ddpm, 8, captured, device), "DDIM 10 steps"))
        for name, m, note in methods:
            row = evaluate(name, m, noisy, clean, dose, note)
            rep.rows.append(row)
            print(f"dose {dose:>5}: {name:<12} PSNR {row.psnr:6.2f}  SSIM {row.ssim:.3f}  MS-SSIM {row.ms_ssim:.3f}  {row.seconds_per_image:.2f} s/img {note}", flush=True)
        if "ddpm" in have:
            rep.uncertainty_spearman[dose] = uncertainty_correlation(captured["frames"], captured["uncertainty"], clean)
            print(f"dose {dose:>5}: uncertainty-vs-error Spearman rho = {rep.uncertainty_spearman[dose]:.3f}", flush=True)
            by_name = {r.method: r for r in rep.rows if r.dose == dose}
            rep.ddpm_limit_psnr[dose] = averaging_limit(by_name["ddpm K=1"], by_name["ddpm K=8"], 8, clean)
            print(f"dose {dose:>5}: ddpm K->inf (extrapolated from K=1, 8) PSNR {rep.ddpm_limit_psnr[dose]:6.2f}", flush=True)
            if sampler_study:
                for name, opts in [("ancestral 200", dict(sampler="ancestral")), ("ddim 5", dict(steps=5)),
                                   ("ddim 10", dict(steps=10)), ("ddim 20", dict(steps=20))]:
                    row = evaluate(name, learned(ddpm, device, samples=1, **opts), noisy[:1], clean[:1], dose)
                    rep.sampler_study.append(row)
                    print(f"dose {dose:>5}: sampler {name:<14} PSNR {row.psnr:6.2f}  SSIM {row.ssim:.3f}  {row.seconds_per_image:.1f} s", flush=True)
    if timings:
        timing_methods: dict[str, Method] = {"gaussian": gaussian(1.5), "nlm (GAT)": nlm(0.8), "bm3d (GAT)": bm3d_method}
        timing_methods.update({n: learned(n) for n in ("n2v", "unet") if n in have})
        timing_methods["classical"] = real_quality.plugin("classical", CAMERA)
        if "unet" in have:
            timing_methods["auto"] = real_quality.plugin("auto", CAMERA)
        evals = {"ddpm K=1 (10 steps)": 10, "ddpm K=4 (10 steps)": 40, "ddpm K=8 (10 steps)": 80, "ddpm 200 ancestral": 200}
        rep.speed_ms = speed(timing_methods, evals if "ddpm" in have else {}, big, ddpm)
    return rep


def targets(rep: Report) -> list[str]:
    lines = []
    by = {(r.method, r.dose): r for r in rep.rows}
    for dose in DOSES:
        best = max((r for r in rep.rows if r.dose == dose), key=lambda r: r.psnr)
        ok = best.method.startswith("ddpm K=") and best.method != "ddpm K=1"
        lines.append(f"[{'MET' if ok else 'MISSED'}] averaged DDPM best at dose {dose:g}: best is {best.method} ({best.psnr:.2f} dB)")
    for dose in DOSES:
        study = {r.method: r.psnr for r in rep.sampler_study if r.dose == dose}
        if "ancestral 200" in study:
            for steps in (10, 20):
                d = study[f"ddim {steps}"] - study["ancestral 200"]
                lines.append(f"[{'MET' if d >= -0.3 else 'MISSED'}] dose {dose:g}: DDIM {steps} ({200 // steps}x fewer evals) vs ancestral 200: {d:+.2f} dB")
    if ("unet", 5.0) in by:
        gain = by[("unet", 5.0)].psnr - by[("raw", 5.0)].psnr
        lines.append(f"[{'MET' if gain >= 8 else 'MISSED'}] UNet gain over raw at dose 5: {gain:+.2f} dB (target +8)")
        for dose in DOSES:
            classical = max(by[(m, dose)].psnr for m in ("gaussian", "nlm (GAT)", "bm3d (GAT)"))
            u = by[("unet", dose)].psnr
            lines.append(f"[{'MET' if u > classical else 'MISSED'}] UNet vs best classical at dose {dose:g}: {u:.2f} vs {classical:.2f} dB")
    for dose, rho in rep.uncertainty_spearman.items():
        lines.append(f"[report] dose {dose:g}: Spearman(per-tile uncertainty, per-tile RMSE) = {rho:.3f}")
    for dose, limit in rep.ddpm_limit_psnr.items():
        if ("unet", dose) in by:
            lines.append(f"[report] dose {dose:g}: DDPM averaged without limit (K->inf, extrapolated) {limit:.2f} dB "
                         f"vs UNet {by[('unet', dose)].psnr:.2f} dB")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3, help="held-out frames per dose")
    ap.add_argument("--size", type=int, default=192, help="frame size in pixels")
    ap.add_argument("--no-sampler-study", action="store_true", help="skip ancestral-200 vs DDIM")
    ap.add_argument("--no-timings", action="store_true")
    ap.add_argument("--no-2048", action="store_true", help="extrapolate all 2048^2 timings from 512^2")
    ap.add_argument("--ddpm", default="ddpm", help="DDPM to score: the shipped name or a checkpoint path")
    ap.add_argument("--device", default="cpu", help="device of the learned models' quality runs (timings stay on CPU)")
    ap.add_argument("--json", type=Path, help="write all figures here")
    ap.add_argument("--no-ddpm", action="store_true", help="skip the DDPM (its rows take most of the time)")
    ap.add_argument("--no-real", action="store_true", help="skip the real fluorescence images (benchmarks/real_data.py)")
    ap.add_argument("--no-sim", action="store_true", help="skip the simulated held-out set")
    ap.add_argument("--real-size", type=int, default=256, help="crop size of the real images")
    a = ap.parse_args()
    t0 = time.time()
    real_rows: list[real_quality.RealRow] = []
    if not a.no_real:
        models = {n: n for n in ("unet", "n2v") if n in available()}
        real_rows, missing = real_quality.run(a.real_size, models)
        print("\nReal fluorescence images (validation only, never trained on):\n" + real_quality.table(real_rows))
        for line in missing:
            print(f"missing dataset {line}")
        for name in (*models, "auto"):
            m = real_quality.margins(real_rows, name)
            print(f"{name} vs best classical: " + ", ".join(
                f"{d}@{'own' if dose == 0 else f'{dose:g}'} {v:+.2f}" for (d, dose), v in m.items()))
    if a.no_sim:
        print(real_quality.headline(real_rows, "auto").replace("real_quality:", "quality:", 1))
        return
    rep = run(a.images, a.size, not a.no_sampler_study, not a.no_2048, not a.no_timings, a.ddpm, a.device,
              not a.no_ddpm)
    print("\n| dose | method | PSNR dB | SSIM | MS-SSIM | s/frame |\n|---|---|---|---|---|---|")
    for r in rep.rows:
        print(f"| {r.dose:g} | {r.method} | {r.psnr:.2f} | {r.ssim:.3f} | {r.ms_ssim:.3f} | {r.seconds_per_image:.2f} |")
    if rep.sampler_study:
        print("\n| dose | sampler (K=1) | network evals | PSNR dB | SSIM |\n|---|---|---|---|---|")
        for r in rep.sampler_study:
            evals = 200 if r.method.startswith("ancestral") else int(r.method.split()[1])
            print(f"| {r.dose:g} | {r.method} | {evals} | {r.psnr:.2f} | {r.ssim:.3f} |")
    if rep.speed_ms:
        print("\n| method | ms / 512^2 | ms / 2048^2 | 2048^2 figure |\n|---|---|---|---|")
        for name, s in rep.speed_ms.items():
            print(f"| {name} | {s['ms_512']:.0f} | {s['ms_2048']:.0f} | {s['2048']} |")
    print("\nTargets (issue 3):")
    for line in targets(rep):
        print("  " + line)
    print(f"\ntotal benchmark time {(time.time() - t0) / 60:.1f} min")
    if a.json:
        a.json.write_text(json.dumps({
            "rows": [r.__dict__ for r in rep.rows], "sampler_study": [r.__dict__ for r in rep.sampler_study],
            "speed_ms": rep.speed_ms, "uncertainty_spearman": rep.uncertainty_spearman,
            "ddpm_limit_psnr": rep.ddpm_limit_psnr,
            "targets": targets(rep), "args": vars(a) | {"json": str(a.json)},
            "real_rows": [r.__dict__ for r in real_rows],
        }, indent=1))
    if real_rows:  # never judge a model on the simulator alone
        print(real_quality.headline(real_rows, "auto").replace("real_quality:", "quality:", 1) + "; simulated: "
              + headline(rep).removeprefix("quality: "))
    else:
        print(headline(rep))


def headline(rep: Report) -> str:
    """The live default against the best classical baseline scored in this run, per dose."""
    by = {(r.method, r.dose): r for r in rep.rows}
    parts = []
    for dose in DOSES:
        if ("unet", dose) not in by:
            continue
        classical = max(by[(m, dose)].psnr for m in ("gaussian", "nlm (GAT)", "bm3d (GAT)") if (m, dose) in by)
        gain = by[("unet", dose)].psnr - classical
        parts.append(f"{10 ** (-gain / 10):.2f} at {dose:g} ph ({gain:+.2f} dB)")
    return "quality: MSE unet/best classical " + ", ".join(parts) if parts else "quality: no unet rows scored"


if __name__ == "__main__":
    main()
