"""What ``auto``'s per-frame blend costs: ms per frame of ``auto`` against the ``unet`` it builds on.

    python benchmarks/auto_speed.py            # 512^2 and 2048^2, low and high dose
    python benchmarks/auto_speed.py --sizes 512

The issue's budget: the live model within 2x the UNet's time. Frames are simulated
(nuclei and filaments) at 8 and 100 photons per pixel at the brightest: ``auto`` restores the
first with the UNet and the second with ``classical`` before blending, so both paths are timed.
The last line is the headline: the worst ratio over the sizes and doses.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lowdose.models.simulate import CameraModel, Specimen, expose
from lowdose.plugins.denoisers.registry import create_denoiser

CAM = CameraModel(offset=100.0, gain=1.5, read_noise=1.6)


def _ms(den, frames: np.ndarray, repeat: int) -> float:
    den.restore(frames, offset=CAM.offset, gain=CAM.gain)  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        den.restore(frames, offset=CAM.offset, gain=CAM.gain)
    return (time.perf_counter() - t) / repeat * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,2048")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(2)
    names = ("unet", "dose-aware", "auto")
    dens = {n: create_denoiser(n, {}, device="cpu") for n in names}
    worst = 0.0
    print(f"{'size':>6} {'photons':>8} " + " ".join(f"{n + ' ms':>14}" for n in names) + f" {'auto/unet':>10}")
    for side in (int(s) for s in a.sizes.split(",")):
        truth = Specimen((side, side), kind="mixed", seed=1).truth(0.0)
        for dose in (8.0, 100.0):
            frames = expose(truth, dose, CAM, np.random.default_rng(2))[None].astype(np.float32)
            ms = {n: _ms(d, frames, a.repeat if side <= 512 else 1) for n, d in dens.items()}
            ratio = ms["auto"] / ms["unet"]
            worst = max(worst, ratio)
            print(f"{side:>6} {dose:>8g} " + " ".join(f"{ms[n]:>14.0f}" for n in names) + f" {ratio:>10.2f}", flush=True)
    print(f"auto_speed: {worst:.2f} ms of auto / ms of unet per frame, worst of sizes {a.sizes} at 8 and 100 photons "
          f"(budget 2.0)")


if __name__ == "__main__":
    main()
