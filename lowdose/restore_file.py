"""``lowdose restore STACK --out OUT.tif``: restore a stack of camera counts already on disk.

For the images a microscopist has before lowdose ran live: a TIFF or ``.npy`` of camera counts,
``(Y, X)``, ``(T, Y, X)`` or a hyperstack (every plane restored on its own, the shape and the
TIFF's axis names kept), or a lowdose run store's raw image. Each frame is restored on its own
(small frames a few at a time), by the same plug-ins the daemon uses, and written as float32 so that the sub-ADU precision of the
restoration survives (README "Restored precision"). The output is written into a memory-mapped file
frame by frame, so a long time-lapse never needs twice its size in memory. It is written under a
``.partial`` name and renamed only when every frame is in it, so a file named ``--out`` is always
complete; an existing file is never overwritten without ``--force``; the free space is checked
first, because a memory-mapped write that finds the disk full kills the process instead of raising.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lowdose.console import UserError

OUT_SUFFIXES = (".tif", ".tiff", ".npy")
# Small frames go to the denoiser in batches of about this many pixels: `auto` fits its blend on a
# batch of small frames together, where one small frame alone has too few pixels to estimate it.
BATCH_PIXELS = 128 * 128
MAX_BATCH = 16


@dataclass(frozen=True)
class FileRestoration:
    """What ``restore_file`` did, for the summary line and for scripts."""

    source: str
    out: Path
    uncertainty: Path | None  # written beside ``out`` when the denoiser gives one
    frames: int
    shape: tuple[int, int]
    denoiser: str
    offset: float | None  # None: each batch's own estimate (the stack could not tell)
    gain: float | None
    calibration: str
    ms_per_frame: float


def uncertainty_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.uncertainty{out.suffix}")


def partial_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def den_has_uncertainty(den: Any) -> bool:
    return bool(getattr(den.info, "has_uncertainty", False))


def _check_space(out: Path, needed: int) -> None:
    import shutil

    free = shutil.disk_usage(out.parent).free
    if free < needed * 1.02 + (16 << 20):
        raise UserError(f"{out.parent} has {free / 1e9:.2f} GB free; the restored frames need {needed / 1e9:.2f} GB "
                        f"(float32): free space or give an --out on another disk")


def check_output(stack: Path, out: Path, force: bool) -> None:
    """Refuse an output that would destroy data or that cannot be written, before any work is done."""
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise UserError(f"--out {out}: write a .tif, .tiff or .npy (float32 frames), not {out.suffix or 'no suffix'!r}")
    if out.resolve() == stack.resolve():
        raise UserError(f"--out {out} is the input stack; give another file name (the raw frames are kept)")
    for path in (out, uncertainty_path(out)):
        if path.exists() and not force:
            raise UserError(f"{path} exists; give another --out, or --force to replace it")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist; create it first")


def restore_file(
    stack: Path, out: Path, *, denoiser: str = "auto", options: dict[str, Any] | None = None, device: str = "auto",
    offset: float | None = None, gain: float | None = None, force: bool = False, max_frames: int | None = None,
    position: int = 0, channel: int = 0, z: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> FileRestoration:
    """Restore every frame of ``stack`` into ``out`` (and ``OUT.uncertainty.tif`` when there is one)."""
    from lowdose.models.adapt_data import check_counts, read_counts
    from lowdose.plugins.denoisers.registry import create_denoiser, resolve_device

    check_output(stack, out, force)
    if gain is not None and gain <= 0:
        raise UserError(f"--gain must be > 0 ADU per electron, got {gain}")
    raw, meta = read_counts(stack, position=position, channel=channel, z=z, max_frames=max_frames)
    if raw.ndim > 3:  # a hyperstack (T, C, Z, Y, X ...): every plane restored on its own, the shape kept
        raw = raw[:max_frames] if max_frames else raw
        counts = check_counts(raw.reshape(-1, *raw.shape[-2:]), str(stack))
    else:
        counts = check_counts(raw, str(stack))
    axes = _axes(stack, raw.shape)
    offset, gain, calibration = _calibration(counts, offset, gain, meta)
    den = create_denoiser(denoiser, options, device=resolve_device(device))
    _check_space(out, 4 * counts.size * (2 if den_has_uncertainty(den) else 1))
    n = counts.shape[0]
    # the files take the input's shape ((Y, X) gives (Y, X)), the loop works on a (planes, Y, X) view
    images: dict[Path, np.ndarray] = {out: _open_output(out, raw.shape, axes)}
    t0 = time.perf_counter()
    batch = int(np.clip(BATCH_PIXELS // (counts.shape[1] * counts.shape[2]), 1, MAX_BATCH))
    try:
        for i in range(0, n, batch):
            res = den.restore(counts[i : i + batch], offset=offset, gain=gain)
            images[out].reshape(counts.shape)[i : i + batch] = res.frames
            if res.uncertainty is not None:
                if uncertainty_path(out) not in images:
                    images[uncertainty_path(out)] = _open_output(uncertainty_path(out), raw.shape, axes)
                images[uncertainty_path(out)].reshape(counts.shape)[i : i + batch] = res.uncertainty
            if on_progress is not None:
                on_progress(min(i + batch, n), n)
    except BaseException:
        for path in images:  # a half-restored file must not pass for a whole one
            partial_path(path).unlink(missing_ok=True)
        raise
    ms = 1000.0 * (time.perf_counter() - t0) / n
    for path, image in images.items():
        image.flush()  # type: ignore[attr-defined]
        partial_path(path).replace(path)
    return FileRestoration(
        source=str(stack), out=out, uncertainty=uncertainty_path(out) if uncertainty_path(out) in images else None, frames=n,
        shape=(int(counts.shape[1]), int(counts.shape[2])), denoiser=den.info.name, offset=offset, gain=gain,
        calibration=calibration, ms_per_frame=ms,
    )


# The camera is estimated once, on up to this many frames spread over the stack: more blocks than
# one frame has make the estimate closer, and one calibration for every frame keeps a time-lapse
# from flickering with each frame's own estimate.
ESTIMATE_FRAMES = 16


def _calibration(
    counts: np.ndarray, offset: float | None, gain: float | None, meta: dict[str, float | None]
) -> tuple[float | None, float | None, str]:
    from lowdose.models.adapt_data import resolve_camera

    sample = counts[np.unique(np.linspace(0, len(counts) - 1, min(len(counts), ESTIMATE_FRAMES)).astype(int))]
    offset, gain, how = resolve_camera(sample, offset, gain, meta)
    if offset is None or gain is None:  # the stack cannot tell: each batch's own estimate (or fallback)
        how.append("the rest estimated frame by frame (not measurable on the stack)")
    return offset, gain, "; ".join(how)


def _axes(stack: Path, shape: tuple[int, ...]) -> str | None:
    """The input TIFF's axis names (ImageJ or OME), to write with the output; None if unknown."""
    if stack.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(stack) as tif:
            axes = tif.series[0].axes
    except Exception:  # the metadata is a courtesy; the frames were already read
        return None
    return axes if len(axes) == len(shape) else None


def _open_output(path: Path, shape: tuple[int, ...], axes: str | None = None) -> np.ndarray:
    """A float32 array of ``shape`` backed by the output file, written as the frames come."""
    import tifffile

    path = partial_path(path)
    try:
        if path.suffix.lower() == ".npy":
            return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        return tifffile.memmap(path, shape=shape, dtype=np.float32, photometric="minisblack",
                               metadata={"axes": axes} if axes else {})
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc}); free space or give another --out") from None
