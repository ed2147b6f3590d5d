"""Training data sources: simulated pairs, user pairs, and noisy frames alone.

Every source yields crops in ADU together with the camera offset and gain
that belong to them; the trainer normalises them exactly as inference does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .scenes import FineTexture
from .simulate import PairGenerator

IMAGE_SUFFIXES = (".tif", ".tiff")


def _as_frames(arr: np.ndarray, source: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim < 2:
        raise ValueError(f"{source}: expected images, got an array of shape {arr.shape}")
    return arr.reshape(-1, *arr.shape[-2:])


def _open_zarr(path: Path) -> np.ndarray:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return _as_frames(node[...], str(path))
    # A lowdose recording keeps the camera frames at store/raw (TCZYX); otherwise
    # take the first (full-resolution) array of an OME-Zarr multiscale group.
    for key in ("raw", "raw/0", "0"):
        try:
            sub = node[key]
        except KeyError:
            continue
        if isinstance(sub, zarr.Array):
            return _as_frames(sub[...], f"{path}/{key}")
    arrays = sorted(name for name, _ in node.arrays())
    if not arrays:
        raise ValueError(f"{path}: no image array found (looked for 'raw', '0' and any array)")
    return _as_frames(node[arrays[0]][...], f"{path}/{arrays[0]}")


def load_frames(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """Frames (N, Y, X) from a TIFF stack, a folder of TIFFs, or a Zarr/OME-Zarr store."""
    import tifffile

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"training data {p} does not exist")
    if p.suffix == ".zarr" or (p.is_dir() and (p / "zarr.json").exists()) or p.name.endswith(".ome.zarr"):
        frames = _open_zarr(p)
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{p}: folder holds no .tif/.tiff files")
        frames = np.concatenate([_as_frames(tifffile.imread(f), str(f)) for f in files])
    elif p.suffix.lower() in IMAGE_SUFFIXES:
        frames = _as_frames(tifffile.imread(p), str(p))
    elif p.suffix == ".npy":
        frames = _as_frames(np.load(p), str(p))
    else:
        raise ValueError(f"{p}: unsupported training data (use TIFF, a folder of TIFFs, Zarr or .npy)")
    return frames[:max_frames] if max_frames else frames


@dataclass(frozen=True)
class Batch:
    noisy: np.ndarray  # (B, Y, X) ADU float32
    clean: np.ndarray | None  # (B, Y, X) ADU float32, None for self-supervised data
    offset: np.ndarray  # (B,)
    gain: np.ndarray  # (B,)


class Source(Protocol):
    paired: bool

    def sample(self, batch: int, crop: int, rng: np.random.Generator) -> Batch: ...

    def summary(self) -> dict[str, object]: ...


class SimulatedSource:
    paired = True

    def __init__(
        self, seed: int = 0, peak_photons: tuple[float, float] = (2.0, 200.0), n_scenes: int = 12,
        domain: str = "simple", texture: FineTexture | None = None,
    ) -> None:
        self.gen = PairGenerator(seed=seed, peak_photons=peak_photons, n_scenes=n_scenes, domain=domain,
                                 texture=texture)
        self.texture = self.gen.texture
        self.seed = seed
        self.peak_photons = peak_photons
        self.n_scenes = n_scenes
        self.domain = domain

    def sample(self, batch: int, crop: int, rng: np.random.Generator) -> Batch:
        b = self.gen.sample(batch, crop, rng)
        return Batch(b.noisy, b.clean, b.offset, b.gain)

    def summary(self) -> dict[str, object]:
        if self.domain == "randomised":
            return {
                "source": "lowdose.models.simulate.PairGenerator (domain-randomised, lowdose.models.scenes)",
                "seed": self.seed, "peak_photons": list(self.peak_photons), "scenes": self.n_scenes,
                "structures": "nuclei with chromatin/nucleoli, membranes/epithelia/plant walls, ER mesh, actin, "
                              "filaments, mitochondria, vesicles/puncta, tissue autofluorescence; PSF sigma 0.9-3 px, "
                              "haze, uneven background; 1 in 4 scenes a classic Specimen; scene bank refreshed "
                              "during training",
                "camera": "sCMOS (pixel offset/gain spread), CCD, EMCCD (excess noise), photon counting "
                          "(lowdose.models.detectors); offset U(90,500) ADU, gain logU(0.5,4) ADU/e-",
                **({"fine_texture": {"fraction": self.texture.fraction, "amplitude": list(self.texture.amplitude),
                                     "corr_px": list(self.texture.corr_px)}} if self.texture.enabled else {}),
            }
        return {
            "source": "lowdose.models.simulate.PairGenerator", "seed": self.seed,
            "peak_photons": list(self.peak_photons), "scenes": self.n_scenes,
            "camera": "offset U(90,500) ADU, gain logU(0.5,4) ADU/e-, read noise U(0.8,3) e-",
        }


def _random_crops(
    rng: np.random.Generator, arrays: list[np.ndarray], batch: int, crop: int
) -> list[np.ndarray]:
    n, h, w = arrays[0].shape
    crop_y, crop_x = min(crop, h), min(crop, w)
    outs: list[list[np.ndarray]] = [[] for _ in arrays]
    for _ in range(batch):
        i = int(rng.integers(n))
        y = int(rng.integers(0, h - crop_y + 1))
        x = int(rng.integers(0, w - crop_x + 1))
        k = int(rng.integers(4))
        flip = rng.random() < 0.5
        for out, arr in zip(outs, arrays):
            c = np.rot90(arr[i, y : y + crop_y, x : x + crop_x], k)
            out.append(np.ascontiguousarray(c[:, ::-1] if flip else c, dtype=np.float32))
    return [np.stack(o) for o in outs]


class FramesSource:
    """User data: pairs (low, high dose) or noisy frames alone (self-supervised)."""

    def __init__(
        self, noisy: np.ndarray, clean: np.ndarray | None, offset: float, gain: float, origin: str
    ) -> None:
        if clean is not None and clean.shape != noisy.shape:
            raise ValueError(f"paired data differ in shape: low {noisy.shape} vs high {clean.shape}")
        self.noisy, self.clean = noisy, clean
        self.offset, self.gain = float(offset), float(gain)
        self.paired = clean is not None
        self.origin = origin

    def split(self, val_fraction: float) -> tuple["FramesSource", "FramesSource"]:
        """Hold out the last frames for validation (a time-lapse's neighbours are near-duplicates)."""
        n = self.noisy.shape[0]
        k = max(1, int(round(n * val_fraction))) if n > 1 else 0
        if k == 0:
            return self, self
        mk = lambda s: FramesSource(  # noqa: E731
            self.noisy[s], None if self.clean is None else self.clean[s], self.offset, self.gain, self.origin
        )
        return mk(slice(0, n - k)), mk(slice(n - k, n))

    def sample(self, batch: int, crop: int, rng: np.random.Generator) -> Batch:
        arrays = [self.noisy] + ([self.clean] if self.clean is not None else [])
        crops = _random_crops(rng, arrays, batch, crop)
        off = np.full(batch, self.offset, np.float32)
        gain = np.full(batch, self.gain, np.float32)
        return Batch(crops[0], crops[1] if self.paired else None, off, gain)

    def summary(self) -> dict[str, object]:
        return {
            "source": self.origin, "frames": int(self.noisy.shape[0]), "shape": list(self.noisy.shape[1:]),
            "dtype": str(self.noisy.dtype), "paired": self.paired, "offset": self.offset, "gain": self.gain,
        }
