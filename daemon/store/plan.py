"""How a store is laid out on disk: one file per frame or shards along T, and where its records are.

A new store takes the ``storage`` config; an existing one keeps what its root says it was written with
(a daemon restarted with another ``storage.layout`` goes on in the store's own layout), and a store
written before the records moved keeps them at ``lowdose/frames.jsonl``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from lowdose.wire.protocol import Start

from .shards import default_shard_frames

if TYPE_CHECKING:
    from .config import StorageConfig

#: Where the record logs live, relative to the store's root. ``lowdose/records`` is a zero-length zarr
#: array: zarr-python lists the members of groups only, never what is inside an array's folder, so the
#: logs there trip no Zarr tool (``lowdose/frames.jsonl`` in a group made them warn "not recognized as a
#: component of a Zarr hierarchy"; so would any folder without its own zarr.json).
RECORDS = "lowdose/records"
LEGACY_RECORDS = "lowdose"


@dataclass(frozen=True)
class StoragePlan:
    layout: Literal["sharded", "chunk_per_frame"]
    shard_frames: int  # time points per shard (1 for chunk_per_frame)
    records: str  # the records' folder, relative to the root

    def records_dir(self, root: Path) -> Path:
        return root / self.records


def plan_for(path: Path, start: Start, cfg: StorageConfig) -> StoragePlan:
    """The plan of the store at ``path``: its own if it exists, else the config's."""
    try:
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]["lowdose"]
    except (OSError, ValueError, KeyError, TypeError):
        attrs = None
    if attrs is None:
        if cfg.layout == "chunk_per_frame":
            return StoragePlan("chunk_per_frame", 1, RECORDS)
        frame_bytes = int(start.shape[0]) * int(start.shape[1]) * np.dtype(start.dtype).itemsize
        return StoragePlan("sharded", cfg.shard_frames or default_shard_frames(frame_bytes), RECORDS)
    storage = attrs.get("storage") or {}
    layout = storage.get("layout", "chunk_per_frame")
    legacy = (path / LEGACY_RECORDS / "frames.jsonl").exists() or not (path / RECORDS).exists() and (
        attrs.get("records", {}).get("frames") == f"{LEGACY_RECORDS}/frames.jsonl")
    records = LEGACY_RECORDS if legacy else RECORDS
    if layout == "sharded":
        return StoragePlan("sharded", int(storage["shard_frames"]), records)
    return StoragePlan("chunk_per_frame", 1, records)
