"""Physical simulator of low-dose fluorescence frames with known truth.

Used by the demo's simulated camera, by the training recipes of the shipped
models and by the quality benchmark. The scene is rendered once on a periodic
(toroidal) canvas, blurred by a Gaussian PSF, and moved per time point by
sub-pixel shifts, so ``Specimen.truth`` costs a few array copies per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .detectors import expose_random
from .scenes import FineTexture, random_scene

KINDS = ("filaments", "microtubules", "mitochondria", "puncta", "nuclei", "mixed")


@dataclass(frozen=True)
class CameraModel:
    offset: float = 100.0  # ADU dark level
    gain: float = 1.0  # ADU per photo-electron
    read_noise: float = 1.5  # e- rms
    bit_depth: int = 16


def expected_adu(truth: np.ndarray, peak_photons: float, camera: CameraModel) -> np.ndarray:
    """Noise-free image in ADU: what an infinitely repeated exposure averages to."""
    return (camera.offset + camera.gain * peak_photons * np.asarray(truth, np.float32)).astype(
        np.float32
    )


def expose(
    truth: np.ndarray, peak_photons: float, camera: CameraModel, rng: np.random.Generator
) -> np.ndarray:
    """One camera exposure in ADU (uint16): shot noise, read noise, gain, offset, quantisation."""
    lam = np.clip(np.asarray(truth, np.float64) * peak_photons, 0.0, None)
    electrons = rng.poisson(lam).astype(np.float64)
    electrons += rng.normal(0.0, camera.read_noise, size=lam.shape)
    adu = np.rint(camera.offset + camera.gain * electrons)
    return np.clip(adu, 0, 2**camera.bit_depth - 1).astype(np.uint16)


# --------------------------------------------------------------------------- rendering


def _splat(canvas: np.ndarray, ys: np.ndarray, xs: np.ndarray, w: np.ndarray) -> None:
    """Add weights at sub-pixel points with bilinear footprints on a periodic canvas."""
    h, wd = canvas.shape
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    fy = ys - y0
    fx = xs - x0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            np.add.at(canvas, ((y0 + dy) % h, (x0 + dx) % wd), w * wy * wx)


def _paths(
    rng: np.random.Generator, n: int, length: tuple[float, float], curvature: float, shape: tuple[int, int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Smooth random curves (persistent random walks), sampled every 0.5 px."""
    out = []
    for _ in range(n):
        steps = max(int(rng.uniform(*length) / 0.5), 2)
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, curvature, steps))
        y = rng.uniform(0, shape[0]) + np.cumsum(0.5 * np.sin(heading))
        x = rng.uniform(0, shape[1]) + np.cumsum(0.5 * np.cos(heading))
        out.append((y, x))
    return out


def _render_filaments(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    canvas = np.zeros(shape, np.float64)
    area = shape[0] * shape[1]
    n = max(1, int(density * area / 2500))
    for y, x in _paths(rng, n, (80, 400), 0.04, shape):
        _splat(canvas, y, x, np.full(y.shape, 0.5 * rng.uniform(0.6, 1.0)))
    return canvas


def _render_mitochondria(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    canvas = np.zeros(shape, np.float64)
    area = shape[0] * shape[1]
    n = max(1, int(density * area / 3000))
    for y, x in _paths(rng, n, (8, 40), 0.12, shape):
        _splat(canvas, y, x, np.full(y.shape, 0.5 * rng.uniform(0.5, 1.0)))
    # tubes ~ 3-4 px wide before the PSF
    return ndimage.gaussian_filter(canvas, 1.3, mode="wrap") * 5.0


def _render_puncta(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    canvas = np.zeros(shape, np.float64)
    area = shape[0] * shape[1]
    n = max(1, int(density * area / 400))
    ys = rng.uniform(0, shape[0], n)
    xs = rng.uniform(0, shape[1], n)
    _splat(canvas, ys, xs, rng.uniform(0.3, 1.0, n) * 6.0)
    return canvas


def _render_nuclei(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    h, w = shape
    canvas = np.zeros(shape, np.float64)
    n = max(1, int(density * h * w / 40000))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2.0, mode="wrap")
    texture = 1.0 + 0.35 * texture / (texture.std() + 1e-9)
    for _ in range(n):
        ry, rx = rng.uniform(12, 40, 2)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        theta = rng.uniform(0, np.pi)
        r = int(max(ry, rx)) + 3
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
        yy -= cy % 1
        xx -= cx % 1
        u = (xx * np.cos(theta) + yy * np.sin(theta)) / rx
        v = (-xx * np.sin(theta) + yy * np.cos(theta)) / ry
        # soft edge, brighter rim (nuclear envelope) and a few nucleoli
        d = np.sqrt(u**2 + v**2)
        body = 1.0 / (1.0 + np.exp((d - 1.0) * 25.0))
        rim = np.exp(-(((d - 0.95) / 0.06) ** 2))
        patch = rng.uniform(0.25, 0.45) * body + 0.25 * rim
        iy = (np.arange(-r, r + 1) + int(cy)) % h
        ix = (np.arange(-r, r + 1) + int(cx)) % w
        canvas[np.ix_(iy, ix)] += patch
    return canvas * texture


_RENDERERS = {
    "filaments": _render_filaments,
    "microtubules": _render_filaments,
    "mitochondria": _render_mitochondria,
    "puncta": _render_puncta,
    "nuclei": _render_nuclei,
}


def _shift_periodic(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Sub-pixel periodic shift by bilinear interpolation (fast enough for live use)."""
    iy, ix = int(np.floor(dy)), int(np.floor(dx))
    fy, fx = dy - iy, dx - ix
    a = np.roll(img, (iy, ix), axis=(0, 1))
    b = np.roll(a, 1, axis=0)
    top = a * np.float32(1 - fy) + b * np.float32(fy)
    return top * np.float32(1 - fx) + np.roll(top, 1, axis=1) * np.float32(fx)


class Specimen:
    """Slowly moving fluorescent scene with known truth (filaments/microtubules, tubular mitochondria, puncta, nuclei, or 'mixed')."""

    def __init__(
        self,
        shape: tuple[int, int],
        kind: str = "mixed",
        seed: int = 0,
        psf_sigma_px: float = 1.5,
        drift_px_per_frame: float = 0.2,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown specimen kind {kind!r}; choose one of {', '.join(KINDS)}")
        if len(shape) != 2 or min(shape) < 8:
            raise ValueError(f"shape must be (Y, X) with both >= 8, got {shape}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.kind = kind
        self.seed = seed
        self.psf_sigma_px = psf_sigma_px
        self.drift_px_per_frame = drift_px_per_frame
        rng = np.random.default_rng(seed)
        # A canvas a bit larger than the view avoids an obviously repeating scene.
        self._canvas_shape = (self.shape[0] + 64, self.shape[1] + 64)
        parts = ["filaments", "mitochondria", "nuclei"] if kind == "mixed" else [kind]
        static = np.zeros(self._canvas_shape, np.float64)
        for part in parts:
            layer = _RENDERERS[part](rng, self._canvas_shape, 0.6 if kind == "mixed" else 1.0)
            static += layer / (np.percentile(layer[layer > 0], 99.5) + 1e-12) * rng.uniform(0.7, 1.0)
        mobile = np.zeros(self._canvas_shape, np.float64)
        if kind in ("mixed", "puncta"):
            mobile = _render_puncta(rng, self._canvas_shape, 0.5 if kind == "mixed" else 1.0)
            if kind == "puncta":
                static, mobile = mobile, np.zeros_like(mobile)
        static = ndimage.gaussian_filter(static, psf_sigma_px, mode="wrap")
        mobile = ndimage.gaussian_filter(mobile, psf_sigma_px, mode="wrap")
        scale = np.percentile(static + mobile, 99.9) + 1e-12
        self._static = (static / scale).astype(np.float32)
        self._mobile = (mobile / scale).astype(np.float32) if mobile.any() else None
        # Background: a dim, smooth autofluorescence level between ~0.02 and ~0.05.
        bg = ndimage.gaussian_filter(rng.normal(0, 1, self._canvas_shape), 40, mode="wrap")
        bg = (bg - bg.min()) / (np.ptp(bg) + 1e-12)
        self._background = (0.02 + 0.03 * bg).astype(np.float32)
        self._direction = rng.uniform(0, 2 * np.pi)
        self._puncta_direction = rng.uniform(0, 2 * np.pi)
        self._wobble_phase = rng.uniform(0, 2 * np.pi, 2)
        self._cache: tuple[float, np.ndarray] | None = None

    def _position(self, t: float, direction: float, speed: float) -> tuple[float, float]:
        # Constant drift plus a slow wobble: smooth in t, never exactly periodic.
        wob = 1.5 * np.sin(2 * np.pi * t / 240.0 + self._wobble_phase)
        return (
            speed * t * np.sin(direction) + wob[0],
            speed * t * np.cos(direction) + wob[1],
        )

    def truth(self, t: float) -> np.ndarray:
        """Noise-free normalised fluorescence (float32, (Y, X)) at time ``t`` in frames."""
        if self._cache is not None and self._cache[0] == t:
            return self._cache[1].copy()
        dy, dx = self._position(t, self._direction, self.drift_px_per_frame)
        img = _shift_periodic(self._static, dy, dx)
        if self._mobile is not None:
            py, px = self._position(t, self._puncta_direction, 1.5 * self.drift_px_per_frame)
            img += _shift_periodic(self._mobile, py, px)
        img += self._background
        out = np.ascontiguousarray(img[: self.shape[0], : self.shape[1]], dtype=np.float32)
        self._cache = (t, out)
        return out.copy()


# --------------------------------------------------------------------------- training data


@dataclass(frozen=True)
class PairBatch:
    """Simulated training pairs. ``noisy`` in ADU; ``clean`` is the expected ADU (same units)."""

    noisy: np.ndarray  # float32 (B, Y, X)
    clean: np.ndarray  # float32 (B, Y, X)
    offset: np.ndarray  # float32 (B,)
    gain: np.ndarray  # float32 (B,)
    peak_photons: np.ndarray  # float32 (B,)


class PairGenerator:
    """Random crops of pre-rendered specimens exposed at random doses and cameras.

    Rendering a specimen is the slow part, so a bank of scenes is built once and
    crops are drawn at random positions, times, flips and rotations.
    """

    def __init__(
        self,
        seed: int = 0,
        n_scenes: int = 12,
        scene_size: int = 320,
        peak_photons: tuple[float, float] = (2.0, 200.0),
        kinds: tuple[str, ...] = ("mixed", "filaments", "mitochondria", "puncta", "nuclei"),
        psf_sigma_px: tuple[float, float] = (1.0, 2.2),
        randomize_camera: bool = True,
        domain: str = "simple",
        texture: FineTexture | None = None,
    ) -> None:
        if domain not in ("simple", "randomised"):
            raise ValueError(f"domain must be 'simple' or 'randomised', got {domain!r}")
        self.texture = texture or FineTexture()
        if self.texture.enabled and domain != "randomised":
            raise ValueError("fine texture is an option of the domain-randomised simulator: use domain='randomised'")
        self.rng = np.random.default_rng(seed)
        self.peak_photons = peak_photons
        self.randomize_camera = randomize_camera
        self.domain = domain
        self.scene_size = scene_size
        if domain == "randomised":
            # Static canvases from lowdose.models.scenes; crops at random positions, rotations and
            # flips, and one canvas redrawn every few batches, so a long run sees thousands of scenes.
            self.canvases = [self._canvas(self.rng) for _ in range(n_scenes)]
            self.scenes: list[Specimen] = []
            return
        self.canvases = []
        self.scenes = [
            Specimen(
                (scene_size, scene_size),
                kind=kinds[i % len(kinds)],
                seed=int(self.rng.integers(2**31)),
                psf_sigma_px=float(self.rng.uniform(*psf_sigma_px)),
                drift_px_per_frame=0.5,
            )
            for i in range(n_scenes)
        ]

    def _canvas(self, rng: np.random.Generator) -> np.ndarray:
        """A randomised scene, or (one in four) a smooth classic specimen: real samples are often smooth."""
        size = (self.scene_size, self.scene_size)
        if rng.random() < 0.25:
            kind = str(rng.choice(["mixed", "filaments", "mitochondria", "puncta", "nuclei"]))
            sp = Specimen(size, kind=kind, seed=int(rng.integers(2**31)), psf_sigma_px=float(rng.uniform(1.0, 2.5)))
            return self.texture.apply(rng, sp.truth(0.0))
        return self.texture.apply(rng, random_scene(rng, size))

    def camera(self, rng: np.random.Generator | None = None) -> CameraModel:
        if not self.randomize_camera:
            return CameraModel()
        r = rng or self.rng
        return CameraModel(
            offset=float(r.uniform(90, 500)),
            gain=float(np.exp(r.uniform(np.log(0.5), np.log(4.0)))),
            read_noise=float(r.uniform(0.8, 3.0)),
        )

    def truth_crop(self, crop: int, rng: np.random.Generator | None = None) -> np.ndarray:
        r = rng or self.rng
        if self.canvases:
            img = self.canvases[int(r.integers(len(self.canvases)))]
        else:
            img = self.scenes[int(r.integers(len(self.scenes)))].truth(float(r.uniform(0, 500)))
        y = int(r.integers(0, img.shape[0] - crop + 1))
        x = int(r.integers(0, img.shape[1] - crop + 1))
        img = img[y : y + crop, x : x + crop]
        img = np.rot90(img, int(r.integers(4)))
        if r.random() < 0.5:
            img = img[:, ::-1]
        # Brightness varies between samples so the models don't assume a fixed peak.
        return np.ascontiguousarray(img * r.uniform(0.6, 1.2), np.float32)

    def sample(self, batch: int, crop: int, rng: np.random.Generator | None = None) -> PairBatch:
        """``rng`` (default: the generator's own) lets a resumed training run continue the stream."""
        r = rng or self.rng
        lo, hi = np.log(self.peak_photons[0]), np.log(self.peak_photons[1])
        noisy, clean, off, gain, peaks = [], [], [], [], []
        if self.canvases and r.random() < 0.3:
            self.canvases[int(r.integers(len(self.canvases)))] = self._canvas(r)
        for _ in range(batch):
            truth = self.truth_crop(crop, r)
            peak = float(np.exp(r.uniform(lo, hi)))
            if self.canvases:
                shot = expose_random(truth * np.float32(peak), r)
                noisy.append(shot.noisy)
                clean.append((shot.offset + shot.gain * peak * truth).astype(np.float32))
                off.append(shot.offset)
                gain.append(shot.gain)
            else:
                cam = self.camera(r)
                noisy.append(expose(truth, peak, cam, r).astype(np.float32))
                clean.append(expected_adu(truth, peak, cam))
                off.append(cam.offset)
                gain.append(cam.gain)
            peaks.append(peak)
        f32 = np.float32
        return PairBatch(
            np.stack(noisy), np.stack(clean), np.array(off, f32), np.array(gain, f32), np.array(peaks, f32)
        )


def held_out_set(
    n: int, size: int, peak_photons: float, camera: CameraModel | None = None, seed: int = 10_000
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out (noisy uint16, expected ADU) frames from seeds the training recipes never use."""
    camera = camera or CameraModel()
    rng = np.random.default_rng(seed)
    kinds = ("mixed", "filaments", "mitochondria", "puncta", "nuclei")
    noisy, clean = [], []
    for i in range(n):
        # A sparse kind can leave a small view empty; such a frame has no structure to score.
        for attempt in range(20):
            sp = Specimen((size, size), kind=kinds[i % len(kinds)], seed=seed + i + 1000 * attempt, psf_sigma_px=1.5)
            truth = sp.truth(float(i * 7))
            if np.percentile(truth, 99.5) - np.median(truth) > 0.3:
                break
        noisy.append(expose(truth, peak_photons, camera, rng))
        clean.append(expected_adu(truth, peak_photons, camera))
    return np.stack(noisy), np.stack(clean)


__all__ = [
    "KINDS",
    "CameraModel",
    "Specimen",
    "expected_adu",
    "expose",
    "PairBatch",
    "PairGenerator",
    "held_out_set",
]
