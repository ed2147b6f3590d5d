"""Shard files: Zarr v3 ``sharding_indexed`` along T, frames appended to the open shard, index at the start.

One shard file holds ``n`` time points of one (c, z) of one image: key ``<array>/c/<t // n>/<c>/<z>/0/0``,
inner chunk = one frame, encoded as :class:`~.chunks.ChunkCodec` encodes a one-frame chunk. The file is::

    [index: n x (offset, nbytes) little-endian uint64][frame bytes, appended in arrival order ...]

Writing a frame costs one append, not a shard rewrite: its bytes go at the end of the file, its index
entry is rewritten in place at the start (16 bytes; the whole index, ``16 n`` bytes, is written once per
batch), and one fsync of the file covers both (``storage.fsync``). An absent frame's entry is
``2**64 - 1`` twice (the spec's "empty"), which readers read as the fill value.

Why the index sits at the start and carries no crc32c: a reader of a store being written reads the index
of the open shard while frames arrive. At the start, the index has a fixed place and stays readable the
whole time; a checksum over it would fail whenever a reader caught it mid-update, while without one a
reader only ever uses the entries of published time points, and those do not change
(``docs/design.md`` rule 4: the published shape grows after the index names the data).

Durability: the caller records where each frame's bytes are (the ``at`` of its record, returned by
:meth:`ShardFiles.write`) after this module has fsynced them; the records are the truth. After a crash,
:meth:`ShardFiles.rebuild` rewrites every shard's index from the records and cuts off bytes that no record
names (a frame appended but never recorded was never acknowledged; its hook resends it).

Files are opened with ``os.open``/``lseek``/``write`` (no ``pwrite``): the daemon may run on Windows too.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from lowdose.wire.durable import fsync_dir

from .chunks import ChunkJob, run_jobs

EMPTY = np.uint64(2**64 - 1)
_BINARY = getattr(os, "O_BINARY", 0)
_MAX_OPEN = 64  # shard files kept open: the newest of each (image, c, z) being written, mostly


def shard_path(array_dir: str, n: int, t: int, c: int, z: int) -> str:
    """The shard file holding (t, c, z) of an array sharded ``n`` time points per shard."""
    return f"{array_dir}/c/{t // n}/{c}/{z}/0/0"


def default_shard_frames(frame_bytes: int) -> int:
    """Time points per shard for frames of ``frame_bytes``: ~512 MiB of raw pixels, 64 to 256 frames.

    At least 64 keeps a run's files per image below frames / 50; at most 256 keeps small-frame shards
    from growing into thousands of entries. 2048^2 uint16 (8 MiB): 64; 1024^2 and smaller: 256.
    """
    n = 64
    while n < 256 and (2 * n) * frame_bytes <= 512 << 20:
        n *= 2
    return n


class _Shard:
    """An open shard file: its descriptor, where the next frame goes, and its index as written."""

    def __init__(self, fd: int, end: int, index: np.ndarray, full: bool):
        self.fd = fd
        self.end = end
        self.index = index  # (n, 2) uint64
        self.full = full
        self.busy = 0  # writers using fd now: a busy shard is never closed under them


class ShardFiles:
    """Writes and reads the shard files of one store; owns the store's encoding thread pool.

    One thread writes a given image at a time (raw: the writer thread; restored and uncertainty: the
    restorer), so a shard is never appended to by two threads; the table of open shards is locked.
    """

    def __init__(self, fsync: bool, n: int):
        self.fsync = fsync
        self.n = n
        self._open: OrderedDict[str, _Shard] = OrderedDict()
        self._sizes: dict[str, int] = {}  # shard sizes seen while recovering
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="lowdose-store")

    # ------------------------------------------------------------------ write
    def write(self, jobs: Sequence[ChunkJob], parallel: bool) -> list[list[int]]:
        """Append every frame to its shard, rewrite the shards' indexes, fsync; each frame's [offset, nbytes].

        ``parallel``: encode, and write the shards, on the pool (blosc and file I/O release the GIL).
        """
        if parallel and len(jobs) > 1:
            encoded = list(self._pool.map(lambda j: j[0].encode(j[5]), jobs))
        else:
            encoded = [codec.encode(px) for codec, _, _, _, _, px in jobs]
        groups: dict[str, list[int]] = {}
        for k, (_, a, t, c, z, _) in enumerate(jobs):
            groups.setdefault(shard_path(a, self.n, t, c, z), []).append(k)
        where: list[list[int]] = [[] for _ in jobs]
        new_dirs: set[str] = set()

        def one(path: str, ks: list[int]) -> None:
            shard = self._shard(path, create=True, new_dirs=new_dirs)
            assert shard is not None
            try:
                append(shard, ks)
            finally:
                with self._lock:
                    shard.busy -= 1

        def append(shard: _Shard, ks: list[int]) -> None:
            bufs = [encoded[k] for k in ks]
            index = shard.index.copy()  # taken only once all is written: a failed batch leaves no trace
            offset = shard.end
            for k, buf in zip(ks, bufs):
                nbytes = len(memoryview(buf).cast("B"))
                index[jobs[k][2] % self.n] = (offset, nbytes)
                where[k] = [offset, nbytes]
                offset += nbytes
            _write_at(shard.fd, shard.end, bufs)
            _write_at(shard.fd, 0, [index.tobytes()])
            if self.fsync:
                os.fsync(shard.fd)
            shard.index, shard.end = index, offset
            shard.full = bool((index[:, 1] != EMPTY).all())

        self._run([lambda p=p, ks=ks: one(p, ks) for p, ks in groups.items()], parallel)
        if self.fsync and new_dirs:
            self._run([lambda d=d: fsync_dir(d) for d in new_dirs], parallel)
        self._close_full()
        return where

    def _shard(self, path: str, create: bool, new_dirs: set[str] | None = None) -> _Shard | None:
        """The open shard at ``path`` (opened, or created, if need be), marked busy: the caller unmarks it."""
        with self._lock:
            shard = self._open.get(path)
            if shard is not None:
                self._open.move_to_end(path)
                shard.busy += 1
                return shard
        if not os.path.exists(path):
            if not create:
                return None
            _make_dirs(os.path.dirname(path), new_dirs if new_dirs is not None else set())
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _BINARY, 0o644)
            index = np.full((self.n, 2), EMPTY, "<u8")
            try:
                _write_at(fd, 0, [index.tobytes()])
            except BaseException:  # a full disk: the next try opens the short file and reads it as empty
                os.close(fd)
                raise
            assert new_dirs is not None
            new_dirs.add(os.path.dirname(path))
            shard = _Shard(fd, index.nbytes, index, False)
        else:
            fd = os.open(path, os.O_RDWR | _BINARY)
            index = _read_index(fd, self.n)
            # never append into the index's place, even in a file cut short before its index was written
            shard = _Shard(fd, max(os.fstat(fd).st_size, index.nbytes), index, bool((index[:, 1] != EMPTY).all()))
        with self._lock:
            shard.busy = 1
            self._open[path] = shard
            idle = [p for p, s in self._open.items() if not s.busy]
            for old in idle[: max(0, len(self._open) - _MAX_OPEN)]:  # the least recently used first
                os.close(self._open.pop(old).fd)
        return shard

    def _close_full(self) -> None:
        with self._lock:
            for path in [p for p, s in self._open.items() if s.full and not s.busy]:
                os.close(self._open.pop(path).fd)

    # ------------------------------------------------------------------ read
    def read_bytes(self, array_dir: str, t: int, c: int, z: int) -> bytes:
        """The encoded frame at (t, c, z) as stored; the image's codec decodes it."""
        path = shard_path(array_dir, self.n, t, c, z)
        with self._lock:
            shard = self._open.get(path)
            entry = None if shard is None else shard.index[t % self.n].copy()
        with open(path, "rb") as f:
            if entry is None:
                entry = np.frombuffer(f.read(16 * self.n), "<u8").reshape(self.n, 2)[t % self.n]
            offset, nbytes = int(entry[0]), int(entry[1])
            if entry[0] == EMPTY:
                raise FileNotFoundError(2, f"no frame at t={t} in shard", path)
            f.seek(offset)
            return f.read(nbytes)

    # ------------------------------------------------------------------ recovery
    def present(self, at: Sequence[int] | None, array_dir: str, n: int, t: int, c: int, z: int) -> bool:
        """Whether a record's frame bytes (``at`` = [offset, nbytes]) are in its shard file (at reopen)."""
        if not at or len(at) != 2:
            return False
        path = shard_path(array_dir, n, t, c, z)
        size = self._sizes.get(path)
        if size is None:
            try:
                size = os.path.getsize(path)
            except OSError:
                size = -1
            self._sizes[path] = size  # one stat per shard, not per record
        return size >= int(at[0]) + int(at[1])

    def rebuild(self, array_dirs: Iterable[str], located: Mapping[tuple[str, int, int, int], Sequence[int]]) -> None:
        """Every shard's index, again from the records: ``located`` (array, t, c, z) -> [offset, nbytes].

        Bytes past the last recorded frame of a shard (appended, never recorded, never acked) are cut off.
        Shards whose index already says exactly this are left alone.
        """
        by_shard: dict[str, dict[int, Sequence[int]]] = {}
        for (a, t, c, z), at in located.items():
            by_shard.setdefault(shard_path(a, self.n, t, c, z), {})[t % self.n] = at
        for a in array_dirs:
            for path in _shard_files(a):
                self._rebuild_one(path, by_shard.get(path, {}))
        self._sizes.clear()

    def _rebuild_one(self, path: str, entries: Mapping[int, Sequence[int]]) -> None:
        index = np.full((self.n, 2), EMPTY, "<u8")
        end = index.nbytes
        for slot, (offset, nbytes) in entries.items():
            index[slot] = (offset, nbytes)
            end = max(end, int(offset) + int(nbytes))
        fd = os.open(path, os.O_RDWR | _BINARY)
        try:
            if os.fstat(fd).st_size == end and np.array_equal(_read_index(fd, self.n), index):
                return
            os.ftruncate(fd, end)
            _write_at(fd, 0, [index.tobytes()])
            os.fsync(fd)
        finally:
            os.close(fd)

    def shutdown(self, wait: bool) -> None:
        with self._lock:
            while self._open:
                os.close(self._open.popitem()[1].fd)
        self._pool.shutdown(wait=wait)

    def _run(self, jobs: list[Callable[[], None]], parallel: bool) -> None:
        run_jobs(self._pool, jobs, parallel=parallel)


def _write_at(fd: int, offset: int, bufs: Sequence[bytes | memoryview]) -> None:
    os.lseek(fd, offset, os.SEEK_SET)
    for buf in bufs:
        view = memoryview(buf).cast("B")
        while len(view):
            view = view[os.write(fd, view):]


def _read_index(fd: int, n: int) -> np.ndarray:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 16 * n)
    if len(data) < 16 * n:  # created, killed before its empty index was written
        return np.full((n, 2), EMPTY, "<u8")
    return np.frombuffer(data, "<u8").reshape(n, 2).copy()


def _make_dirs(leaf: str, new: set[str]) -> None:
    """Create ``leaf`` and its parents; note the directories that got new entries (to fsync them)."""
    missing = []
    cur = leaf
    while not os.path.isdir(cur):
        missing.append(cur)
        cur = os.path.dirname(cur)
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue
        new.add(os.path.dirname(d))


def _shard_files(array_dir: str) -> list[str]:
    """Every shard file of an array (``c/<T>/<c>/<z>/0/0``)."""
    base = Path(array_dir) / "c"
    if not base.is_dir():
        return []
    return [str(p) for p in base.glob("*/*/*/0/0") if p.is_file()]

