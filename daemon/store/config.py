"""The ``storage`` section of ``config.yaml``: where and how runs are written.

It lives with the store, which is its only reader; ``lowdose.daemon.config`` gathers
it into the whole file's schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from lowdose.wire.hook_config import ConfigSection


class StorageConfig(ConfigSection):
    output_dir: Path = Path("lowdose-data")
    compression: Literal["lz4", "zstd", "none"] = "lz4"
    compression_level: int = Field(1, ge=0, le=22)
    fsync: bool = True
    # float32 by default: at a few photons per pixel, rounding to whole ADU posterises the restored
    # image and costs up to ~4 dB; float16 holds only ~0.25-1 ADU steps at typical camera offsets.
    restored_dtype: Literal["input", "float32"] = "float32"
    # sharded: Zarr v3 shards along time (one file per shard_frames frames of each channel/slice);
    # chunk_per_frame: one file per frame. An existing store keeps the layout it was written with.
    layout: Literal["sharded", "chunk_per_frame"] = "sharded"
    # frames per shard; null: ~512 MiB of raw pixels, 64 to 256 frames (64 for 2048^2 uint16)
    shard_frames: int | None = Field(None, ge=1, le=65536)
    write_queue_frames: int = Field(64, ge=1)
    # An open store holds files and a thread pool: a run nobody writes to for this long, with
    # nothing left to restore, is closed, and reopened when its hook speaks again.
    idle_close_s: float = Field(300.0, gt=0)
    # Finished runs are closed at once; `status` shows the newest this many of them.
    keep_finished_runs: int = Field(1000, ge=0)
