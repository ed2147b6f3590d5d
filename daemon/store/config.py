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
    restored_dtype: Literal["input", "float32"] = "input"
    write_queue_frames: int = Field(64, ge=1)
