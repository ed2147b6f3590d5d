"""Frames to small 8-bit PNGs for the browser: downsample, apply a contrast window, encode.

Pure functions; the dashboard calls them on its own render thread, never on the daemon's loops.
"""

from __future__ import annotations

import io

import numpy as np

AUTO_LOW, AUTO_HIGH = 0.5, 99.8  # percentiles of the auto window (those of `lowdose demo`'s picture)


def downsample(frame: np.ndarray, max_px: int) -> np.ndarray:
    """``frame`` (Y, X) as float32, block-averaged by the smallest whole factor that fits ``max_px``.

    Averaging (not striding) keeps a low-light frame's noise level honest in the preview.
    """
    frame = np.asarray(frame)
    factor = max(1, -(-max(frame.shape) // max_px))
    if factor == 1:
        return frame.astype(np.float32, copy=False)
    h, w = (frame.shape[0] // factor) * factor, (frame.shape[1] // factor) * factor
    blocks = frame[:h, :w].astype(np.float32).reshape(h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def auto_window(frame: np.ndarray, low: float = AUTO_LOW, high: float = AUTO_HIGH) -> tuple[float, float]:
    """A display window from ``frame``'s percentiles; never empty, always finite."""
    finite = frame[np.isfinite(frame)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def to_png(frame: np.ndarray, lo: float, hi: float) -> bytes:
    """``frame`` mapped linearly from [lo, hi] to 0..255 (clipped), as a grayscale PNG."""
    from PIL import Image

    scale = 255.0 / max(hi - lo, 1e-12)
    img = np.clip((np.nan_to_num(frame, nan=lo) - lo) * scale, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    # fastest zlib level: previews are small and short-lived, CPU is what the daemon needs
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
