"""What a run store adds at the end of a run: contrast windows from real data, per-frame tables, a summary.

Finalizing is repeatable (after a backfill, say): each step rewrites its output from the index and the
record logs. The facade holds both write locks meanwhile; these functions take the state lock around the
index and the windows only, never across the file reads and writes.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr
from zarr.storage import LocalStore

from lowdose.wire.jsonsafe import jsonable
from lowdose.wire.protocol import End

from . import ngff
from .index import KIND_RAW, KIND_RESTORED, STATUS_CODES, RunIndex, channel_picks, gaps, missing_indices
from .layout import Layout
from .records import read_batches

_TABLE_CHUNK = 65536
_MAX_LISTED = 1000  # missing seqs/indices listed in the summary (all are counted)


def contrast_windows(state: threading.Lock, index: RunIndex, layout: Layout,
                     read_bytes: Callable[[str, int, int, int], bytes]) -> None:
    """Each channel's window from its first, middle and last frame, raw and restored."""
    with state:
        picks = {
            (p, kind): channel_picks(cells, kind) for p, cells in index.cells.items() for kind in (KIND_RAW, KIND_RESTORED)
        }
    for (p, kind), chans in picks.items():
        img = layout.images[(p, kind)]
        for c, tz in chans.items():
            frames = [img.codec.decode(read_bytes(img.array_dir, t, c, z)) for t, z in tz]
            win = ngff.contrast_window(np.stack(frames).reshape(-1, layout.frame_shape[1]))
            with state:
                img.windows[c] = win


def write_tables(path: Path, state: threading.Lock, index: RunIndex, frames_log: Path) -> dict[str, Any]:
    """Per-frame columns (one row per raw frame, seq order) as chunked 1-D zarr arrays."""
    with state:
        seqs = index.seqs.sorted()
    n = len(seqs)
    cols: dict[str, np.ndarray] = {name: np.zeros(n, np.int32) for name in ("t", "p", "c", "z")}
    cols.update({name: np.full(n, np.nan) for name in ("timestamp", "elapsed_ms", "exposure_ms", "written")})
    found = np.zeros(n, dtype=bool)
    for recs in read_batches(frames_log, _TABLE_CHUNK):
        _fill_rows(recs, seqs, cols, found)
    if not found.all():  # a seq whose record became unreadable: no row, as it has no columns
        seqs = seqs[found]
        cols = {name: col[found] for name, col in cols.items()}
        n = len(seqs)
    with state:
        status, model = index.status_and_model(cols["p"], cols["t"], cols["c"], cols["z"])
    columns = {
        "seq": seqs,
        **cols,
        "restored_status": status,
        "restored_model": model,
    }
    store = LocalStore(path)
    for name, values in columns.items():
        arr = zarr.create_array(
            store=store,
            name=f"lowdose/tables/{name}",
            shape=values.shape,
            chunks=(max(1, min(_TABLE_CHUNK, n)),),
            dtype=values.dtype,
            fill_value=0,
            overwrite=True,
            zarr_format=3,
            attributes={"rows": "one per raw frame, ordered by seq", **({"codes": STATUS_CODES} if name == "restored_status" else {})},
        )
        if n:
            arr[:] = values
    return {"path": "lowdose/tables", "rows": n, "columns": list(columns)}


def summary(index: RunIndex, layout: Layout, end: End | None, tables: dict[str, Any]) -> dict[str, Any]:
    """The run's summary: what was expected, written, restored and missing. Caller holds the state lock."""
    seqs = index.seqs.sorted()
    expected = end.frames if end is not None else (int(seqs[-1]) + 1 if len(seqs) else 0)
    inside = seqs[seqs < expected]
    images = {}
    missing_idx: list[list[int]] = []
    n_missing_idx = 0
    for (p, kind), img in sorted(layout.images.items()):
        frames = index.frames(p, kind)
        images[img.name] = {"shape": list(img.meta["shape"]), "dtype": img.codec.dtype.name, "frames": frames}
        if kind == KIND_RAW:
            t_n, c_n, z_n = img.meta["shape"][:3]
            n_missing_idx += t_n * c_n * z_n - frames
            if len(missing_idx) < _MAX_LISTED and n_missing_idx:
                listed = missing_indices(index.cells[p], (t_n, c_n, z_n), _MAX_LISTED - len(missing_idx))
                missing_idx.extend([t, p, c, z] for t, c, z in listed)
    return jsonable(
        {
            "run": layout.start.run,
            "path": str(layout.path),
            "frames_expected": expected,
            "frames_written": len(seqs),
            "frames_restored": index.restored_count(),
            "restoration": index.status_counts(),
            "missing_seqs": gaps(inside, expected),
            "missing_seq_count": expected - len(inside),
            "missing_indices": missing_idx,  # [t, p, c, z], first 1000
            "missing_index_count": n_missing_idx,
            "end_reason": end.reason if end else None,
            "images": images,
            "tables": tables,
            "finalized_at": datetime.now(timezone.utc).isoformat(),
        }
    )


def _fill_rows(recs: list[dict[str, Any]], seqs: np.ndarray, cols: dict[str, np.ndarray], found: np.ndarray) -> None:
    """Scatter frame records into their seq's row; a seq's later record wins (a resent frame's, say)."""
    if not recs or not len(seqs):
        return
    rec_seqs = np.array([r["seq"] for r in recs], dtype=np.int64)
    rows = np.minimum(np.searchsorted(seqs, rec_seqs), len(seqs) - 1)
    keep = np.flatnonzero(seqs[rows] == rec_seqs)[::-1]  # stored seqs only, latest first
    keep = keep[np.unique(rows[keep], return_index=True)[1]]
    rows = rows[keep]
    found[rows] = True
    for name, col in cols.items():
        col[rows] = np.array([recs[i].get(name) for i in keep.tolist()], dtype=float if col.dtype.kind == "f" else col.dtype)


def measured_frame_interval(path: Path) -> float | None:
    """The median time between successive time points, from the per-frame tables; None if unknown.

    A hook that does not know the interval (a ``time_plan`` of 0: as fast as the camera goes)
    announces none, and the NGFF scale would claim 1 s per frame; the timestamps say what it was.
    """
    try:
        root = zarr.open_group(store=LocalStore(path), path="lowdose/tables", mode="r")
        t, p, c, z, stamp = (np.asarray(root[k][:]) for k in ("t", "p", "c", "z", "timestamp"))
    except (KeyError, FileNotFoundError, ValueError):
        return None
    first = (p == 0) & (c == 0) & (z == 0) & np.isfinite(stamp) & (stamp > 0)
    order = np.argsort(t[first])
    ts, stamps = t[first][order], stamp[first][order]
    if len(ts) < 2:
        return None
    steps = np.diff(stamps) / np.maximum(np.diff(ts), 1)
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else None
