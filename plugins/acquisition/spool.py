"""The hook's spool: unacknowledged frames on local disk, one file per frame.

A run's spool is a directory ``<spool_dir>/<run id>/`` holding

* ``start.msgpack`` -- the run's encoded ``Start`` header, so the run can be
  announced again by a later process (:func:`lowdose.plugins.acquisition.sender.replay_spool`);
* ``<seq>.frame``   -- one frame each: ``MAGIC``, a little-endian u32 header
  length, the encoded ``Frame`` header (msgpack, as on the wire), the pixels;
* ``end.msgpack``   -- the ``End`` header, when the run ended with frames still here;
* ``rejected/``     -- frames the daemon refused as malformed (kept, never resent),
  with ``<seq>.reason.txt`` beside each.

Every file is written to a temporary name and renamed into place, so a crash
leaves either the whole file or none: a reader never sees half a frame. Frame
files are validated with the wire protocol's own :func:`decode` when read back.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowdose.wire.durable import fsync_dir, write_file
from lowdose.wire.protocol import TAG, End, Frame, ProtocolError, Start, decode

MAGIC = b"LDSPOOL1"
_LEN = struct.Struct("<I")
START_FILE = "start.msgpack"
END_FILE = "end.msgpack"
REJECTED_DIR = "rejected"
FRAME_SUFFIX = ".frame"


@dataclass(frozen=True)
class SpooledFrame:
    """A frame read back from the spool: its validated header and the raw encoded parts."""

    frame: Frame
    header: bytes
    pixels: memoryview


class SpoolError(RuntimeError):
    """A spool file is unreadable (truncated, foreign or corrupt)."""


class Spool:
    """One run's spool directory. Used from one thread (the sender's) at a time."""

    def __init__(self, root: str | os.PathLike[str], run: str, *, fsync: bool = False) -> None:
        self.root = Path(root)
        self.run = run
        self.dir = self.root / run
        # fsync costs a disk flush per frame; without it a spooled frame survives a
        # crash of the hook process (the OS holds it) but not a power cut.
        self.fsync = fsync

    # ------------------------------------------------------------ frames

    def frame_path(self, seq: int) -> Path:
        return self.dir / f"{seq:012d}{FRAME_SUFFIX}"

    def put(self, seq: int, header: bytes, pixels: Any) -> Path:
        """Write one encoded frame atomically; returns its path."""
        path = self.frame_path(seq)
        self._write_atomic(path, (MAGIC, _LEN.pack(len(header)), header, memoryview(pixels).cast("B")))
        return path

    def get(self, seq: int) -> SpooledFrame:
        return read_frame_file(self.frame_path(seq))

    def delete(self, seq: int) -> None:
        try:
            os.unlink(self.frame_path(seq))
        except FileNotFoundError:
            pass

    def seqs(self) -> list[int]:
        """Sequence numbers of the frames in the spool, ascending."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            if p.suffix == FRAME_SUFFIX and p.stem.isdigit():
                out.append(int(p.stem))
        return sorted(out)

    def __len__(self) -> int:
        return len(self.seqs())

    def reject(self, seq: int, header: bytes, pixels: Any, reason: str) -> Path:
        """Keep a frame the daemon refused: moved aside, never resent, never deleted here."""
        rdir = self.dir / REJECTED_DIR
        rdir.mkdir(parents=True, exist_ok=True)
        path = rdir / f"{seq:012d}{FRAME_SUFFIX}"
        src = self.frame_path(seq)
        if pixels is None and src.exists():
            os.replace(src, path)
        else:
            self._write_atomic(path, (MAGIC, _LEN.pack(len(header)), header, memoryview(pixels).cast("B")))
            self.delete(seq)
        self._write_atomic(rdir / f"{seq:012d}.reason.txt", (reason.encode(),))
        return path

    def rejected(self) -> list[int]:
        rdir = self.dir / REJECTED_DIR
        if not rdir.is_dir():
            return []
        return sorted(int(p.stem) for p in rdir.iterdir() if p.suffix == FRAME_SUFFIX and p.stem.isdigit())

    # ------------------------------------------------------------ run messages

    def write_start(self, header: bytes) -> None:
        self._write_atomic(self.dir / START_FILE, (header,))

    def read_start(self) -> Start:
        msg = _decode_header(self.dir / START_FILE)
        if not isinstance(msg, Start):
            raise SpoolError(f"{self.dir / START_FILE} does not hold a start message")
        return msg

    def has_start(self) -> bool:
        return (self.dir / START_FILE).exists()

    def write_end(self, header: bytes) -> None:
        self._write_atomic(self.dir / END_FILE, (header,))

    def read_end(self) -> End | None:
        path = self.dir / END_FILE
        if not path.exists():
            return None
        msg = _decode_header(path)
        if not isinstance(msg, End):
            raise SpoolError(f"{path} does not hold an end message")
        return msg

    def cleanup(self) -> bool:
        """Remove the run's directory if no frame (pending or rejected) is left; True if removed."""
        if not self.dir.is_dir():
            return True
        if self.seqs() or self.rejected():
            return False
        shutil.rmtree(self.dir, ignore_errors=True)
        return not self.dir.exists()

    # ------------------------------------------------------------ internals

    def _write_atomic(self, path: Path, chunks: tuple[Any, ...]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, chunks, fsync=self.fsync)
        if self.fsync:
            fsync_dir(path.parent, strict=False)


def read_frame_file(path: str | os.PathLike[str]) -> SpooledFrame:
    """Read and validate one spooled frame file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpoolError(f"{path} does not exist") from None
    if len(data) < len(MAGIC) + _LEN.size or not data.startswith(MAGIC):
        raise SpoolError(f"{path} is not a lowdose spool file")
    (hlen,) = _LEN.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    view = memoryview(data)
    header = bytes(view[start : start + hlen])
    pixels = view[start + hlen :]
    try:
        msg, payload = decode([TAG, header, pixels])
    except ProtocolError as exc:
        raise SpoolError(f"{path}: {exc}") from None
    if not isinstance(msg, Frame) or payload is None:
        raise SpoolError(f"{path} does not hold a frame")
    return SpooledFrame(msg, header, pixels)


@dataclass(frozen=True)
class SpoolSummary:
    """What one run's spool holds, for people: ``lowdose status`` and the hook's report."""

    run: str
    dir: Path
    pending: int  # frames no daemon has acknowledged yet: ``lowdose replay`` sends them
    rejected: int  # frames a daemon refused as malformed, kept with their reasons; never resent
    bytes: int
    newest_age_s: float | None  # seconds since the last frame file was written (a live hook spills now)
    ended: bool  # the run's end is spooled too: the acquisition finished, only delivery is left

    def why(self) -> str:
        if self.pending and self.newest_age_s is not None and self.newest_age_s < 10:
            reason = "a hook is spilling frames here now (the daemon is unreachable or slower than the camera)"
        elif self.pending:
            reason = "no daemon acknowledged them before the hook stopped (daemon down, hook closed or crashed)"
        else:
            reason = "only frames the daemon refused are left"
        if self.rejected:
            reason += f"; {self.rejected} refused as malformed, reasons in {self.dir / REJECTED_DIR}"
        return reason


def summarize(root: str | os.PathLike[str]) -> list[SpoolSummary]:
    """Every run spool under ``root`` with frames in it; reads file names and sizes, never pixels."""
    out = []
    now = time.time()
    for d in run_dirs(root):
        spool = Spool(d.parent, d.name)
        files = [spool.frame_path(s) for s in spool.seqs()]
        rejected = spool.rejected()
        if not files and not rejected:
            continue
        sizes, mtimes = [], []
        for f in files:
            try:
                st = f.stat()
            except FileNotFoundError:  # sent and deleted while we looked
                continue
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime)
        out.append(SpoolSummary(
            run=d.name, dir=d, pending=len(sizes), rejected=len(rejected), bytes=sum(sizes),
            newest_age_s=(now - max(mtimes)) if mtimes else None, ended=(d / END_FILE).exists(),
        ))
    return out


def run_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """Run spool directories under ``root`` (or ``root`` itself if it is one)."""
    root = Path(root)
    if (root / START_FILE).exists():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / START_FILE).exists())


def _decode_header(path: Path) -> Any:
    try:
        msg, _ = decode([TAG, path.read_bytes()])
    except (OSError, ProtocolError) as exc:
        raise SpoolError(f"{path}: {exc}") from None
    return msg
