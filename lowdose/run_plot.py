"""A run's picture: raw | restored side by side (one contrast window) next to its throughput and
restoration lag over time, all read from the store alone (its records say when each raw and each
restored frame was written), so it works for a live run and for one finished long ago.

Drawn with Pillow (already a dependency): two small charts do not need a plotting library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from lowdose.daemon.dashboard.disk import find_images
from lowdose.daemon.store.plan import LEGACY_RECORDS, RECORDS
from lowdose.daemon.store.records import read_batches

BLUE, GREEN, ORANGE, GREY = (40, 110, 200), (40, 160, 70), (220, 120, 20), (120, 120, 120)


@dataclass(frozen=True)
class Timeline:
    """When each frame was written, in seconds since the run's first raw frame."""

    raw_s: np.ndarray  # one per raw frame
    restored_s: np.ndarray  # one per restored frame
    lag_s: np.ndarray  # per restored frame: restored written - raw written
    live: np.ndarray  # per restored frame: restored live (else by backfill)


def records_dir(store: Path) -> Path:
    """Where a store keeps its record logs (older stores: directly in ``lowdose/``)."""
    current = Path(store) / RECORDS
    return current if (current / "frames.jsonl").exists() else Path(store) / LEGACY_RECORDS


def read_timeline(store: Path) -> Timeline:
    raw: dict[tuple, float] = {}
    for batch in read_batches(records_dir(store) / "frames.jsonl", 4096):
        for r in batch:
            raw.setdefault((r["t"], r["p"], r["c"], r["z"]), float(r["written"]))
    restored: dict[tuple, tuple[float, bool]] = {}
    log = records_dir(store) / "restored.jsonl"
    if log.exists():
        for batch in read_batches(log, 4096):
            for r in batch:
                if "written" in r and "kind" not in r:  # model records carry "kind"
                    restored[(r["t"], r["p"], r["c"], r["z"])] = (float(r["written"]), r.get("mode") == "live")
    t0 = min(raw.values()) if raw else 0.0
    keys = [k for k in restored if k in raw]
    return Timeline(
        raw_s=np.sort(np.array(list(raw.values())) - t0),
        restored_s=np.sort(np.array([restored[k][0] for k in keys]) - t0),
        lag_s=np.array([restored[k][0] - raw[k] for k in keys]),
        live=np.array([restored[k][1] for k in keys], dtype=bool),
    )


def rate(times_s: np.ndarray, span_s: float, bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frames per second in ``bins`` equal bins over [0, span_s] (default: about half a second each,
    4 to 60 of them): (bin centres, rates)."""
    bins = bins or int(np.clip(span_s / 0.5, 4, 60))
    edges = np.linspace(0.0, max(span_s, 1e-3), bins + 1)
    counts, _ = np.histogram(times_s, edges)
    return (edges[:-1] + edges[1:]) / 2, counts / np.diff(edges)


def _nice_max(v: float) -> float:
    if v <= 0 or not np.isfinite(v):
        return 1.0
    mag = 10 ** np.floor(np.log10(v))
    return float(next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= v))


def chart(size: tuple[int, int], title: str, series: Sequence[tuple[np.ndarray, np.ndarray, tuple, str, str]],
          x_max: float, x_label: str) -> Image.Image:
    """A small chart; each series is (x, y, colour, "line" or "dots", legend)."""
    w, h = size
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 46, 10, 22, 30
    ys = [np.asarray(y, float) for _, y, *_ in series if len(y)]
    y_max = _nice_max(max((float(np.nanmax(y)) for y in ys), default=1.0))
    x_max = x_max if x_max > 0 else 1.0
    box = (left, top, w - right, h - bottom)
    d.rectangle(box, outline=GREY)
    px = lambda x: left + (np.asarray(x, float) / x_max) * (box[2] - left)  # noqa: E731
    py = lambda y: box[3] - (np.asarray(y, float) / y_max) * (box[3] - top)  # noqa: E731
    for k in range(5):
        y = y_max * k / 4
        d.line([(left - 3, float(py(y))), (left, float(py(y)))], fill=GREY)
        d.text((2, float(py(y)) - 6), f"{y:g}", fill=(0, 0, 0))
        x = x_max * k / 4
        d.text((float(px(x)) - 8, box[3] + 4), f"{x:.0f}" if x_max >= 4 else f"{x:.1f}", fill=(0, 0, 0))
    d.text((left, 4), title, fill=(0, 0, 0))
    d.text((w - right - 7 * len(x_label), h - 14), x_label, fill=GREY)
    legend_x = left + 7 * len(title) + 16
    for x, y, colour, style, name in series:
        if len(x):
            pts = list(zip(px(x).tolist(), py(y).tolist()))
            if style == "line" and len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            else:
                for a, b in pts:
                    d.ellipse([a - 2, b - 2, a + 2, b + 2], fill=colour)
        d.rectangle([legend_x, 7, legend_x + 10, 15], fill=colour)
        d.text((legend_x + 14, 4), name, fill=(0, 0, 0))
        legend_x += 14 + 7 * len(name) + 12
    return img


def timeline_charts(tl: Timeline, width: int, height: int) -> Image.Image:
    """Throughput (raw written, restored per second) above restoration lag, over the run's time."""
    span = float(max(tl.raw_s.max(initial=0.0), tl.restored_s.max(initial=0.0)))
    x_raw, r_raw = rate(tl.raw_s, span)
    x_res, r_res = rate(tl.restored_s, span)
    top = chart((width, height // 2), "frames/s", [(x_raw, r_raw, BLUE, "line", "raw written"),
                                                   (x_res, r_res, GREEN, "line", "restored")], span, "s")
    order = np.argsort(tl.restored_s)
    when, lag, live = tl.restored_s[order], tl.lag_s[order], tl.live[order]
    bottom = chart((width, height - height // 2), "lag s (raw -> restored)",
                   [(when[live], lag[live], ORANGE, "dots", "live"),
                    (when[~live], lag[~live], GREY, "dots", "backfill")], span, "s")
    out = Image.new("RGB", (width, height), (255, 255, 255))
    out.paste(top, (0, 0))
    out.paste(bottom, (0, height // 2))
    return out


def beside(picture: Image.Image, charts: Image.Image, gap: int = 6) -> Image.Image:
    out = Image.new("RGB", (picture.width + gap + charts.width, max(picture.height, charts.height)), (255, 255, 255))
    out.paste(picture, (0, 0))
    out.paste(charts, (picture.width + gap, 0))
    return out


def tiles(images: Sequence[np.ndarray], labels: Sequence[str], ref: int = -1, gap: int = 6) -> Image.Image:
    """The frames side by side on one contrast window, that of ``images[ref]``."""
    lo, hi = np.percentile(np.asarray(images[ref], np.float32), [0.5, 99.8])
    parts = []
    for frame, label in zip(images, labels):
        scaled = np.clip((np.asarray(frame, np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
        tile = Image.fromarray((scaled * 255).astype(np.uint8)).convert("RGB")
        draw = ImageDraw.Draw(tile)
        draw.rectangle([0, 0, 8 + 7 * len(label), 18], fill=(0, 0, 0))
        draw.text((4, 3), label, fill=(255, 255, 0))
        parts.append(tile)
    out = Image.new("RGB", (sum(p.width for p in parts) + gap * (len(parts) - 1), max(p.height for p in parts)),
                    (255, 255, 255))
    x = 0
    for p in parts:
        out.paste(p, (x, 0))
        x += p.width + gap
    return out


def add_timeline(picture_path: Path, store: Path) -> None:
    """Put the run's throughput and lag charts to the right of an existing picture (the demo's)."""
    picture = Image.open(picture_path).convert("RGB")
    charts = timeline_charts(read_timeline(store), max(460, picture.height), max(240, picture.height))
    beside(picture, charts).save(picture_path)


def plot_run(store: Path, out: Path, t: int | None = None) -> int:
    """``out``: raw | restored at time point ``t`` (default: the newest restored) beside the charts.
    Returns the time point shown; :class:`LookupError` if the store has no frame yet."""
    images = find_images(Path(store))
    if "raw" not in images or images["raw"].shape[0] == 0:
        raise LookupError(f"{store} has no raw frame yet")
    tl = read_timeline(store)
    n = int(images["raw"].shape[0])
    if t is None:
        t = n - 1
        restored_t = [k[0] for k in _restored_keys(store)]
        if restored_t:
            t = min(max(restored_t), n - 1)
    raw = np.asarray(images["raw"][t, 0, 0])
    frames, labels = [raw], [f"raw t={t}"]
    if "restored" in images and images["restored"].shape[0] > t:
        frames.append(np.asarray(images["restored"][t, 0, 0]))
        labels.append(f"restored t={t}")
    picture = tiles(frames, labels)
    charts = timeline_charts(tl, max(460, picture.height), max(260, picture.height))
    beside(picture, charts).save(out)
    return t


def _restored_keys(store: Path) -> list[tuple]:
    log = records_dir(store) / "restored.jsonl"
    if not log.exists():
        return []
    return [(r["t"], r["p"], r["c"], r["z"]) for batch in read_batches(log, 4096) for r in batch
            if "written" in r and "kind" not in r and r.get("p", 0) == 0]
