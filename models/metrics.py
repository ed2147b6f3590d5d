"""Image quality metrics: PSNR, SSIM and MS-SSIM (implemented here, no extra dependency)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def psnr(ref: np.ndarray, img: np.ndarray, data_range: float | None = None) -> float:
    ref = np.asarray(ref, np.float64)
    img = np.asarray(img, np.float64)
    dr = float(ref.max() - ref.min()) if data_range is None else data_range
    mse = float(np.mean((ref - img) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(dr**2 / mse)


def ssim(ref: np.ndarray, img: np.ndarray, data_range: float | None = None) -> float:
    ref = np.asarray(ref, np.float64)
    dr = float(ref.max() - ref.min()) if data_range is None else data_range
    return float(structural_similarity(ref, np.asarray(img, np.float64), data_range=dr, gaussian_weights=True))


def _ssim_terms(x: np.ndarray, y: np.ndarray, dr: float) -> tuple[float, float]:
    """Mean of SSIM's luminance*cs map and of its contrast-structure map (Gaussian window, sigma 1.5)."""
    c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
    f = lambda a: ndimage.gaussian_filter(a, 1.5, truncate=3.5)  # noqa: E731
    mx, my = f(x), f(y)
    sxx = f(x * x) - mx * mx
    syy = f(y * y) - my * my
    sxy = f(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return float(np.mean(lum * cs)), float(np.mean(cs))


def ms_ssim(ref: np.ndarray, img: np.ndarray, data_range: float | None = None) -> float:
    """Multi-scale SSIM; uses as many of the 5 scales as the image size allows (>= 16 px at the coarsest)."""
    x = np.asarray(ref, np.float64)
    y = np.asarray(img, np.float64)
    dr = float(x.max() - x.min()) if data_range is None else data_range
    levels = 1
    while levels < 5 and min(x.shape) // 2**levels >= 16:
        levels += 1
    w = np.array(MS_SSIM_WEIGHTS[:levels])
    w = w / w.sum()
    vals = []
    for lvl in range(levels):
        s, cs = _ssim_terms(x, y, dr)
        vals.append(s if lvl == levels - 1 else cs)
        if lvl < levels - 1:
            x = ndimage.uniform_filter(x, 2)[::2, ::2]
            y = ndimage.uniform_filter(y, 2)[::2, ::2]
    vals_arr = np.clip(np.array(vals), 1e-6, None)  # negative cs at a coarse scale would give NaN
    return float(np.prod(vals_arr**w))
