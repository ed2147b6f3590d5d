"""Whole-file writes that survive a kill: the spool (hook side) and the store (daemon side).

Both ends promise that what they keep is there after a SIGKILL or a power cut
(``docs/design.md``, rule 2): a file is written to a temporary name, flushed
(and fsynced when asked), then renamed over the target, and the directory entry
is fsynced so the rename itself is durable. A reader sees the old file or the
new one, never a torn one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_file(path: str | os.PathLike[str], chunks: bytes | memoryview | Iterable[Any], *, fsync: bool,
               atomic: bool = True) -> None:
    """Write ``chunks`` (one buffer or several) as the whole of ``path``.

    ``atomic``: through a temporary file and a rename, so readers never see it torn;
    without it the file is written in place (for files nobody can be reading yet).
    The directory entry is left to the caller (:func:`fsync_dir`), who often has
    several new files in one directory and fsyncs it once.
    """
    path = os.fspath(path)
    target = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp") if atomic else path
    parts = (chunks,) if isinstance(chunks, (bytes, bytearray, memoryview)) else chunks
    # O_BINARY: without it Windows opens the descriptor in text mode and rewrites every \n byte of a frame
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
    try:
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                n = os.write(fd, view)
                view = view[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if atomic:
        os.replace(target, path)


def fsync_dir(path: str | os.PathLike[str], *, strict: bool = True) -> None:
    """Make a directory's entries (a new file, a rename) durable.

    ``strict=False`` ignores platforms and filesystems that cannot fsync a directory
    (Windows, some network shares), where the rename is durable anyway or cannot be made so.
    """
    try:
        fd = os.open(Path(path), os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)
