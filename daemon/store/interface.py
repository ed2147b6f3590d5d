"""What the daemon asks of a run store: the :class:`Store` protocol and the errors every store raises.

The write loop, the restore loop, backfill and the CLI use only what is listed here, so how a store lays
its frames out (one file per frame, or shards along T) is invisible to them. This module imports nothing of the daemon at run time; the storage config is
named for type checkers only.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, Sequence

import numpy as np

from lowdose.plugins.denoisers.interface import DenoiserInfo
from lowdose.wire.protocol import End, Frame, FrameIndex, Start

if TYPE_CHECKING:
    from .config import StorageConfig

__all__ = ["Store", "StoreError", "FrameNotStored", "store_error"]


class StoreError(RuntimeError):
    """The run store cannot be used as asked; the message names the problem and the fix."""


class FrameNotStored(StoreError, KeyError):
    """``read_raw`` of an index whose raw frame is not (yet) in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def store_error(exc: OSError, action: str, path: Path | str) -> StoreError:
    """Translate an OS error into a StoreError that says what to do."""
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix = (
            "the disk is full: free space, or point storage.output_dir at a larger disk; frames not yet "
            "acknowledged stay with the acquisition hook and are resent"
        )
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = (
            "permission denied: make the directory writable by the daemon's user, or set "
            "storage.output_dir to a writable location"
        )
    elif code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        fix = "a path component is a file where a directory is needed: choose another storage.output_dir"
    else:
        fix = "check the disk and storage.output_dir"
    return StoreError(f"{action} failed at {path}: {exc.strerror or exc} ({fix})")


class Store(Protocol):
    """One run's store of raw and restored frames, safe for one raw writer and one restorer at a time.

    Every method may raise :class:`StoreError` (disk full, permissions, a frame of the wrong shape);
    ``write_raw`` returns only once its frames are durable (``docs/design.md`` rule 2) and never makes an
    index visible before its data (rule 4).
    """

    path: Path  # the run's directory; what the daemon reports and backfill reopens
    start: Start  # the run's announcement
    restored_dtype: np.dtype  # what write_restored expects (storage.restored_dtype)

    @classmethod
    def open(
        cls, output_dir: Path, start: Start, cfg: StorageConfig, lowdose_version: str, *, policy: str | None = None
    ) -> Self:
        """Create the store of ``start.run`` under ``output_dir``, or reopen it after a restart."""
        ...

    @classmethod
    def reopen(cls, path: Path, cfg: StorageConfig, lowdose_version: str, *, renamed_ok: bool = False) -> Self:
        """Open an existing store from its own records (offline backfill, daemon resume)."""
        ...

    @staticmethod
    def read_state(path: Path) -> dict[str, Any]:
        """The run's stored attributes without opening it (``summary`` and ``end`` once finalized)."""
        ...

    def write_raw(self, frames: Sequence[tuple[Frame, np.ndarray]]) -> list[int]:
        """Store a batch durably; the seqs now stored (idempotent by seq)."""
        ...

    def read_raw(self, index: FrameIndex) -> np.ndarray:
        """The raw frame at ``index``; :class:`FrameNotStored` if there is none."""
        ...

    def has_seq(self, seq: int) -> bool: ...

    def raw_count(self) -> int: ...

    def raw_seqs(self) -> set[int]: ...

    def raw_seq_ranges(self) -> list[tuple[int, int]]:
        """Stored seqs as inclusive ranges, ascending: what an ack carries."""
        ...

    def raw_indices(self) -> list[FrameIndex]:
        """Every raw frame's index, in seq order."""
        ...

    def seq_of(self, index: FrameIndex) -> int:
        """The seq of the raw frame at ``index``; :class:`FrameNotStored` if there is none."""
        ...

    def write_restored(
        self,
        items: Sequence[tuple[FrameIndex, np.ndarray, np.ndarray | None]],
        info: DenoiserInfo,
        mode: Literal["live", "backfill"],
    ) -> None:
        """Store restorations (and uncertainty maps) of stored raw frames, with their provenance."""
        ...

    def unrestored(self, limit: int | None = None) -> list[FrameIndex]:
        """Raw frames without a restoration, in seq order; the first ``limit`` only."""
        ...

    def is_restored(self, index: FrameIndex) -> bool: ...

    def unrestored_count(self) -> int: ...

    def restored_count(self) -> int: ...

    def record_end(self, end: End) -> None:
        """Store the run's ``End`` durably (``read_state`` shows it as ``end``) before it is acknowledged."""
        ...

    def finalize(self, end: End | None) -> dict[str, Any]:
        """Publish everything written, write the per-frame tables, store and return the run's summary."""
        ...

    def close(self) -> None:
        """Release files and threads; does not finalize. Idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...
