"""Domain-randomised fluorescence scenes: the varied training truth of the shipped models.

The demo's ``Specimen`` draws a few idealised structures. Real samples carry
texture the networks must not smooth away: chromatin inside nuclei, membranes
of packed epithelia, ER meshes, actin bundles, vesicles, dense tissue and plant
autofluorescence, out-of-focus haze and uneven backgrounds, imaged with PSFs
from confocal to widefield. ``random_scene`` composes one of each draw; every
choice comes from the generator it is given, so a seed reproduces a scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

Shape = tuple[int, int]


def _field(rng: np.random.Generator, shape: Shape, sigma: float) -> np.ndarray:
    """Smooth Gaussian random field, zero mean, unit std, periodic."""
    f = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _multiscale(rng: np.random.Generator, shape: Shape, sigmas: tuple[float, ...], slope: float) -> np.ndarray:
    """Sum of fields at several scales, weighted sigma**slope (slope > 0: coarse dominates)."""
    out = np.zeros(shape)
    for s in sigmas:
        out += (s**slope) * _field(rng, shape, s)
    return (out - out.mean()) / (out.std() + 1e-12)


def _voronoi(rng: np.random.Generator, shape: Shape, n: int, jitter: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Gap between the two nearest seeds' distances (0 on a cell edge) and the nearest seed's label."""
    edge, label, _ = _voronoi_full(rng, shape, n, jitter)
    return edge, label


def _voronoi_full(
    rng: np.random.Generator, shape: Shape, n: int, jitter: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Periodic Voronoi: edge gap, nearest seed's label, distance to the nearest seed."""
    h, w = shape
    pts = rng.uniform(0, 1, (n, 2)) * (h, w)
    tiles = np.concatenate([pts + (dy * h, dx * w) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if jitter > 0:  # wobbly cell outlines
        yy += jitter * _field(rng, shape, 6.0)
        xx += jitter * _field(rng, shape, 6.0)
    d, idx = cKDTree(tiles).query(np.stack([yy.ravel(), xx.ravel()], 1), k=2)
    edge = (d[:, 1] - d[:, 0]).reshape(shape)
    return edge, (idx[:, 0] % n).reshape(shape), d[:, 0].reshape(shape)


def _lines(canvas: np.ndarray, rng: np.random.Generator, n: int, length: tuple[float, float],
           curvature: float, weight: tuple[float, float]) -> None:
    """Add smooth random curves (persistent random walks) with bilinear splats."""
    h, w = canvas.shape
    for _ in range(n):
        steps = max(int(rng.uniform(*length) / 0.5), 2)
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, curvature, steps))
        ys = rng.uniform(0, h) + np.cumsum(0.5 * np.sin(heading))
        xs = rng.uniform(0, w) + np.cumsum(0.5 * np.cos(heading))
        wt = rng.uniform(*weight)
        y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
        fy, fx = ys - y0, xs - x0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                np.add.at(canvas, ((y0 + dy) % h, (x0 + dx) % w), wt * wy * wx)


def _dots(canvas: np.ndarray, rng: np.random.Generator, n: int, bright: tuple[float, float]) -> None:
    h, w = canvas.shape
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    np.add.at(canvas, (ys, xs), rng.uniform(*bright, n))


# --------------------------------------------------------------------------- structures


def nuclei(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Textured nuclei: chromatin, nucleoli, irregular outlines; sparse to tissue-packed."""
    h, w = shape
    density = rng.choice([0.3, 1.0, 3.0])
    radius = rng.uniform(8, 35)
    n = max(2, int(density * h * w / (np.pi * radius**2 * 4)))
    edge, label, d0 = _voronoi_full(rng, shape, n, jitter=rng.uniform(0, 0.25 * radius))
    # each nucleus: a soft round-to-lobed blob around its seed, cut where neighbours touch
    r_i = radius * rng.uniform(0.6, 1.2, n)[label] * (1 + rng.uniform(0, 0.15) * _field(rng, shape, radius / 2))
    soft = rng.uniform(0.5, 2.5)
    body = 1.0 / (1.0 + np.exp((d0 - r_i) / soft)) / (1.0 + np.exp((rng.uniform(1, 4) - edge) / soft))
    size = np.clip(1 - d0 / np.maximum(r_i, 1), 0, 1)
    level = rng.uniform(0.3, 1.0, n)[label]
    # from smooth (condensed stains, low magnification) to grainy chromatin
    chromatin = np.exp(rng.uniform(0.0, 0.8) * _multiscale(rng, shape, (1.0, 2.0, 4.0), rng.uniform(-0.5, 0.5)))
    img = body * level * chromatin
    if rng.random() < 0.7:  # nucleoli: dark holes or bright spots
        spots = np.zeros(shape)
        _dots(spots, rng, int(n * rng.uniform(1, 4)), (1.0, 1.0))
        spots = ndimage.gaussian_filter(spots, rng.uniform(1.5, 4), mode="wrap")
        spots /= spots.max() + 1e-12
        img *= (1 - 0.8 * spots) if rng.random() < 0.6 else (1 + 2 * spots)
    if rng.random() < 0.3:  # brighter nuclear envelope
        img += 0.4 * level * np.exp(-((size - 0.3) / 0.08) ** 2) * body
    return img


def membranes(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Epithelial sheet or plant cell walls: bright Voronoi edges with a dim cytoplasm."""
    n = int(rng.uniform(0.3, 3.0) * shape[0] * shape[1] / 2500)
    edge, label = _voronoi(rng, shape, max(n, 3), jitter=rng.uniform(0, 3))
    width = rng.uniform(0.6, 2.5)
    walls = np.exp(-((edge / width) ** 2)) * (1 + 0.4 * _field(rng, shape, 3.0)).clip(0.2)
    inside = rng.uniform(0.0, 0.25) * rng.uniform(0.3, 1.0, max(n, 3))[label]
    img = walls + inside
    if rng.random() < 0.4:  # chloroplast-like blobs along the walls
        blobs = np.zeros(shape)
        _dots(blobs, rng, int(n * rng.uniform(3, 10)), (0.5, 1.0))
        blobs = ndimage.gaussian_filter(blobs, rng.uniform(1.5, 3), mode="wrap")
        img += blobs / (blobs.max() + 1e-12) * (edge < 8)
    return img


def er_mesh(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Endoplasmic-reticulum-like mesh: zero level sets of a random field, with sheets."""
    f = _multiscale(rng, shape, (rng.uniform(3, 8), rng.uniform(8, 16)), 0.5)
    tubes = np.exp(-((f / rng.uniform(0.05, 0.15)) ** 2))
    sheets = np.clip(_field(rng, shape, 12.0) - 1.0, 0, None) * rng.uniform(0.0, 0.8)
    envelope = np.clip(0.6 + 0.6 * _field(rng, shape, 40.0), 0, 1)
    return (tubes + sheets) * envelope


def actin(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Stress fibres (straight, often parallel bundles), a cortical meshwork and filopodia."""
    canvas = np.zeros(shape)
    area = shape[0] * shape[1]
    _lines(canvas, rng, int(rng.uniform(0.3, 3) * area / 2500), (30, 300), rng.uniform(0.005, 0.05), (0.3, 1.0))
    if rng.random() < 0.6:  # a bundle of near-parallel fibres
        theta = rng.uniform(0, np.pi)
        sub = np.zeros(shape)
        for _ in range(int(rng.uniform(5, 25))):
            y0, x0 = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
            t = np.arange(0, rng.uniform(80, 400), 0.5)
            ang = theta + rng.normal(0, 0.03)
            ys, xs = y0 + t * np.sin(ang), x0 + t * np.cos(ang)
            _add_path(sub, ys, xs, rng.uniform(0.3, 1.0))
        canvas += sub
    mesh = np.clip(_field(rng, shape, 1.0), 0, None) * rng.uniform(0, 0.3)
    return canvas + mesh


def _add_path(canvas: np.ndarray, ys: np.ndarray, xs: np.ndarray, weight: float) -> None:
    h, w = canvas.shape
    np.add.at(canvas, (np.rint(ys).astype(np.int64) % h, np.rint(xs).astype(np.int64) % w), weight)


def filaments(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Microtubule-like curved filaments, sparse to dense."""
    canvas = np.zeros(shape)
    n = int(rng.uniform(0.3, 4) * shape[0] * shape[1] / 2500)
    _lines(canvas, rng, max(n, 1), (60, 400), rng.uniform(0.02, 0.08), (0.3, 0.6))
    return canvas


def mitochondria(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Short tubes and fragments, 2-5 px wide, some hollow (outer-membrane labels)."""
    canvas = np.zeros(shape)
    n = int(rng.uniform(0.3, 2) * shape[0] * shape[1] / 1500)
    _lines(canvas, rng, max(n, 1), (5, 50), rng.uniform(0.05, 0.2), (0.3, 0.6))
    width = rng.uniform(0.8, 2.0)
    tube = ndimage.gaussian_filter(canvas, width, mode="wrap")
    if rng.random() < 0.3:
        tube = np.clip(tube - ndimage.gaussian_filter(canvas, 0.6 * width, mode="wrap") * 0.5, 0, None)
    return tube


def vesicles(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Puncta of varied size and brightness, and hollow vesicles (rings)."""
    h, w = shape
    img = np.zeros(shape)
    n = int(rng.uniform(0.2, 3) * h * w / 400)
    spots = np.zeros(shape)
    _dots(spots, rng, max(n, 1), (0.2, 1.0))
    img += ndimage.gaussian_filter(spots, rng.uniform(0.3, 1.5), mode="wrap") * 6
    if rng.random() < 0.5:
        for _ in range(int(rng.uniform(3, 30))):
            r = rng.uniform(2, 10)
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            rr = int(r) + 4
            yy, xx = np.mgrid[-rr : rr + 1, -rr : rr + 1].astype(np.float64)
            ring = np.exp(-(((np.hypot(yy - cy % 1, xx - cx % 1) - r) / 0.9) ** 2)) * rng.uniform(0.3, 1.0)
            iy = (np.arange(-rr, rr + 1) + int(cy)) % h
            ix = (np.arange(-rr, rr + 1) + int(cx)) % w
            img[np.ix_(iy, ix)] += ring
    return img


def tissue(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Dense autofluorescence texture: log-normal multiscale fields, fibres, granules."""
    base = np.exp(rng.uniform(0.3, 1.2) * _multiscale(rng, shape, (1.0, 2.5, 6.0, 15.0), rng.uniform(-0.3, 0.7)))
    if rng.random() < 0.5:  # oriented fibres (collagen, elastin)
        noise = rng.normal(0, 1, shape)
        sig = (rng.uniform(0.7, 1.5), rng.uniform(4, 15))
        fib = ndimage.gaussian_filter(noise, sig, mode="wrap")
        fib = ndimage.rotate(fib, rng.uniform(0, 180), reshape=False, mode="wrap", order=1)
        base += np.clip(fib / (fib.std() + 1e-12), 0, None) * rng.uniform(0.3, 1.5)
    if rng.random() < 0.5:  # lipofuscin-like granules
        g = np.zeros(shape)
        _dots(g, rng, int(rng.uniform(0.5, 3) * shape[0] * shape[1] / 500), (0.5, 1.0))
        base += ndimage.gaussian_filter(g, rng.uniform(0.8, 2.0), mode="wrap") * 10
    return base


STRUCTURES: dict[str, Callable[[np.random.Generator, Shape], np.ndarray]] = {
    "nuclei": nuclei,
    "membranes": membranes,
    "er": er_mesh,
    "actin": actin,
    "filaments": filaments,
    "mitochondria": mitochondria,
    "vesicles": vesicles,
    "tissue": tissue,
}


def _background(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Uneven background: a level, a gradient and a smooth blotch field (vignetting, medium)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    grad = rng.normal(0, 1) * np.sin(2 * np.pi * yy) + rng.normal(0, 1) * np.cos(2 * np.pi * xx)
    blotch = _field(rng, shape, rng.uniform(20, 60))
    bg = rng.uniform(0.0, 0.15) + rng.uniform(0, 0.05) * grad + rng.uniform(0, 0.06) * blotch
    return np.clip(bg, 0.0, None)


def random_scene(rng: np.random.Generator, shape: Shape, structures: tuple[str, ...] | None = None) -> np.ndarray:
    """One randomised truth image (float32, periodic), 99.9th percentile near 1, background >= 0.

    One to three structures (with different weights), blurred by a Gaussian PSF
    of sigma 0.9-3 px, optional out-of-focus haze, an uneven background, and
    a random contrast curve (labels differ in how linear their brightness is).
    """
    names = structures or tuple(STRUCTURES)
    k = int(rng.choice([1, 1, 2, 2, 3]))
    picked = rng.choice(len(names), size=min(k, len(names)), replace=False)
    img = np.zeros(shape)
    for i, idx in enumerate(picked):
        layer = STRUCTURES[names[idx]](rng, shape)
        layer = layer / (np.percentile(layer, 99.5) + 1e-12)
        img += layer * (1.0 if i == 0 else rng.uniform(0.2, 0.8))
    img = np.clip(img, 0, None) ** rng.uniform(0.7, 1.4)
    # Nyquist-sampled confocal (~0.9 px) to widefield at high magnification (~3 px). Sharper
    # truths are pixel-scale texture a network cannot tell from shot noise: it then learns to
    # keep noise (measured: -5 dB on real nuclei against a model trained with this range).
    psf = float(np.exp(rng.uniform(np.log(0.9), np.log(3.0))))
    out = ndimage.gaussian_filter(img, psf, mode="wrap")
    if rng.random() < 0.5:  # out-of-focus light from planes above and below
        out += rng.uniform(0.1, 0.6) * ndimage.gaussian_filter(img, rng.uniform(6, 20), mode="wrap")
    out /= np.percentile(out, 99.9) + 1e-12
    out += _background(rng, shape)
    return out.astype(np.float32)


@dataclass(frozen=True)
class FineTexture:
    """Weak pixel-scale texture on a fraction of truths (off when ``fraction`` is 0).

    ``random_scene`` blurs every truth by a PSF of >= 0.9 px, yet real truths carry
    structure at the pixel: chromatin granularity, undersampled confocal detail, and
    the residual shot noise of the long exposure that serves as their reference. A
    network that never saw it smooths it away at high doses. The texture is weak
    (``amplitude`` relative to the local brightness, log-uniform per scene) so at low
    doses it sits below the shot noise and the network still learns to smooth there.
    """

    fraction: float = 0.0  # of scenes that get texture
    amplitude: tuple[float, float] = (0.02, 0.2)  # relative std of the texture, log-uniform per scene
    corr_px: tuple[float, float] = (0.5, 1.2)  # correlation length (Gaussian sigma) of the texture field

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fine texture fraction must be in [0, 1], got {self.fraction}")
        lo, hi = self.amplitude
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"fine texture amplitude must be 0 < low <= high < 1, got {self.amplitude}")
        if not 0.0 < self.corr_px[0] <= self.corr_px[1]:
            raise ValueError(f"fine texture correlation length must be 0 < low <= high px, got {self.corr_px}")

    @property
    def enabled(self) -> bool:
        return self.fraction > 0.0

    def apply(self, rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
        """``truth`` with texture on a ``fraction`` of calls; draws nothing from ``rng`` when off."""
        if not self.enabled or rng.random() >= self.fraction:
            return truth
        a = float(np.exp(rng.uniform(np.log(self.amplitude[0]), np.log(self.amplitude[1]))))
        t = _field(rng, truth.shape, float(rng.uniform(*self.corr_px)))
        pos = np.clip(truth, 0.0, None)
        if rng.random() < 0.5:  # granularity of the stain: proportional to the brightness
            out = truth * (1.0 + a * t)
        else:  # the reference's own residual shot noise: std grows as sqrt(brightness)
            out = truth + a * np.sqrt(pos * (np.percentile(pos, 99.9) + 1e-12)) * t
        return np.clip(out, 0.0, None).astype(truth.dtype)


__all__ = ["STRUCTURES", "FineTexture", "random_scene"]
