"""Does ``lowdose adapt`` pay off within its budget? Adapted vs unadapted model, on frames it never saw.

For each sample and dose: N noisy frames of one field (camera counts, Poisson-Gaussian) are written
as a TIFF, ``lowdose adapt`` runs on them for ``--minutes``, and the base model and the adapted one
restore frames the adaptation never saw: another field of the same sample, and a later time point
of the adapted field (the sample drifts). PSNR against the noise-free truth, in ADU; lowdose's ``classical`` (GAT + NLM) beside them.

Samples: the project's simulator (a held-out seed), and real fluorescence when a file is given or
found: the fixed-nuclei image that stardist ships (``stardist/data/images/img2d.tif``, 2018 Data
Science Bowl; ``pip download stardist==0.9.2 --no-deps`` and unzip the wheel). Its own faint noise
is part of the "truth": at 5-20 photons per pixel it is far below the noise added here.

    OMP_NUM_THREADS=1 python benchmarks/adapt.py --minutes 2 --frames 8

The last line is the headline: mean PSNR gain of the adapted over the unadapted model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile
import torch
from scipy import ndimage

from lowdose.models import load
from lowdose.models.adapt import AdaptConfig
from lowdose.models.adapt_offline import adapt_stack
from lowdose.models.metrics import psnr, ssim
from lowdose.models.risk_weighted import RiskWeightedDenoiser
from lowdose.plugins.denoisers.registry import create_denoiser
from lowdose.models.simulate import CameraModel, Specimen, expected_adu, expose

CAMERA = CameraModel(offset=100.0, gain=2.0, read_noise=1.5)
Truth = Callable[[float], np.ndarray]  # time in frames -> (Y, X) noise-free image in [0, ~1]


def drifting(image: np.ndarray, y0: int, x0: int, shape: tuple[int, int], speed: tuple[float, float]) -> Truth:
    """A window onto ``image`` that drifts ``speed`` px per frame (sub-pixel: spline shift)."""

    def truth(t: float) -> np.ndarray:
        dy, dx = speed[0] * t, speed[1] * t
        iy, ix = int(np.floor(dy)), int(np.floor(dx))
        win = image[y0 + iy : y0 + iy + shape[0] + 1, x0 + ix : x0 + ix + shape[1] + 1]
        return ndimage.shift(win, (-(dy - iy), -(dx - ix)), order=1, mode="nearest")[: shape[0], : shape[1]]

    return truth


def real_nuclei(path: Path) -> dict[str, Truth]:
    img = tifffile.imread(path).astype(np.float32)
    img = np.clip((img - np.percentile(img, 0.5)) / (np.percentile(img, 99.9) - np.percentile(img, 0.5)), 0, 1.2)
    img = 0.03 + img  # a dim background, as real frames have
    h, w = img.shape
    shape = (h // 2 - 16, w - 16)
    return {"adapted field": drifting(img, 0, 0, shape, (0.25, 0.15)),
            "another field": drifting(img, h // 2, 0, shape, (0.25, 0.15))}


def simulated(size: tuple[int, int]) -> dict[str, Truth]:
    # seeds far from the training recipes' (0..) and the held-out set's (10,000..)
    a = Specimen(size, kind="mixed", seed=51_001, drift_px_per_frame=0.3)
    b = Specimen(size, kind="mixed", seed=51_002, drift_px_per_frame=0.3)
    return {"adapted field": a.truth, "another field": b.truth}


def find_real(given: str | None) -> Path | None:
    if given:
        return Path(given)
    spec = importlib.util.find_spec("stardist")
    if spec and spec.origin:
        p = Path(spec.origin).parent / "data" / "images" / "img2d.tif"
        return p if p.exists() else None
    return None


def run_case(sample: str, fields: dict[str, Truth], dose: float, args: argparse.Namespace, tmp: Path) -> list[dict]:
    rng = np.random.default_rng(int(dose * 1000) + len(sample))
    adapted_field = fields["adapted field"]
    stack = np.stack([expose(adapted_field(float(t)), dose, CAMERA, rng) for t in range(args.frames)])
    tif = tmp / f"{sample}-{dose:g}.tif"
    tifffile.imwrite(tif, stack)
    out = tmp / f"{sample}-{dose:g}.pt"
    t0 = time.perf_counter()
    res = adapt_stack(tif, base=args.base, out=out, offset=CAMERA.offset, gain=CAMERA.gain,
                      max_minutes=args.minutes, threads=1, cfg=AdaptConfig(lr=args.lr, crop=args.crop))
    spent = time.perf_counter() - t0
    tests = {"another field": fields["another field"](0.0),
             "later time point": adapted_field(float(args.frames + 16))}
    base, adapted = load(args.base, device="cpu"), load(out, device="cpu")
    classical = create_denoiser("classical", {}, device="cpu")  # lowdose's own GAT + non-local means
    blended = RiskWeightedDenoiser(adapted)  # the adapted model under auto's per-frame blend
    rows = []
    for what, truth in tests.items():
        clean = expected_adu(truth, dose, CAMERA)
        noisy = np.stack([expose(truth, dose, CAMERA, rng) for _ in range(2)]).astype(np.float32)
        dr = float(clean.max() - clean.min())
        score = {}
        for name, den in (("raw", None), ("classical", classical), ("base", base), ("adapted", adapted),
                          ("adapted_blend", blended)):
            out_frames = noisy if den is None else den.restore(noisy, offset=CAMERA.offset, gain=CAMERA.gain).frames
            score[name] = (float(np.mean([psnr(clean, f, dr) for f in out_frames])),
                           float(np.mean([ssim(clean, f, dr) for f in out_frames])))
        rows.append({"sample": sample, "dose": dose, "test": what, "frames": args.frames,
                     "shape": list(stack.shape[1:]), "mode": res.run.mode, "steps": res.run.steps,
                     "adapt_s": round(spent, 1), "val_drop_pct": round(100 * res.run.improvement, 2),
                     **{f"psnr_{k}": round(v[0], 3) for k, v in score.items()},
                     **{f"ssim_{k}": round(v[1], 4) for k, v in score.items()}})
        r = rows[-1]
        print(f"{sample:10s} dose {dose:5g} {what:17s} raw {r['psnr_raw']:6.2f}  classical {r['psnr_classical']:6.2f}  base {r['psnr_base']:6.2f}  "
              f"adapted {r['psnr_adapted']:6.2f} (blended {r['psnr_adapted_blend']:6.2f}) dB  ({r['psnr_adapted'] - r['psnr_base']:+.2f} dB; "
              f"SSIM {r['ssim_base']:.3f} -> {r['ssim_adapted']:.3f}; {r['steps']} steps, {r['adapt_s']:.0f} s, "
              f"held-out loss -{r['val_drop_pct']:.1f} %)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="adaptation budget per case")
    ap.add_argument("--frames", type=int, default=8, help="frames adapted on")
    ap.add_argument("--doses", default="5,20,100", help="peak photons per pixel")
    ap.add_argument("--base", default="unet", help="model to adapt")
    ap.add_argument("--lr", type=float, default=AdaptConfig.lr, help="adaptation learning rate")
    ap.add_argument("--crop", type=int, default=AdaptConfig.crop, help="training crop size")
    ap.add_argument("--real", default=None, help="a real fluorescence image (default: stardist's img2d.tif if installed)")
    ap.add_argument("--no-sim", action="store_true", help="skip the simulated sample")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    samples: dict[str, dict[str, Truth]] = {}
    real = find_real(args.real)
    if real is not None:
        samples["real-nuclei"] = real_nuclei(real)
    else:
        print("no real image found (give --real PATH or install stardist): simulated sample only")
    if not args.no_sim:
        samples["simulated"] = simulated((256, 496))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for sample, fields in samples.items():
            for dose in (float(d) for d in args.doses.split(",")):
                rows += run_case(sample, fields, dose, args, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    gains = np.array([r["psnr_adapted"] - r["psnr_base"] for r in rows])
    over_classical = np.array([r["psnr_adapted"] - r["psnr_classical"] for r in rows])
    print(f"adapted vs classical (GAT + NLM): mean {over_classical.mean():+.2f} dB, min {over_classical.min():+.2f}")
    blend_over = np.array([r["psnr_adapted_blend"] - r["psnr_classical"] for r in rows])
    print(f"adapted + auto's blend vs classical: mean {blend_over.mean():+.2f} dB, min {blend_over.min():+.2f}")
    print(f"adapt: {gains.mean():+.2f} dB mean PSNR gain of the adapted over the unadapted {args.base} on frames it "
          f"never saw ({len(rows)} cases, min {gains.min():+.2f}, max {gains.max():+.2f}; {args.minutes:g} min, "
          f"{args.frames} frames, 1 CPU thread)")


if __name__ == "__main__":
    main()
