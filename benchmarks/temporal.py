"""Does a causal window of previous frames restore moving samples better than the single frame?

Both models start from the shipped UNet and adapt the same way (Noise2Noise, the next frame as
target, ``--minutes`` each) on the first frames of a moving time-lapse; the windowed one also sees
the ``--window - 1`` frames before as input channels (their weights start at zero). Scored on later
frames neither saw, against the truth, in the network's normalised units (the same for both).

    OMP_NUM_THREADS=1 python benchmarks/temporal.py --minutes 1

The last line is the headline: the window's PSNR gain over the single frame (negative: not kept).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt import CAMERA, drifting, find_real  # noqa: E402  (the same samples and camera)

import tifffile  # noqa: E402

from lowdose.models import load  # noqa: E402
from lowdose.models.adapt import AdaptConfig, Adapter, run_adaptation  # noqa: E402
from lowdose.models.metrics import psnr  # noqa: E402
from lowdose.models.simulate import Specimen, expected_adu, expose  # noqa: E402


def samples(real: Path | None) -> dict:
    out = {"simulated (0.3 px/frame, faster puncta)": Specimen((256, 256), seed=52_001, drift_px_per_frame=0.3).truth,
           "simulated (1.5 px/frame)": Specimen((256, 256), seed=52_002, drift_px_per_frame=1.5).truth}
    if real is not None:
        img = tifffile.imread(real).astype(np.float32)
        img = 0.03 + np.clip((img - np.percentile(img, 0.5)) / (np.percentile(img, 99.9) - np.percentile(img, 0.5)), 0, 1.2)
        out["real nuclei (0.25 px/frame)"] = drifting(img, 0, 0, (256, 256), (0.25, 0.15))
        out["real nuclei (1.5 px/frame)"] = drifting(img, 0, 0, (256, 256), (1.5, 0.9))
    return out


@torch.no_grad()
def score(adapter: Adapter, noisy: np.ndarray, clean: np.ndarray, ts: list[int]) -> float:
    """Mean PSNR of frames ``ts`` restored by the adapter's best weights, in normalised units."""
    net = adapter.ema
    net.load_state_dict(adapter.best_state)
    w = adapter.cfg.window
    vals = []
    for t in ts:
        cur = noisy[t : t + 1]
        x, truth = adapter.base.network_pair(cur, clean[t : t + 1], offset=CAMERA.offset, gain=CAMERA.gain)
        if w > 1:
            prev = noisy[[max(t - k, 0) for k in range(1, w)]]
            x = torch.cat([x] + [adapter.base.network_pair(cur, prev[k : k + 1], offset=CAMERA.offset,
                                                           gain=CAMERA.gain)[1] for k in range(w - 1)], 1)
        p = net(x)[0, 0].numpy()
        ref = truth[0, 0].numpy()
        vals.append(psnr(ref, p, float(ref.max() - ref.min())))
    return float(np.mean(vals))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--frames", type=int, default=12, help="frames adapted on")
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--doses", default="5,20")
    ap.add_argument("--real", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = load("unet", device="cpu")
    gains = []
    for name, truth in samples(find_real(args.real) if args.real or importlib.util.find_spec("stardist") else None).items():
        for dose in (float(d) for d in args.doses.split(",")):
            rng = np.random.default_rng(int(dose))
            n = args.frames + 8
            clean = np.stack([expected_adu(truth(float(t)), dose, CAMERA) for t in range(n)])
            noisy = np.stack([expose(truth(float(t)), dose, CAMERA, rng) for t in range(n)]).astype(np.float32)
            test = list(range(args.frames + 4, n))  # later time points, never adapted on
            res = {}
            for w in (1, args.window):
                ad = Adapter(base, AdaptConfig(window=w))
                ad.set_frames([noisy[: args.frames]], CAMERA.offset, CAMERA.gain)
                run_adaptation(ad, max_minutes=args.minutes)
                res[w] = (score(ad, noisy, clean, test), ad.step_count)
            gains.append(res[args.window][0] - res[1][0])
            print(f"{name:40s} dose {dose:4g}: single frame {res[1][0]:6.2f} dB ({res[1][1]} steps), "
                  f"window {args.window} {res[args.window][0]:6.2f} dB ({res[args.window][1]} steps): "
                  f"{gains[-1]:+.2f} dB", flush=True)
    g = np.array(gains)
    print(f"temporal: {g.mean():+.2f} dB mean PSNR of a causal window of {args.window} over the single frame on moving "
          f"samples ({len(g)} cases, min {g.min():+.2f}, max {g.max():+.2f}; both adapted {args.minutes:g} min)")


if __name__ == "__main__":
    main()
