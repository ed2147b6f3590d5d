"""Real fluorescence images shipped inside PyPI packages: validation only, never training.

No download happens at run time: the images are data files of wheels, installed
without their dependencies (nothing of these packages is imported):

    pip install --no-deps stardist==0.9.2 mahotas==1.4.19

Each image serves as the truth: it is scaled so that its 99.9th percentile is the
dose (photons per pixel at the brightest) and exposed with a known camera
(Poisson shot noise, read noise, gain, offset, whole-ADU rounding), or with a
photon-counting detector (no read noise). The images carry a little noise of
their own, which puts a ceiling on every method's PSNR alike.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lowdose.models.simulate import CameraModel, expose

SCMOS = CameraModel(offset=100.0, gain=2.0, read_noise=1.6)
EMCCD_LIKE = CameraModel(offset=200.0, gain=0.8, read_noise=3.0)  # CCD-like read noise, sub-unit gain
PHOTON_COUNTING = CameraModel(offset=0.0, gain=1.0, read_noise=0.0)


@dataclass(frozen=True)
class RealSet:
    name: str
    what: str
    source: str  # package and file
    truth: np.ndarray  # (N, Y, X) float32, 99.9th percentile 1
    camera: CameraModel

    def expose(self, dose: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(noisy uint16 ADU, expected ADU) at ``dose`` photons per pixel at the brightest."""
        rng = np.random.default_rng(seed)
        cam = self.camera
        noisy = np.stack([expose(t, dose, cam, rng) for t in self.truth])
        clean = (cam.offset + cam.gain * dose * self.truth).astype(np.float32)
        return noisy, clean


    def ceiling_psnr(self, dose: float) -> float:
        """A PSNR no restoration can reach at ``dose``: the truth carries white noise of its own, which
        the exposure copies into the frame as if it were texture. No method can tell its white part
        from shot noise, so even the Wiener shrinkage that knows both variances leaves
        ``v_own * v_shot / (v_own + v_shot)`` per pixel (``v_own``: the quietest tenth of 8x8 blocks'
        high-pass variance, a lower bound; whatever structure a method also misses only adds)."""
        from lowdose.plugins.denoisers.noise_model import block_statistics

        t = np.clip(self.truth.astype(np.float64), 0.0, None)
        _, v = block_statistics(t)
        own = float(np.quantile(v, 0.10)) * dose**2  # e^2
        cam = self.camera
        shot = t * dose + cam.read_noise**2 + 1.0 / 12.0 / cam.gain**2  # e^2, with whole-ADU rounding
        floor = float(np.mean(own * shot / (own + shot)))
        span = float(np.mean([x.max() - x.min() for x in t])) * dose
        return float(10.0 * np.log10(span**2 / floor))


class DataMissing(RuntimeError):
    pass


def _package_file(dist: str, suffix: str) -> Path:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise DataMissing(f"{dist} is not installed: pip install --no-deps {dist} (its data files only)") from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(str(f.locate()))
    raise DataMissing(f"{dist} does not ship {suffix}")


def _unit(img: np.ndarray) -> np.ndarray:
    """Dark level to ~0.02, 99.9th percentile to 1 (a dim background as in fluorescence)."""
    img = img.astype(np.float64)
    lo, hi = np.percentile(img, [0.5, 99.9])
    return (0.02 + 0.98 * np.clip((img - lo) / (hi - lo), 0.0, None)).astype(np.float32)


def _crops(img: np.ndarray, size: int, n: int) -> np.ndarray:
    """The ``n`` non-overlapping crops with the most structure (std) on a grid (or the whole image)."""
    h, w = img.shape
    size = min(size, h, w)
    cands = [(float(img[y : y + size, x : x + size].std()), y, x)
             for y in range(0, h - size + 1, max(size // 2, 1)) for x in range(0, w - size + 1, max(size // 2, 1))]
    out: list[np.ndarray] = []
    taken: list[tuple[int, int]] = []
    for _, y, x in sorted(cands, reverse=True):
        if all(abs(y - ty) >= size or abs(x - tx) >= size for ty, tx in taken):
            taken.append((y, x))
            out.append(img[y : y + size, x : x + size])
        if len(out) == n:
            break
    return np.stack(out)


def nuclei_fixed(size: int) -> RealSet:
    import imageio.v3 as iio

    path = _package_file("mahotas", "mahotas/demos/data/nuclear.png")
    img = iio.imread(path)[..., 0]
    return RealSet("nuclei-fixed", "fixed cell nuclei, DNA stain, widefield (8-bit)",
                   "mahotas 1.4.19: mahotas/demos/data/nuclear.png", _crops(_unit(img), size, 2), SCMOS)


def nuclei_dsb(size: int) -> RealSet:
    import tifffile

    path = _package_file("stardist", "stardist/data/images/img2d.tif")
    img = tifffile.imread(path)
    return RealSet("nuclei-dsb", "cell nuclei, DNA stain (Data Science Bowl 2018 image)",
                   "stardist 0.9.2: stardist/data/images/img2d.tif", _crops(_unit(img), size, 2), PHOTON_COUNTING)


def nuclei_3d(size: int) -> RealSet:
    import tifffile

    path = _package_file("stardist", "stardist/data/images/img3d.tif")
    stack = tifffile.imread(path)  # (31, 61, 57)
    lo, hi = np.percentile(stack, [0.5, 99.9])
    sl = stack[[8, 14, 20, 26]].astype(np.float64)
    truth = (0.02 + 0.98 * np.clip((sl - lo) / (hi - lo), 0, None)).astype(np.float32)
    return RealSet("nuclei-3d", "nuclei in a 3D stack, single z-slices (61x57 px)",
                   "stardist 0.9.2: stardist/data/images/img3d.tif", truth, EMCCD_LIKE)


def tissue_ihc(size: int) -> RealSet:
    """Dense tissue texture: a stain-density image (not fluorescence; the nearest dense real texture shipped)."""
    import imageio.v3 as iio
    from skimage.color import rgb2hed

    path = _package_file("scikit-image", "skimage/data/ihc.png")
    hema = rgb2hed(iio.imread(path)[..., :3])[..., 0]  # haematoxylin optical density: nuclei and tissue, densely packed
    return RealSet("tissue-ihc", "tissue section, haematoxylin density as a dense-texture proxy (brightfield IHC)",
                   "scikit-image: skimage/data/ihc.png", _crops(_unit(hema), size, 2), PHOTON_COUNTING)


LOADERS = {"nuclei-fixed": nuclei_fixed, "nuclei-dsb": nuclei_dsb, "nuclei-3d": nuclei_3d, "tissue-ihc": tissue_ihc}


def real_sets(size: int = 256, names: tuple[str, ...] | None = None) -> tuple[list[RealSet], list[str]]:
    """The datasets found, and one line per dataset that is missing."""
    found, missing = [], []
    for name in names or tuple(LOADERS):
        try:
            found.append(LOADERS[name](size))
        except DataMissing as exc:
            missing.append(f"{name}: {exc}")
    return found, missing


# --------------------------------------------------------------------------- real noise, no truth


@dataclass(frozen=True)
class RealNoisySet:
    """Frames with their own camera noise and, per frame, an independent noisy reference.

    The reference is the mean of the previous and next time point at the same z;
    its noise variance is mean((prev - next)^2) / 4, so mean((restored - reference)^2)
    minus that variance estimates the error against the (unknown) truth without bias
    (motion between the time points adds to every method's error alike).
    """

    name: str
    what: str
    source: str
    frames: np.ndarray  # (N, Y, X) uint16 ADU
    reference: np.ndarray  # (N, Y, X) float32 ADU
    reference_var: np.ndarray  # (N,) ADU^2
    data_range: float  # ADU, of the temporal mean image
    camera: CameraModel  # offset and gain estimated from the frames themselves


def yeast_mitochondria() -> RealNoisySet:
    """Live yeast mitochondria, a 3D time-lapse with its camera's noise (~15 photons at the brightest)."""
    import tifffile

    from lowdose.plugins.denoisers.noise_model import estimate_noise_params

    path = _package_file("nellie", "sample_data/yeast_3d_mitochondria.ome.tif")
    stack = tifffile.imread(path)  # (T=30, Z=17, Y, X)
    frames, refs, ref_var = [], [], []
    for z in (10, 12, 14):
        for t in (4, 14, 24):
            prev, nxt = stack[t - 1, z].astype(np.float64), stack[t + 1, z].astype(np.float64)
            frames.append(stack[t, z])
            refs.append(((prev + nxt) / 2).astype(np.float32))
            ref_var.append(float(np.mean((prev - nxt) ** 2) / 4))
    est = estimate_noise_params(stack[:10, 12])
    mean_img = stack[:, 12].astype(np.float64).mean(0)
    lo, hi = np.percentile(mean_img, [0.1, 99.9])
    return RealNoisySet(
        "yeast-mito", "live yeast mitochondria, 3D time-lapse, the camera's own noise (real low dose)",
        "nellie 1.0.4: sample_data/yeast_3d_mitochondria.ome.tif", np.stack(frames), np.stack(refs),
        np.array(ref_var), float(hi - lo), CameraModel(offset=est.offset, gain=est.gain, read_noise=1.0),
    )


def real_noisy_sets() -> tuple[list[RealNoisySet], list[str]]:
    try:
        return [yeast_mitochondria()], []
    except DataMissing as exc:
        return [], [f"yeast-mito: {exc}"]
