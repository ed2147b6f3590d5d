"""The stack ``lowdose adapt`` learns from: camera counts of one sample, and the camera's calibration.

A TIFF (``(T, Y, X)`` or ``(Y, X)``), a ``.npy`` array, or a raw ``.ome.zarr`` that lowdose wrote (its
``raw`` image, one position, channel and plane, with the camera offset and gain its run announced).
The offset and gain not given and not recorded are estimated from the noise itself (a
Poisson-Gaussian camera's variance grows linearly with the mean, crossing zero near the offset);
a stack whose noise shows no such line gets an error asking for ``--offset``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lowdose.plugins.denoisers.interface import DenoiserError
from lowdose.plugins.denoisers.noise_model import estimate_noise_params, offset_for_gain

MIN_SIDE = 32  # a network of depth 3 needs room for a training crop beside the held-out stripe


class AdaptError(DenoiserError):
    """The stack or its calibration cannot be used for adaptation; the message names the fix."""


@dataclass(frozen=True)
class Stack:
    frames: np.ndarray  # (T, Y, X) float32 ADU, one field of view over time (or repeated)
    source: str
    dtype: str  # as stored
    offset: float  # ADU
    gain: float  # ADU per electron
    calibration: str  # where offset and gain came from
    sha256: str  # of the frames as read: what the model card names

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source, "frames": int(self.frames.shape[0]), "shape": list(self.frames.shape[1:]),
            "dtype": self.dtype, "sha256": self.sha256, "offset_adu": round(self.offset, 3),
            "gain_adu_per_e": round(self.gain, 4), "calibration": self.calibration,
        }


def read_stack(
    path: str | Path, *, offset: float | None = None, gain: float | None = None, position: int = 0,
    channel: int = 0, z: int = 0, max_frames: int | None = 64,
) -> Stack:
    """Read and check a stack (its first ``max_frames`` frames); offset and gain: given, else the
    store's, else estimated."""
    p = Path(path)
    raw, meta = read_counts(p, position=position, channel=channel, z=z, max_frames=max_frames)
    frames = check_counts(raw, str(p))
    if gain is not None and gain <= 0:
        raise AdaptError(f"--gain must be > 0 ADU per electron, got {gain}")
    offset, gain, how = resolve_camera(frames, offset, gain, meta)
    if offset is None:
        raise AdaptError(
            f"{p}: no --offset given, none recorded with the stack, and its noise does not show the "
            f"camera's dark level (no mean-variance line: too few pixels or too little contrast); "
            f"give --offset ADU (the mean of a frame taken with the light off)"
        )
    if gain is None:
        gain = 1.0
        how.append("gain unknown: 1 ADU/e- assumed")
    digest = hashlib.sha256(np.ascontiguousarray(raw).tobytes()).hexdigest()
    return Stack(frames=frames, source=str(p), dtype=str(np.asarray(raw).dtype), offset=float(offset),
                 gain=float(gain), calibration="; ".join(how), sha256=digest)


def read_counts(
    path: Path, *, position: int = 0, channel: int = 0, z: int = 0, max_frames: int | None = None
) -> tuple[np.ndarray, dict[str, float | None]]:
    """The counts as stored (first ``max_frames`` frames) and the calibration recorded with them
    (``offset``/``gain``, a lowdose store's only); unchecked."""
    if not path.exists():
        raise AdaptError(f"stack {path} does not exist; give a TIFF of camera counts or a lowdose .ome.zarr")
    meta: dict[str, float | None] = {}
    if path.is_dir():
        raw, meta = _read_zarr(path, position, channel, z, max_frames)
    elif path.suffix.lower() in (".tif", ".tiff"):
        raw = _read_tiff(path)
    elif path.suffix.lower() == ".npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise AdaptError(f"cannot read {path} as a .npy array ({exc})") from None
    else:
        raise AdaptError(f"{path}: unsupported stack (use a .tif/.tiff of camera counts, a .npy array or a lowdose .ome.zarr)")
    raw = np.asarray(raw)
    if raw.ndim == 3 and max_frames:
        raw = raw[:max_frames]
    return raw, meta


def _read_tiff(p: Path) -> np.ndarray:
    import tifffile

    try:
        return tifffile.imread(p)
    except Exception as exc:  # tifffile raises several types for files that are not TIFFs
        raise AdaptError(f"cannot read {p} as a TIFF ({type(exc).__name__}: {exc})") from None


def _read_zarr(
    p: Path, position: int, channel: int, z: int, max_frames: int | None
) -> tuple[np.ndarray, dict[str, float | None]]:
    """Time series of one (position, channel, plane) of a lowdose store's raw image, and its calibration."""
    import zarr

    root_meta = p / "zarr.json"
    try:
        attrs = json.loads(root_meta.read_text()).get("attributes", {})
    except (OSError, ValueError) as exc:
        raise AdaptError(f"{p} is not a Zarr store ({exc}); give a lowdose .ome.zarr or a TIFF") from None
    run = attrs.get("lowdose")
    if not isinstance(run, dict):
        raise AdaptError(f"{p} is a Zarr store but not one lowdose wrote (no 'lowdose' attributes); export a TIFF")
    name = "raw" if position == 0 else f"raw_{position}"
    for candidate in (f"{name}/0", f"{position}/raw/0"):
        if (p / candidate / "zarr.json").exists():
            arr = zarr.open_array(str(p / candidate), mode="r")
            break
    else:
        raise AdaptError(f"{p} has no raw image for position {position}")
    if arr.ndim != 5:
        raise AdaptError(f"{p}: raw image has shape {arr.shape}, expected (T, C, Z, Y, X)")
    if not (0 <= channel < arr.shape[1] and 0 <= z < arr.shape[2]):
        raise AdaptError(f"{p}: no channel {channel} / plane {z} (raw shape {arr.shape})")
    start = run.get("start") or {}
    return arr[:max_frames, channel, z], {"offset": start.get("camera_offset"), "gain": start.get("camera_gain")}


def check_counts(a: np.ndarray, source: str) -> np.ndarray:
    """``(T, Y, X)`` float32 camera counts, or an error naming what is wrong with ``a`` and the fix."""
    if a.size == 0:
        raise AdaptError(f"{source} is empty (shape {a.shape}); give at least one frame")
    if a.ndim == 2:
        a = a[None]
    elif a.ndim != 3:
        raise AdaptError(
            f"{source} has shape {a.shape}; expected (T, Y, X) or (Y, X) camera counts: save one channel "
            f"and one z-plane per stack"
        )
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise AdaptError(f"{source} holds {a.dtype} values; expected camera counts (integers or floats)")
    if min(a.shape[1:]) < MIN_SIDE:
        raise AdaptError(f"{source}: frames of {a.shape[1]}x{a.shape[2]} are too small; give at least {MIN_SIDE}x{MIN_SIDE}")
    f = a.astype(np.float32)
    if not np.isfinite(f).all():
        raise AdaptError(f"{source} holds NaN or infinite values; give camera counts")
    return f


def resolve_camera(
    frames: np.ndarray, offset: float | None, gain: float | None, meta: dict[str, float | None]
) -> tuple[float | None, float | None, list[str]]:
    """The camera's offset and gain: given, else recorded with the stack (``meta``), else estimated
    from the noise of ``frames``; None where none of these tells. Also how each was found."""
    how = []
    for name, given in (("offset", offset), ("gain", gain)):
        if given is not None:
            how.append(f"{name} given")
        elif meta.get(name) is not None:
            how.append(f"{name} from the run's metadata")
    offset = offset if offset is not None else _float_or_none(meta.get("offset"))
    gain = gain if gain is not None else _float_or_none(meta.get("gain"))
    if offset is not None and gain is not None:
        return offset, gain, how
    est_offset, est_gain = estimate_camera(frames, gain)
    found = [name for name, missing, est in (("offset", offset, est_offset), ("gain", gain, est_gain))
             if missing is None and est is not None]
    if found:
        how.append(f"{' and '.join(found)} estimated from the noise of {len(frames)} frame(s)")
    return (est_offset if offset is None else offset), (est_gain if gain is None else gain), how


def _float_or_none(v: float | None) -> float | None:
    return None if v is None else float(v)


def estimate_camera(frames: np.ndarray, gain: float | None = None) -> tuple[float | None, float | None]:
    """(offset, gain) from how the noise variance grows with the mean, as every denoiser estimates
    them (``noise_model.estimate_noise_params``), so that a model adapted on estimated values is
    restored on the same ones; None where the frames cannot tell.

    Each frame's noise is measured on its own, from small blocks' high-pass residuals, never from
    differences between frames: in a time-lapse of living cells the sample moves between frames,
    and differences would take the motion for noise (4-5x the gain at 2 px per frame).
    """
    if gain is not None:
        return offset_for_gain(frames, gain), None
    est = estimate_noise_params(frames)
    if not est.measured:
        return None, None
    return est.offset, est.gain
