"""Restoration quality on real fluorescence images (benchmarks/real_data.py): validation only.

    python benchmarks/real_quality.py                       # shipped models vs classical baselines
    python benchmarks/real_quality.py --model old=/path/unet_v1.pt --model cand=/path/best.pt
    python benchmarks/real_quality.py --plugin 'unet8=unet:{"ensemble": 8}' --only unet,unet8
    python benchmarks/real_quality.py --blind     # lowdose not told the camera: offset and gain estimated

Per dataset and dose (5, 20, 100 photons per pixel at the brightest): PSNR / SSIM of
raw, Gaussian (oracle sigma), NLM on the Anscombe transform (oracle h), BM3D on the
Anscombe transform, lowdose's own ``classical`` (GAT + NLM, defaults), each shipped
model and each extra checkpoint; the real-noise time-lapse (no truth) beside them,
scored against an independent noisy reference. The last line is the headline: the
live default (``unet``) against the best classical baseline, worst case over every
real case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import Method, bm3d, gaussian, nlm, score, tuned  # noqa: E402
from real_data import RealNoisySet, RealSet, real_noisy_sets, real_sets  # noqa: E402

from lowdose.models import available, load  # noqa: E402
from lowdose.models.simulate import CameraModel  # noqa: E402

DOSES = (5.0, 20.0, 100.0)
CLASSICAL = ("gaussian", "nlm (GAT)", "bm3d (GAT)", "classical")
CEILING = "ceiling"  # not a method: the PSNR the truth's own noise leaves reachable (RealSet.ceiling_psnr)


@dataclass
class RealRow:
    dataset: str
    dose: float  # photons per pixel at the brightest; the real-noise set: 0 (its own)
    method: str
    psnr: float
    ssim: float
    seconds_per_image: float
    note: str = ""


def learned(weights: str, cam: CameraModel | None) -> Method:
    """A checkpoint told the camera's offset and gain, or (``cam`` None) left to estimate them."""
    den = load(weights, device="cpu")
    told = {} if cam is None else {"offset": cam.offset, "gain": cam.gain}
    # float in -> float out, as the default restored dtype (float32) stores it
    return lambda f: den.restore(f.astype(np.float32), **told).frames


PLUGIN_PREFIX = "plugin:"  # a --plugin entry among the models: "plugin:NAME" or "plugin:NAME:{json options}"


def plugin(name: str, cam: CameraModel | None, options: dict | None = None) -> Method:
    from lowdose.plugins.denoisers.registry import create_denoiser

    den = create_denoiser(name, options or {}, device="cpu")
    told = {} if cam is None else {"offset": cam.offset, "gain": cam.gain}
    return lambda f: den.restore(f.astype(np.float32), **told).frames


def configured(spec: str, cam: CameraModel | None) -> Method:
    name, _, options = spec[len(PLUGIN_PREFIX):].partition(":")
    return plugin(name, cam, json.loads(options) if options else None)


def methods_for(cam: CameraModel, noisy: np.ndarray, clean: np.ndarray | None,
                models: dict[str, str], only: set[str] | None = None,
                blind: bool = False) -> list[tuple[str, Method, str]]:
    """The methods scored on one case; ``blind``: lowdose's own are not told the camera (the
    baselines still are: they stand for the best a person could tune by hand)."""
    own = None if blind else cam
    out: list[tuple[str, Method, str]] = [("raw", lambda f: f.astype(np.float32), "")]
    if only is not None and not only & {"gaussian", "nlm (GAT)"}:
        pass  # oracle tuning costs several restorations: skip it when those rows are not wanted
    elif clean is not None:  # oracle tuning needs the truth
        g, gs = tuned(gaussian, (0.7, 1.0, 1.5, 2.0, 3.0), noisy, clean)
        nl, hs = tuned(lambda h: nlm(h, cam), (0.6, 0.8, 1.0, 1.3), noisy, clean)
        out += [("gaussian", g, f"sigma={gs}"), ("nlm (GAT)", nl, f"h={hs}")]
    else:
        out += [("gaussian", gaussian(1.0), "sigma=1.0"), ("nlm (GAT)", nlm(0.8, cam), "h=0.8")]
    out += [("bm3d (GAT)", bm3d(cam), ""), ("classical", plugin("classical", own), "lowdose GAT+NLM")]
    out += [(name, learned(w, own), "") if not w.startswith(PLUGIN_PREFIX) else (name, configured(w, own), w)
            for name, w in models.items()]
    if "unet" in models:  # what the daemon runs by default
        out.append(("auto", plugin("auto", own), "risk-weighted: unet, raw and Gaussian filters weighted by SURE"))
    return out


def _timed(m: Method, noisy: np.ndarray) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = m(noisy)
    return out, (time.perf_counter() - t) / len(noisy)


def _keep(methods: list[tuple[str, Method, str]], only: set[str] | None) -> list[tuple[str, Method, str]]:
    return [m for m in methods if only is None or m[0] in only]


def score_clean(ds: RealSet, dose: float, models: dict[str, str], seed: int,
                only: set[str] | None = None, blind: bool = False) -> list[RealRow]:
    noisy, clean = ds.expose(dose, seed)
    rows = []
    for name, m, note in _keep(methods_for(ds.camera, noisy, clean, models, only, blind), only):
        out, dt = _timed(m, noisy)
        s = np.array([score(out[i], clean[i])[:2] for i in range(len(noisy))]).mean(0)
        rows.append(RealRow(ds.name, dose, name, float(s[0]), float(s[1]), dt, note))
    rows.append(RealRow(ds.name, dose, CEILING, ds.ceiling_psnr(dose), float("nan"), 0.0,
                        "the truth's own white noise, Wiener-shrunk: no method can beat it"))
    return rows


def score_noisy_reference(ds: RealNoisySet, models: dict[str, str], only: set[str] | None = None,
                          blind: bool = False) -> list[RealRow]:
    rows = []
    for name, m, note in _keep(methods_for(ds.camera, ds.frames, None, models, only, blind), only):
        out, dt = _timed(m, ds.frames)
        mse = [max(float(np.mean((out[i].astype(np.float64) - ds.reference[i]) ** 2)) - ds.reference_var[i], 1e-6)
               for i in range(len(out))]
        p = float(np.mean([10 * np.log10(ds.data_range**2 / e) for e in mse]))
        rows.append(RealRow(ds.name, 0.0, name, p, float("nan"), dt, note))
    return rows


def run(size: int, models: dict[str, str], doses: tuple[float, ...] = DOSES,
        only: set[str] | None = None, blind: bool = False) -> tuple[list[RealRow], list[str]]:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    sets, missing = real_sets(size)
    noisy_sets, missing2 = real_noisy_sets()
    rows: list[RealRow] = []
    for k, ds in enumerate(sets):
        for j, dose in enumerate(doses):
            for r in score_clean(ds, dose, models, seed=30_000 + 100 * k + j, only=only, blind=blind):
                rows.append(r)
                _print(r)
    for ds in noisy_sets:
        for r in score_noisy_reference(ds, models, only, blind):
            rows.append(r)
            _print(r)
    return rows, missing + missing2


def _print(r: RealRow) -> None:
    print(f"{r.dataset:<13} dose {r.dose:>5g}: {r.method:<14} PSNR {r.psnr:6.2f}  SSIM {r.ssim:.3f}  "
          f"{r.seconds_per_image:.2f} s/img {r.note}", flush=True)


def margins(rows: list[RealRow], model: str, against: tuple[str, ...] = CLASSICAL) -> dict[tuple[str, float], float]:
    """dB of ``model`` over the best of ``against`` (default: every classical baseline), per (dataset, dose)."""
    by: dict[tuple[str, float], dict[str, float]] = {}
    for r in rows:
        by.setdefault((r.dataset, r.dose), {})[r.method] = r.psnr
    return {k: v[model] - max(v[c] for c in against if c in v) for k, v in by.items()
            if model in v and any(c in v for c in against)}


def table(rows: list[RealRow]) -> str:
    lines = ["| dataset | dose | method | PSNR dB | SSIM | s/frame |", "|---|---|---|---|---|---|"]
    for r in rows:
        dose = "own" if r.dose == 0 else f"{r.dose:g}"
        ssim_s = "" if np.isnan(r.ssim) else f"{r.ssim:.3f}"
        lines.append(f"| {r.dataset} | {dose} | {r.method} | {r.psnr:.2f} | {ssim_s} | {r.seconds_per_image:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="crop size of the real images")
    ap.add_argument("--model", action="append", default=[], help="NAME=CHECKPOINT.pt to score beside the shipped ones")
    ap.add_argument("--plugin", action="append", default=[],
                    help='NAME=PLUGIN[:JSON] a plug-in with options, e.g. unet8=unet:{"ensemble": 8}')
    ap.add_argument("--no-shipped", action="store_true", help="score only the --model checkpoints")
    ap.add_argument("--doses", default=",".join(f"{d:g}" for d in DOSES), help="photons per pixel at the brightest")
    ap.add_argument("--only", help="comma-separated methods to score (e.g. 'raw,classical,unet')")
    ap.add_argument("--blind", action="store_true",
                    help="lowdose's own methods restore without the camera's offset and gain (estimated from the frames)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    models = {} if a.no_shipped else {n: n for n in ("unet", "n2v") if n in available()}
    models.update(dict(m.split("=", 1) for m in a.model))
    models.update({n: PLUGIN_PREFIX + spec for n, spec in (p.split("=", 1) for p in a.plugin)})
    t0 = time.time()
    only = set(a.only.split(",")) if a.only else None
    rows, missing = run(a.size, models, tuple(float(d) for d in a.doses.split(",")), only, a.blind)
    print("\n" + table(rows))
    for line in missing:
        print(f"missing dataset {line}")
    for name in models:
        m = margins(rows, name)
        print(f"\n{name} vs best classical: " + ", ".join(f"{d}@{'own' if dose == 0 else f'{dose:g}'} {v:+.2f}"
                                                        for (d, dose), v in m.items()))
    room = margins(rows, CEILING, CLASSICAL[:3])
    if room:
        print("\nroom left under the ceiling above the best classical baseline: "
              + ", ".join(f"{d}@{dose:g} {v:+.2f}" for (d, dose), v in room.items()))
    print(f"\ntotal {(time.time() - t0) / 60:.1f} min")
    if a.json:
        a.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "missing": missing, "models": models}, indent=1))
    print(headline(rows, "auto" if "unet" in models else next(iter(models), ""), a.blind))


def headline(rows: list[RealRow], head: str, blind: bool = False) -> str:
    """MSE ratio of ``head`` to the best classical baseline, worst real case (below 1: better everywhere)."""
    name = "real_quality_blind" if blind else "real_quality"
    m = margins(rows, head)
    if not m:
        return f"{name}: no model scored"
    worst = min(m.values())
    own = margins(rows, head, ("classical",))
    versus_own = f"; vs lowdose's classical {min(own.values()):+.2f} dB worst" if own else ""
    return (f"{name}: {10 ** (-worst / 10):.2f} MSE of {head} / best classical, worst of {len(m)} real cases "
            f"({worst:+.2f} dB{versus_own})")


if __name__ == "__main__":
    main()
