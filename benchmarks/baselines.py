"""Classical baselines of the quality benchmark, for any Poisson-Gaussian camera.

Every method maps (N, Y, X) frames in ADU to float ADU. The camera (offset,
gain, read noise) is given, as it is to the learned models: a fair comparison.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from lowdose.models.metrics import ms_ssim, psnr, ssim
from lowdose.models.simulate import CameraModel

Method = Callable[[np.ndarray], np.ndarray]  # (N, Y, X) ADU -> float ADU


def gat(e: np.ndarray, sigma: float) -> np.ndarray:
    """Generalised Anscombe transform: Poisson-Gaussian (electrons) -> ~unit-variance Gaussian."""
    return 2.0 * np.sqrt(np.maximum(e + 3.0 / 8.0 + sigma**2, 0.0))


def inverse_gat(d: np.ndarray, sigma: float) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse (Makitalo & Foi 2011/2013)."""
    d = np.maximum(d, 0.8)
    s = np.sqrt(1.5)
    e = 0.25 * d**2 + 0.25 * s / d - 11.0 / 8.0 / d**2 + 5.0 / 8.0 * s / d**3 - 1.0 / 8.0 - sigma**2
    return np.maximum(e, 0.0)


def electrons(frames: np.ndarray, cam: CameraModel) -> np.ndarray:
    return (frames.astype(np.float64) - cam.offset) / cam.gain


def adu(e: np.ndarray, cam: CameraModel) -> np.ndarray:
    return (e * cam.gain + cam.offset).astype(np.float32)


def gaussian(sigma: float) -> Method:
    return lambda f: np.stack([ndimage.gaussian_filter(x.astype(np.float32), sigma) for x in f])


def nlm(h: float, cam: CameraModel) -> Method:
    from skimage.restoration import denoise_nl_means

    def run(f: np.ndarray) -> np.ndarray:
        out = []
        for x in electrons(f, cam):
            d = gat(x, cam.read_noise)
            den = denoise_nl_means(d, h=h, sigma=1.0, patch_size=5, patch_distance=6, fast_mode=True)
            out.append(inverse_gat(den, cam.read_noise))
        return adu(np.stack(out), cam)

    return run


def bm3d(cam: CameraModel) -> Method:
    import bm3d as bm3d_pkg

    def run(f: np.ndarray) -> np.ndarray:
        out = []
        for x in electrons(f, cam):
            d = gat(x, cam.read_noise)
            out.append(inverse_gat(np.asarray(bm3d_pkg.bm3d(d, sigma_psd=1.0)), cam.read_noise))
        return adu(np.stack(out), cam)

    return run


def score(img: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """PSNR, SSIM, MS-SSIM with the reference's own range as data range."""
    dr = float(ref.max() - ref.min())
    return psnr(ref, img, dr), ssim(ref, img, dr), ms_ssim(ref, img, dr)


def tuned(make: Callable[[float], Method], grid: tuple[float, ...], noisy: np.ndarray, clean: np.ndarray) -> tuple[Method, float]:
    """Pick the parameter with the best PSNR on the first frame (oracle tuning)."""
    scores = [(score(make(p)(noisy[:1])[0], clean[0])[0], p) for p in grid]
    best = max(scores)[1]
    return make(best), best
