"""The napari reader: a lowdose run store's root -> raw, restored and uncertainty layers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr

from lowdose.daemon.dashboard.disk import find_images

AXES = ("t", "c", "z", "y", "x")
COLORMAPS = {"raw": "gray", "restored": "gray", "uncertainty": "magma"}


def is_lowdose_store(path: str | Path) -> bool:
    root = Path(path) / "zarr.json"
    try:
        return "lowdose" in json.loads(root.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def get_reader(path: str | list[str]) -> Callable[[str], list[tuple]] | None:
    """npe2 reader hook: a reader for a lowdose store's root, else None (another plug-in may take it)."""
    if isinstance(path, list):
        path = path[0] if len(path) == 1 else ""
    return read_store if path and is_lowdose_store(path) else None


def _scale(arr: zarr.Array, root: zarr.Group) -> list[float]:
    """The NGFF scale of level 0 (t in s, c, z/y/x in µm), from the image group above the array."""
    group = root[arr.path.rsplit("/", 1)[0]]
    try:
        ms = group.attrs["ome"]["multiscales"][0]
        ds = next(d for d in ms["datasets"] if d["path"] == arr.path.rsplit("/", 1)[1])
        scale = next(t["scale"] for t in ds["coordinateTransformations"] if t["type"] == "scale")
        return [float(s) if s else 1.0 for s in scale]
    except (KeyError, StopIteration, TypeError):
        return [1.0] * arr.ndim


def _window(arr: zarr.Array, root: zarr.Group) -> tuple[float, float] | None:
    group = root[arr.path.rsplit("/", 1)[0]]
    try:
        w = group.attrs["ome"]["omero"]["channels"][0]["window"]
        lo, hi = float(w["start"]), float(w["end"])
        return (lo, hi) if hi > lo else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _from_data(arr: zarr.Array) -> tuple[float, float]:
    """A window from the newest frame's percentiles, when the store has none yet."""
    if arr.shape[0] == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(np.asarray(arr[arr.shape[0] - 1, 0, 0], np.float32), [0.5, 99.8])
    return float(lo), float(max(hi, lo + 1))


def read_store(path: str | Path) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer data tuples, raw first: zarr arrays (read lazily), TCZYX."""
    root_path = Path(path)
    root = zarr.open_group(str(root_path), mode="r")
    images = find_images(root_path)
    if "raw" not in images:
        raise ValueError(f"{root_path} has no raw image: is it a lowdose run store?")
    run = root.attrs.get("lowdose", {}).get("run", root_path.name)
    shared = _window(images.get("restored", images["raw"]), root) or _window(images["raw"], root) \
        or _from_data(images.get("restored", images["raw"]))
    layers = []
    for kind in ("raw", "restored", "uncertainty"):
        if kind not in images:
            continue
        arr = images[kind]
        limits = shared if kind != "uncertainty" else (0.0, max(_from_data(arr)[1], 1e-6))
        meta = {"name": f"{run} {kind}", "scale": _scale(arr, root), "contrast_limits": list(limits),
                "colormap": COLORMAPS[kind], "blending": "additive" if kind == "uncertainty" else "translucent",
                "visible": kind != "uncertainty", "axis_labels": AXES,
                "metadata": {"lowdose_kind": kind, "store": str(root_path), "run": run}}
        layers.append((arr, meta, "image"))
    return layers
