"""Frames already on disk, read back from a run's store for the dashboard's frame slider.

The store is read as any outside reader would, with zarr-python, read-only: what it has published
is complete (rule 4), so a store being written is safe to read. Only :func:`find_images` knows
where a store keeps its images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from lowdose.daemon.store.collection import images

KINDS = ("raw", "restored", "uncertainty")


def find_images(root: Path, p: int = 0) -> dict[str, zarr.Array]:
    """The full-resolution TCZYX arrays of position ``p``, by kind (raw, restored, uncertainty if any).

    The store's own :func:`~lowdose.daemon.store.collection.images` says where its images are; each
    image's level 0 is at ``0`` inside it.
    """
    root = Path(root)
    group = zarr.open_group(str(root), mode="r")
    out: dict[str, zarr.Array] = {}
    for kind, path in images(root).get(p, {}).items():
        try:
            node = group[f"{path.relative_to(root).as_posix()}/0"]
        except KeyError:
            continue
        if isinstance(node, zarr.Array):
            out[kind] = node
    return out


def frames_on_disk(root: Path, p: int = 0) -> dict[str, list[int]]:
    """Each image's published shape (T, C, Z, Y, X), by kind."""
    return {kind: [int(n) for n in arr.shape] for kind, arr in find_images(root, p).items()}


def read_frame(root: Path, kind: str, t: int, c: int = 0, z: int = 0, p: int = 0) -> np.ndarray:
    """One (Y, X) frame; :class:`LookupError` naming what is missing."""
    images = find_images(root, p)
    if kind not in images:
        raise LookupError(f"{root} has no {kind} image for position {p}")
    arr = images[kind]
    if not (0 <= t < arr.shape[0] and 0 <= c < arr.shape[1] and 0 <= z < arr.shape[2]):
        raise LookupError(f"{kind} has no frame t={t} c={c} z={z} (its shape is {tuple(arr.shape)})")
    return np.asarray(arr[t, c, z])
