"""OME-NGFF 0.5 metadata for the per-run store: plain dicts, no I/O.

The run store's layout (:mod:`lowdose.daemon.store.layout`) writes these dicts into
the ``attributes`` of each image group's ``zarr.json``. Everything here is pure so
that it can be unit-tested and validated (``ome-zarr-models``, ``yaozarrs``)
without touching a disk.

Images are 5-D ``TCZYX``; one multiscale level at path ``0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NGFF_VERSION = "0.5"
AXES: tuple[str, ...] = ("t", "c", "z", "y", "x")

#: Colours cycled over channels in ``omero`` (grey first: single-channel runs look natural).
CHANNEL_COLORS: tuple[str, ...] = ("FFFFFF", "00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF")


def axes() -> list[dict[str, str]]:
    """NGFF axes with types and units: time in seconds, space in micrometres."""
    return [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]


def scale(frame_interval_s: float | None, z_step_um: float | None, pixel_size_um: float | None) -> list[float]:
    """``[dt, 1, dz, px, px]``; an unknown (or non-positive) value is 1."""

    def ok(v: float | None) -> float:
        return float(v) if v is not None and v > 0 else 1.0

    return [ok(frame_interval_s), 1.0, ok(z_step_um), ok(pixel_size_um), ok(pixel_size_um)]


def channel_labels(names: list[str], n: int) -> list[str]:
    """Channel labels for ``n`` channels: the announced names, then ``c<i>`` for any extra."""
    return [names[i] if i < len(names) and names[i] else f"c{i}" for i in range(n)]


def dtype_range(dtype: np.dtype) -> tuple[float, float]:
    """The ``omero`` ``min``/``max`` for a dtype (float images: 0..1 until data says more)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def contrast_window(frame: np.ndarray, low: float = 0.1, high: float = 99.9) -> tuple[float, float]:
    """Display window from a frame's percentiles (sub-sampled: this runs on the write path)."""
    sample = np.asarray(frame)[::4, ::4]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(sample, [low, high])
    lo, hi = float(lo), float(hi)
    if not np.isfinite(lo) or not np.isfinite(hi):
        return 0.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def omero(
    labels: list[str],
    dtype: np.dtype,
    windows: dict[int, tuple[float, float]],
) -> dict[str, Any]:
    """The ``omero`` rendering block: one channel per label with its contrast window."""
    dmin, dmax = dtype_range(dtype)
    channels = []
    for i, label in enumerate(labels):
        start, end = windows.get(i, (dmin, dmax))
        lo, hi = min(dmin, start), max(dmax, end)
        channels.append(
            {
                "label": label,
                "color": CHANNEL_COLORS[i % len(CHANNEL_COLORS)] if len(labels) > 1 else "FFFFFF",
                "active": True,
                "window": {"start": start, "end": end, "min": lo, "max": hi},
            }
        )
    return {
        "channels": channels,
        "rdefs": {"defaultT": 0, "defaultZ": 0, "model": "color" if len(labels) > 1 else "greyscale"},
    }


def image_ome(
    name: str,
    scale_: list[float],
    labels: list[str],
    dtype: np.dtype,
    windows: dict[int, tuple[float, float]],
) -> dict[str, Any]:
    """The ``ome`` attribute of one NGFF 0.5 image group (one level at path ``0``)."""
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": axes(),
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale_}]}],
            }
        ],
        "omero": omero(labels, dtype, windows),
    }


def image_names(p: int) -> tuple[str, str, str]:
    """Group names of position ``p``: (raw, restored, uncertainty)."""
    if p == 0:
        return "raw", "restored", "uncertainty"
    return f"raw_p{p}", f"restored_p{p}", f"uncertainty_p{p}"
