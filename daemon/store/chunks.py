"""Chunk files (``storage.layout: chunk_per_frame``): one frame per file, encoded as the array's ``zarr.json`` says, written durably.

zarr-python neither fsyncs nor lets data be written before the shape that covers it is published, so the
store writes chunk bytes itself (``docs/design.md`` rules 2 and 4) in zarr v3's default chunk key layout,
``<array>/c/<t>/<c>/<z>/0/0``, and the tests read them back through zarr-python. Files go through
:func:`lowdose.wire.durable.write_file`; the directories that got new entries are fsynced once per batch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
from numcodecs import Blosc
from zarr.codecs import BloscCodec

from lowdose.wire.durable import fsync_dir, write_file

#: What to write: the codec, the array's directory (``<image>/0``), t, c, z, and the frame.
ChunkJob = tuple["ChunkCodec", str, int, int, int, np.ndarray]


class ChunkCodec:
    """Encodes/decodes one chunk exactly as the array's zarr.json says (bytes little-endian + blosc)."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, int], compression: str, level: int):
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.shape = shape
        self.compression = compression
        self.level = level
        # cname/clevel/shuffle/typesize as in zarr's BloscCodec (it wraps this same numcodecs class)
        self._blosc = (
            None
            if compression == "none"
            else Blosc(cname=compression, clevel=level, shuffle=Blosc.BITSHUFFLE, blocksize=0, typesize=self.dtype.itemsize)
        )

    def zarr_compressors(self) -> list[BloscCodec] | None:
        if self._blosc is None:
            return None
        return [BloscCodec(cname=self.compression, clevel=self.level, shuffle="bitshuffle", typesize=self.dtype.itemsize)]

    def encode(self, frame: np.ndarray) -> bytes | memoryview:
        arr = np.ascontiguousarray(frame, dtype=self.dtype)
        if self._blosc is None:
            return memoryview(arr).cast("B")
        return self._blosc.encode(arr)

    def decode(self, data: bytes) -> np.ndarray:
        raw = data if self._blosc is None else self._blosc.decode(data)
        return np.frombuffer(raw, dtype=self.dtype).reshape(self.shape).astype(self.dtype.newbyteorder("="))


def chunk_path(array_dir: str, t: int, c: int, z: int) -> str:
    """The chunk file of (t, c, z) in a 5-D array of one-frame chunks."""
    return f"{array_dir}/c/{t}/{c}/{z}/0/0"


class ChunkFiles:
    """Writes and reads the chunk files of one store; owns the store's encoding thread pool."""

    def __init__(self, fsync: bool):
        self.fsync = fsync
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="lowdose-store")

    def write(self, jobs: Sequence[ChunkJob], parallel: bool) -> list[list[int] | None]:
        """Write every chunk (+ fsync of the files and of the new directory entries, when ``storage.fsync``).

        ``parallel``: encode and write on the pool (blosc and file I/O release the GIL); the raw path uses
        it, the restore path writes in its own thread so the pool stays free for raw frames.
        """
        dirs: set[str] = set()
        work = [(codec, chunk_path(a, t, c, z), px, self._prepare_dir(a, t, c, z, dirs)) for codec, a, t, c, z, px in jobs]
        if parallel:
            self._run([lambda w=w: self._write_one(*w) for w in work])
            if self.fsync and dirs:
                self._run([lambda d=d: fsync_dir(d) for d in dirs])
            return [None] * len(jobs)
        for w in work:
            self._write_one(*w)
        if self.fsync:
            for d in dirs:
                fsync_dir(d)
        return [None] * len(jobs)  # a chunk's place is its name: records need no offsets

    @staticmethod
    def read_bytes(array_dir: str, t: int, c: int, z: int) -> bytes:
        """The chunk file of (t, c, z) as stored; the image's codec decodes it."""
        with open(chunk_path(array_dir, t, c, z), "rb") as f:
            return f.read()

    @staticmethod
    def present(at: object, array_dir: str, n: int, t: int, c: int, z: int) -> bool:
        """Whether a record's frame is on disk: its chunk file exists."""
        return os.path.exists(chunk_path(array_dir, t, c, z))

    def rebuild(self, array_dirs: object, located: object) -> None:
        """Nothing to rebuild: one file per frame has no index."""

    def shutdown(self, wait: bool) -> None:
        self._pool.shutdown(wait=wait)

    @staticmethod
    def _prepare_dir(array_dir: str, t: int, c: int, z: int, dirs: set[str]) -> bool:
        """Create the chunk's directory; note which directories got new entries. Returns whether the chunk exists."""
        leaf = f"{array_dir}/c/{t}/{c}/{z}/0"
        if os.path.isdir(leaf):
            exists = os.path.exists(leaf + "/0")
            if not exists:
                dirs.add(leaf)
            return exists
        base = f"{array_dir}/c"
        parts = [str(t), str(c), str(z), "0"]
        cur = base
        if not os.path.isdir(base):
            os.mkdir(base)
            dirs.add(array_dir)
        for part in parts:
            nxt = f"{cur}/{part}"
            try:
                os.mkdir(nxt)
                dirs.add(cur)
            except FileExistsError:
                pass
            cur = nxt
        dirs.add(leaf)
        return False

    def _write_one(self, codec: ChunkCodec, path: str, pixels: np.ndarray, exists: bool) -> None:
        # an existing chunk (an index written again) is replaced atomically: it may already be published
        write_file(path, codec.encode(pixels), fsync=self.fsync, atomic=exists)

    def _run(self, jobs: list[Callable[[], None]]) -> None:
        run_jobs(self._pool, jobs)


def run_jobs(pool: ThreadPoolExecutor, jobs: list[Callable[[], None]], *, parallel: bool = True) -> None:
    """Run every job (on ``pool`` when there are several) and wait for all of them before raising the
    first error: a batch is acked only once every file write of it has ended, failed or not."""
    if len(jobs) == 1 or not parallel:
        for job in jobs:
            job()
        return
    futures = [pool.submit(j) for j in jobs]
    errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e
