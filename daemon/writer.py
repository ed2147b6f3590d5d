"""The per-run store: one OME-Zarr (NGFF 0.5 on Zarr v3) with raw and restored images side by side.

Layout of ``<output_dir>/<run>.ome.zarr/``::

    zarr.json                 root group; attributes["lowdose"]: run info, Start message, version, summary
    raw/ restored/            NGFF 0.5 images of position 0 (TCZYX, one level at path "0")
    uncertainty/              float32 uncertainty map, when the model gives one
    raw_p1/ restored_p1/ ...  further stage positions
    lowdose/                  zarr group of lowdose's own records
        frames.jsonl          append-only: one line per raw frame (seq, index, timestamps, metadata)
        restored.jsonl        append-only: one line per restored frame (index, mode, model) + model records
        tables/               per-frame columns as 1-D zarr arrays, written by finalize()

How a frame is written (``docs/design.md`` rule 2 "no raw frame lost" and rule 4 "data before count"):

1. the chunk file is encoded and written (and fsynced, with the new directory entries, when
   ``storage.fsync``);
2. its record is appended to ``frames.jsonl`` (fsynced);
3. the array's published shape (its ``zarr.json``, replaced atomically) grows to the contiguous prefix
   of *complete* time points (all C x Z frames present).

A reader therefore never sees an index whose chunk is not there, and after a crash the records are
the truth: a frame with a record has its chunk; a frame without one (torn last line included) is
resent by the hook and rewritten. Reopening rebuilds everything from the records.

Chunks are one frame each, ``(1, 1, 1, Y, X)``, unsharded. Writing shards
frame by frame with zarr-python measured 0.04 GB/s on our VM (each frame rewrites the shard; see
``benchmarks/RESULTS.md``), and a shard buffered
in RAM is lost on a kill; one file per frame keeps every acknowledged frame independently durable.
The price is many files (360,000 per hour per stream at 100 fps); an append-only shard writer is the
documented next step for very long runs.

The arrays' metadata is created with zarr-python; chunk bytes are encoded with numcodecs' Blosc (the
codec zarr-python's ``BloscCodec`` wraps, same configuration) and written by this module, because
zarr-python neither fsyncs nor lets us write data before publishing the shape (it publishes the shape
first). The tests read everything back through zarr-python, ome-zarr-py and both NGFF validators.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

from lowdose.daemon import ngff
from lowdose.daemon.config import StorageConfig
from lowdose.wire.protocol import End, Frame, FrameIndex, Start
from lowdose.plugins.denoisers.interface import DenoiserInfo
from lowdose.wire.durable import fsync_dir, write_file
from lowdose.wire.jsonsafe import jsonable

log = logging.getLogger(__name__)

__all__ = ["StoreError", "FrameNotStored", "RunStore", "STATUS_CODES"]

#: Restoration status codes in ``lowdose/tables/restored_status``.
STATUS_CODES: dict[str, int] = {"pending": 0, "live": 1, "backfill": 2}
_KIND_RAW, _KIND_RESTORED, _KIND_UNCERTAINTY = "raw", "restored", "uncertainty"
_TABLE_CHUNK = 65536
_MAX_LISTED = 1000  # missing seqs/indices listed in the summary (all are counted)

Key = tuple[int, int, int, int]  # (p, t, c, z)

# Per-frame bookkeeping lives in numpy, not in Python objects: a run of 10 hours at 100 frames/s has 3.6 M
# frames, and a set entry or dict item per frame (~0.7 KB with its tuples) would grow the daemon by GBs.
_BLOCK_T = 256  # time points per block of cells: a far-out t costs one block, not a grid reaching it
_CELL = np.dtype([("seq", "<i8"), ("status", "u1"), ("model", "<i2"), ("unc", "?")])  # packed: 12 bytes
_EMPTY_CELL = np.array((-1, 0, -1, False), dtype=_CELL)  # no raw frame, not restored, no uncertainty
_MAX_SEQ_OR_T = 1 << 62  # both land in int64 arithmetic


class _SeqSet:
    """The stored seqs: a byte per seq over 0..len(dense)-1, a plain set for implausibly far seqs.

    Seqs count frames from 0, so they are nearly contiguous. The protocol caps them only at 2**62, so the
    dense part only grows while it stays within 8 bytes per stored seq (or 64 KiB): one hostile seq
    of 10^15 is one set entry, not a petabyte. Invariant: every ``far`` seq is >= ``len(dense)``.
    """

    _MIN = 1 << 16

    def __init__(self) -> None:
        self._dense = np.zeros(self._MIN, dtype=bool)
        self._far: set[int] = set()
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def __contains__(self, seq: int) -> bool:
        if 0 <= seq < len(self._dense):
            return bool(self._dense[seq])
        return seq in self._far

    def add(self, seq: int) -> None:
        if seq in self:
            return
        self._n += 1
        size = len(self._dense)
        if seq >= size:
            cap = max(self._MIN, 8 * self._n)
            if seq >= cap:
                self._far.add(seq)
                return
            grown = np.zeros(min(max(2 * size, seq + 1), cap), dtype=bool)
            grown[:size] = self._dense
            self._dense = grown
            for s in [s for s in self._far if s < len(grown)]:
                self._far.discard(s)
                grown[s] = True
        self._dense[seq] = True

    def sorted(self) -> np.ndarray:
        """All seqs, ascending, as int64."""
        dense = np.flatnonzero(self._dense).astype(np.int64)
        if not self._far:
            return dense
        return np.concatenate([dense, np.array(sorted(self._far), dtype=np.int64)])


class _Cells:
    """Per-frame state of one position's (t, c, z) indices: blocks of ``_BLOCK_T`` time points x C x Z cells.

    A cell holds the seq of the raw frame stored there (-1: none), its restoration status code and model id
    (0 and -1: not restored), and whether its uncertainty map is stored. Blocks take the position's current
    C x Z; a block laid out before C or Z grew is re-laid out when next used, so growth costs nothing up front.
    Callers hold the store's state lock.
    """

    def __init__(self, sizes: list[int]):
        self.sizes = sizes  # the store's [C, Z] of this position: the same list, grown in place
        self.blocks: dict[int, np.ndarray] = {}

    def block(self, bn: int, create: bool = False) -> np.ndarray | None:
        blk = self.blocks.get(bn)
        c, z = self.sizes
        if blk is None:
            if not create:
                return None
            blk = self.blocks[bn] = np.full((_BLOCK_T, c, z), _EMPTY_CELL)
        elif blk.shape[1:] != (c, z):
            grown = np.full((_BLOCK_T, c, z), _EMPTY_CELL)
            grown[:, : blk.shape[1], : blk.shape[2]] = blk
            blk = self.blocks[bn] = grown
        return blk

    def cell(self, t: int, c: int, z: int, create: bool = False) -> np.void | None:
        """The cell at (t, c, z), a view that writes through; None if nothing can be stored there yet."""
        if c >= self.sizes[0] or z >= self.sizes[1]:
            return None
        blk = self.block(t // _BLOCK_T, create)
        return None if blk is None else blk[t % _BLOCK_T, c, z]

    def sorted_blocks(self) -> list[tuple[int, np.ndarray]]:
        """Every block by t, laid out for the current C x Z."""
        out = []
        for bn in sorted(self.blocks):
            blk = self.block(bn)
            assert blk is not None
            out.append((bn, blk))
        return out


def _present(blk: np.ndarray, kind: str) -> np.ndarray:
    """Which cells of a block have an image of ``kind`` stored."""
    if kind == _KIND_RAW:
        return blk["seq"] >= 0
    if kind == _KIND_RESTORED:
        return blk["status"] > 0
    return blk["unc"]


def _pending_mask(blk: np.ndarray) -> np.ndarray:
    return (blk["seq"] >= 0) & (blk["status"] == 0)


class StoreError(RuntimeError):
    """The run store cannot be used as asked; the message names the problem and the fix."""


class FrameNotStored(StoreError, KeyError):
    """``read_raw`` of an index whose raw frame is not (yet) in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def _oserror(exc: OSError, action: str, path: Path | str) -> StoreError:
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


def _write_json(path: Path, obj: Any, fsync: bool = False) -> None:
    write_file(path, json.dumps(obj, indent=2, allow_nan=False).encode(), fsync=fsync, atomic=True)


class _ChunkCodec:
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


@dataclass
class _Image:
    """One NGFF image group (raw, restored or uncertainty of one position) and its publication state."""

    name: str
    kind: str
    p: int
    dir: Path
    codec: _ChunkCodec
    meta: dict[str, Any]  # the array's zarr.json
    group_meta: dict[str, Any]  # the group's zarr.json
    frames: int = 0  # indices with a frame of this image stored (the cells say which)
    t_end: int = 0  # highest t with a frame stored, plus one
    prefix: int = 0  # complete time points 0..prefix-1
    prefix_cz: tuple[int, int] = (0, 0)  # the C, Z the prefix was counted for
    windows: dict[int, tuple[float, float]] = field(default_factory=dict)
    pub_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def array_dir(self) -> Path:
        return self.dir / "0"

    def chunk_dir(self, t: int, c: int, z: int) -> str:
        return f"{self.dir}/0/c/{t}/{c}/{z}/0"

    def chunk_path(self, t: int, c: int, z: int) -> str:
        return f"{self.dir}/0/c/{t}/{c}/{z}/0/0"


class RunStore:
    """One OME-Zarr (NGFF 0.5, Zarr v3) store per run, raw and restored images side by side.

    Thread-safety: ``write_raw`` (writer thread) and ``write_restored`` / ``read_raw`` / ``unrestored``
    (restore thread) may run concurrently. Each write path holds its own lock for its whole batch; shared
    bookkeeping sits behind a short state lock, so raw chunk I/O never waits for restored chunk I/O.
    """

    path: Path

    def __init__(self, path: Path, start: Start, cfg: StorageConfig, lowdose_version: str, policy: str | None):
        """Use :meth:`open`."""
        self.path = path
        self.start = start
        self.cfg = cfg
        self.lowdose_version = lowdose_version
        self.policy = policy
        self.frame_shape: tuple[int, int] = (int(start.shape[0]), int(start.shape[1]))
        self.dtype = np.dtype(start.dtype)
        self._codec = _ChunkCodec(self.dtype, self.frame_shape, cfg.compression, cfg.compression_level)
        self._unc_codec = _ChunkCodec(np.dtype("float32"), self.frame_shape, cfg.compression, cfg.compression_level)
        # float32 keeps the sub-ADU precision a model recovers at a few photons per pixel
        self._restored_codec = self._unc_codec if cfg.restored_dtype == "float32" else self._codec
        self.restored_dtype = self._restored_codec.dtype.newbyteorder("=")
        self._scale = ngff.scale(start.frame_interval_s, start.z_step_um, start.pixel_size_um)
        self._default_cz = (max(1, start.sizes.get("c", 1) or 1), max(1, start.sizes.get("z", 1) or 1))
        self._state = threading.Lock()
        self._raw_lock = threading.Lock()
        self._restored_lock = threading.Lock()
        self._images: dict[tuple[int, str], _Image] = {}
        self._sizes: dict[int, list[int]] = {}  # p -> [C, Z]
        self._seqs = _SeqSet()
        self._cells: dict[int, _Cells] = {}  # p -> what is stored at each of its indices
        self._status_n = [0] * len(STATUS_CODES)  # restored frames per status code (code 0 unused)
        self._n_pending = 0  # raw frames stored and not restored
        # blocks (p, block) holding pending frames -> how many, and their lowest pending seq (cached until
        # the block changes): unrestored() visits only these, never the long restored past of a run
        self._pending_blocks: dict[tuple[int, int], int] = {}
        self._pending_min: dict[tuple[int, int], int] = {}
        self._models: list[dict[str, Any]] = []
        self._finalized = False
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="lowdose-store")
        self._frames_log: Any = None
        self._restored_log: Any = None

    # ------------------------------------------------------------------ open / recover
    @classmethod
    def open(
        cls,
        output_dir: Path,
        start: Start,
        cfg: StorageConfig,
        lowdose_version: str,
        *,
        policy: str | None = None,
    ) -> "RunStore":
        """Create ``<output_dir>/<start.run>.ome.zarr``, or reopen it after a daemon restart.

        On reopen the store's own records (``lowdose/frames.jsonl``, ``lowdose/restored.jsonl``) say which
        frames are written and which are restored; a torn last line is dropped (that frame is resent).
        Reopening with a different frame shape/dtype raises :class:`StoreError`, and so does a disk-full or
        permission error. ``policy`` (``fifo``/``latest``) is recorded as provenance of ``restored``.
        """
        path = Path(output_dir) / f"{start.run}.ome.zarr"
        store = cls(path, start, cfg, lowdose_version, policy)
        try:
            store._open()
        except OSError as exc:
            store._pool.shutdown(wait=False)
            raise _oserror(exc, f"opening the run store for run {start.run!r}", exc.filename or path) from exc
        except BaseException:
            store._pool.shutdown(wait=False)
            raise
        return store

    @classmethod
    def reopen(cls, path: Path, cfg: StorageConfig, lowdose_version: str) -> "RunStore":
        """Open an existing run store from its own records (offline backfill, daemon resume)."""
        path = Path(path)
        try:
            attrs = json.loads((path / "zarr.json").read_text())["attributes"]["lowdose"]
            start = Start.model_validate(attrs["start"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path} is not a lowdose run store ({exc}); give the path of a <run>.ome.zarr") from None
        if path.name != f"{start.run}.ome.zarr":
            raise StoreError(f"{path} holds run {start.run!r}; its folder must be named {start.run}.ome.zarr")
        store = cls.open(path.parent, start, cfg, lowdose_version, policy=attrs.get("policy"))
        return store

    @staticmethod
    def read_state(path: Path) -> dict[str, Any]:
        """The root's lowdose attributes (``summary`` and ``end`` appear once finalized)."""
        return json.loads((Path(path) / "zarr.json").read_text())["attributes"]["lowdose"]

    def _open(self) -> None:
        Path(self.path.parent).mkdir(parents=True, exist_ok=True)
        root_json = self.path / "zarr.json"
        if root_json.exists():
            self._check_existing(root_json)
        else:
            self._create_root()
        lowdose_dir = self.path / "lowdose"
        if not (lowdose_dir / "zarr.json").exists():
            zarr.open_group(store=LocalStore(self.path), path="lowdose", mode="a", zarr_format=3)
        frames = self._read_log(lowdose_dir / "frames.jsonl")
        restored = self._read_log(lowdose_dir / "restored.jsonl")
        self._ensure_position(0)
        self._recover(frames, restored)
        self._frames_log = open(lowdose_dir / "frames.jsonl", "ab")
        self._restored_log = open(lowdose_dir / "restored.jsonl", "ab")
        if self.cfg.fsync:
            fsync_dir(lowdose_dir)
        for img in list(self._images.values()):
            self._publish(img, force=True)

    def _check_existing(self, root_json: Path) -> None:
        try:
            attrs = json.loads(root_json.read_text())["attributes"]["lowdose"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"{self.path} exists but is not a lowdose run store ({exc!r}); move it away or use another run id"
            ) from None
        shape, dtype = tuple(attrs.get("frame_shape", ())), attrs.get("dtype")
        if shape != self.frame_shape or dtype != self.dtype.name:
            raise StoreError(
                f"run {self.start.run!r} already has a store at {self.path} with frames of shape {shape} {dtype}, "
                f"but the run now announces {self.frame_shape} {self.dtype.name}; a run's frame shape and dtype "
                "cannot change: start a new run id (or move the old store away)"
            )

    def _create_root(self) -> None:
        start = self.start
        attrs = {
            "lowdose": {
                "run": start.run,
                "instrument": start.instrument,
                "source": start.source,
                "start_time": datetime.now(timezone.utc).isoformat(),
                "lowdose_version": self.lowdose_version,
                "frame_shape": list(self.frame_shape),
                "dtype": self.dtype.name,
                "storage": {
                    "compression": self.cfg.compression,
                    "compression_level": self.cfg.compression_level,
                    "chunks": "one frame per chunk (1, 1, 1, Y, X), unsharded",
                    "fsync": self.cfg.fsync,
                },
                "start": start.model_dump(mode="json"),
                "summary_metadata": start.summary,
                "sequence": start.sequence,
                "records": {"frames": "lowdose/frames.jsonl", "restored": "lowdose/restored.jsonl"},
            }
        }
        # build in a temporary name, then rename: a crash mid-creation leaves no half store at the run's path
        tmp = self.path.with_name(self.path.name + ".creating")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        zarr.open_group(store=LocalStore(tmp), mode="w-", zarr_format=3, attributes=jsonable(attrs))
        os.rename(tmp, self.path)
        if self.cfg.fsync:
            fsync_dir(self.path.parent)

    def _read_log(self, path: Path) -> list[dict[str, Any]]:
        """Records of an append-only JSON-lines log; a torn last line is cut off the file."""
        if not path.exists():
            return []
        data = path.read_bytes()
        records: list[dict[str, Any]] = []
        good_end = 0
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                break  # torn: no newline
            line = data[pos:nl]
            try:
                records.append(json.loads(line))
                good_end = nl + 1
            except ValueError:
                if data.find(b"\n", nl + 1) < 0 and not data[nl + 1 :].strip():
                    break  # torn last line
                log.warning("%s: skipping an unreadable record at byte %d", path, pos)
                good_end = nl + 1
            pos = nl + 1
        if good_end < len(data):
            log.warning("%s: dropping a torn last record (%d bytes); that frame will be resent", path, len(data) - good_end)
            with open(path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        return records

    def _recover(self, frames: list[dict[str, Any]], restored: list[dict[str, Any]]) -> None:
        for rec in frames:
            key: Key = (rec["p"], rec["t"], rec["c"], rec["z"])
            self._ensure_position(key[0])
            img = self._images[(key[0], _KIND_RAW)]
            if not os.path.exists(img.chunk_path(key[1], key[2], key[3])):
                log.warning("frame seq %d has a record but no chunk; it will be resent", rec["seq"])
                continue
            self._grow_sizes(key)
            self._note_raw(key, rec["seq"])
        for rec in restored:
            if rec.get("kind") == "model":
                self._models.append(rec["info"])
                continue
            key = (rec["p"], rec["t"], rec["c"], rec["z"])
            if self._raw_seq(key) < 0:
                continue
            if rec.get("uncertainty"):
                self._ensure_uncertainty(key[0])
            self._note_restored(key, STATUS_CODES[rec["mode"]], rec["model"], bool(rec.get("uncertainty")))
        if self._models:
            self._update_provenance()

    # ------------------------------------------------------------------ images
    def _ensure_position(self, p: int) -> None:
        if (p, _KIND_RAW) in self._images:
            return
        self._cells[p] = _Cells(self._sizes.setdefault(p, list(self._default_cz)))
        raw, restored, unc = ngff.image_names(p)
        self._images[(p, _KIND_RAW)] = self._ensure_image(raw, _KIND_RAW, p, self._codec)
        self._images[(p, _KIND_RESTORED)] = self._ensure_image(restored, _KIND_RESTORED, p, self._restored_codec)
        if (self.path / unc / "0" / "zarr.json").exists():
            self._ensure_uncertainty(p)

    def _ensure_uncertainty(self, p: int) -> None:
        if (p, _KIND_UNCERTAINTY) not in self._images:
            self._images[(p, _KIND_UNCERTAINTY)] = self._ensure_image(
                ngff.image_names(p)[2], _KIND_UNCERTAINTY, p, self._unc_codec
            )

    def _ensure_image(self, name: str, kind: str, p: int, codec: _ChunkCodec) -> _Image:
        gdir = self.path / name
        if not (gdir / "0" / "zarr.json").exists():
            c, z = self._sizes[p]
            labels = ngff.channel_labels(self.start.channel_names, c)
            attrs = {
                "ome": ngff.image_ome(name, self._scale, labels, codec.dtype, {}),
                "lowdose": {"kind": kind, "position": p, "frame_records": "../lowdose/frames.jsonl"},
            }
            root = LocalStore(self.path)
            zarr.open_group(store=root, path=name, mode="a", zarr_format=3, attributes=jsonable(attrs))
            zarr.create_array(
                store=root,
                name=f"{name}/0",
                shape=(0, c, z, *self.frame_shape),
                chunks=(1, 1, 1, *self.frame_shape),
                dtype=codec.dtype,
                compressors=codec.zarr_compressors(),
                fill_value=0,
                dimension_names=list(ngff.AXES),
                zarr_format=3,
                overwrite=False,
            )
            if self.cfg.fsync:
                fsync_dir(self.path)
        meta = json.loads((gdir / "0" / "zarr.json").read_text())
        group_meta = json.loads((gdir / "zarr.json").read_text())
        img = _Image(name=name, kind=kind, p=p, dir=gdir, codec=codec, meta=meta, group_meta=group_meta)
        return img

    def _grow_sizes(self, key: Key) -> bool:
        sizes = self._sizes.setdefault(key[0], list(self._default_cz))
        grown = False
        if key[2] >= sizes[0]:
            sizes[0] = key[2] + 1
            grown = True
        if key[3] >= sizes[1]:
            sizes[1] = key[3] + 1
            grown = True
        return grown

    # ------------------------------------------------------------------ per-frame state (all under _state)
    def _raw_seq(self, key: Key) -> int:
        """The seq of the raw frame stored at ``key``; -1 if none."""
        cells = self._cells.get(key[0])
        cell = None if cells is None else cells.cell(key[1], key[2], key[3])
        return -1 if cell is None else int(cell["seq"])

    def _note_raw(self, key: Key, seq: int) -> int:
        """Raw frame ``seq`` is stored at ``key`` (its C, Z already grown); returns the seq it replaced, -1 if none."""
        p, t, c, z = key
        self._seqs.add(seq)
        cell = self._cells[p].cell(t, c, z, create=True)
        assert cell is not None  # _grow_sizes made room
        prev = int(cell["seq"])
        cell["seq"] = seq
        if cell["status"] == 0:  # pending: new, or (replaced) under another seq
            block = (p, t // _BLOCK_T)
            self._pending_min.pop(block, None)
            if prev < 0:
                self._n_pending += 1
                self._pending_blocks[block] = self._pending_blocks.get(block, 0) + 1
        if prev < 0:
            self._mark(self._images[(p, _KIND_RAW)], t)
        return prev

    def _note_restored(self, key: Key, code: int, model: int, uncertainty: bool) -> None:
        """The restoration of the raw frame stored at ``key`` is stored (and its uncertainty map, if said)."""
        p, t, c, z = key
        cell = self._cells[p].cell(t, c, z)
        assert cell is not None  # callers checked the raw frame is there
        prev = int(cell["status"])
        if prev == 0:
            block = (p, t // _BLOCK_T)
            self._pending_min.pop(block, None)
            self._n_pending -= 1
            left = self._pending_blocks[block] - 1
            if left:
                self._pending_blocks[block] = left
            else:
                del self._pending_blocks[block]
            self._mark(self._images[(p, _KIND_RESTORED)], t)
        else:
            self._status_n[prev] -= 1
        self._status_n[code] += 1
        cell["status"] = code
        cell["model"] = model
        if uncertainty and not cell["unc"]:
            cell["unc"] = True
            self._mark(self._images[(p, _KIND_UNCERTAINTY)], t)

    def _lowest_pending(self, block: tuple[int, int]) -> int:
        low = self._pending_min.get(block)
        if low is None:
            blk = self._cells[block[0]].block(block[1])
            assert blk is not None
            low = self._pending_min[block] = int(blk["seq"][_pending_mask(blk)].min())
        return low

    def _status_counts(self) -> dict[str, int]:
        counts = {name: self._status_n[code] for name, code in STATUS_CODES.items()}
        counts["pending"] = self._n_pending
        return counts

    @staticmethod
    def _mark(img: _Image, t: int) -> None:
        """A frame of ``img`` is now stored at a t-index that had none."""
        img.frames += 1
        img.t_end = max(img.t_end, t + 1)

    def _complete_prefix(self, img: _Image) -> int:
        """The first time point at or after ``img.prefix`` that lacks some (c, z) of ``img``."""
        cells = self._cells[img.p]
        t = img.prefix
        while True:
            bn, off = divmod(t, _BLOCK_T)
            blk = cells.block(bn)
            if blk is None:
                return t
            full = _present(blk[off:], img.kind).all(axis=(1, 2))
            if not full.all():
                return t + int(np.argmin(full))
            t = (bn + 1) * _BLOCK_T

    def _target_shape(self, img: _Image) -> list[int]:
        """Published shape: complete prefix of time points (or everything written, once finalized). Under _state."""
        c, z = self._sizes[img.p]
        if img.prefix_cz != (c, z):
            img.prefix, img.prefix_cz = 0, (c, z)
        img.prefix = self._complete_prefix(img)
        t = img.prefix
        if self._finalized:
            t = max(t, self._images[(img.p, _KIND_RAW)].t_end, img.t_end)
        return [t, c, z, *self.frame_shape]

    def _publish(self, img: _Image, force: bool = False) -> None:
        """Rewrite the array's zarr.json if its shape (or the group's omero) changed. Data is already on disk."""
        with img.pub_lock:
            with self._state:
                shape = self._target_shape(img)
                labels = ngff.channel_labels(self.start.channel_names, shape[1])
                omero = ngff.omero(labels, img.codec.dtype, img.windows)
            if force or shape != img.meta["shape"]:
                img.meta["shape"] = shape
                _write_json(img.array_dir / "zarr.json", img.meta)
            ome = img.group_meta["attributes"]["ome"]
            if force or ome.get("omero") != omero:
                ome["omero"] = omero
                _write_json(img.dir / "zarr.json", img.group_meta)

    # ------------------------------------------------------------------ raw
    def write_raw(self, frames: Sequence[tuple[Frame, np.ndarray]]) -> list[int]:
        """Write a batch of frames (arrival order) durably; return the seqs now durably stored.

        Order: chunk data (+ fsync of files and new directory entries when ``storage.fsync``), then the
        per-frame records (+ fsync), then the visible shapes grown (one ``zarr.json`` write per image per
        batch at most). Idempotent by seq: a seq already stored is not written again but is returned.
        """
        self._check_open()
        with self._raw_lock:
            out: list[int] = []
            todo: list[tuple[Frame, np.ndarray]] = []
            seen: set[int] = set()
            with self._state:
                for frame, pixels in frames:
                    if frame.seq in seen:
                        continue
                    seen.add(frame.seq)
                    out.append(frame.seq)
                    if frame.seq not in self._seqs:
                        todo.append((frame, pixels))
            if not todo:
                return out
            for frame, pixels in todo:
                self._check_frame(frame, pixels)
            try:
                self._write_raw_batch(todo)
            except OSError as exc:
                raise _oserror(exc, "writing raw frames", exc.filename or self.path) from exc
            return out

    def _check_frame(self, frame: Frame, pixels: np.ndarray) -> None:
        if frame.run != self.start.run:
            raise StoreError(f"frame seq {frame.seq} belongs to run {frame.run!r}, not {self.start.run!r}")
        if max(frame.seq, frame.index.t) >= _MAX_SEQ_OR_T:  # the protocol caps both; a Python caller need not
            raise StoreError(
                f"frame seq {frame.seq} at t={frame.index.t}: seq and t must be below 2**62 (the hook numbers frames "
                "and time points from 0)"
            )
        if tuple(pixels.shape) != self.frame_shape or np.dtype(pixels.dtype) != self.dtype:
            raise StoreError(
                f"frame seq {frame.seq} is {tuple(pixels.shape)} {pixels.dtype} but run {self.start.run!r} stores "
                f"{self.frame_shape} {self.dtype.name}; the hook must send frames of the announced shape and dtype"
            )

    def _write_raw_batch(self, todo: list[tuple[Frame, np.ndarray]]) -> None:
        fsync = self.cfg.fsync
        jobs: list[tuple[str, np.ndarray, bool]] = []
        dirs: set[str] = set()
        new_positions = {f.index.p for f, _ in todo} - {p for p, _ in self._images}
        for p in sorted(new_positions):
            with self._state:
                self._ensure_position(p)
        for frame, pixels in todo:
            i = frame.index
            img = self._images[(i.p, _KIND_RAW)]
            exists = self._prepare_chunk_dir(img, i.t, i.c, i.z, dirs)
            jobs.append((img.chunk_path(i.t, i.c, i.z), pixels, exists))
        # 1. chunk data, encoded and written in parallel (blosc and file I/O release the GIL)
        self._run_jobs([lambda j=j: self._write_chunk(self._codec, *j) for j in jobs])
        if fsync and dirs:
            self._run_jobs([lambda d=d: fsync_dir(d) for d in dirs])
        # 2. records
        now = time.time()
        lines = []
        for frame, _ in todo:
            i = frame.index
            rec = {
                "seq": frame.seq,
                "t": i.t,
                "p": i.p,
                "c": i.c,
                "z": i.z,
                "timestamp": frame.timestamp,
                "elapsed_ms": frame.elapsed_ms,
                "exposure_ms": frame.exposure_ms,
                "written": now,
                "metadata": frame.metadata,
            }
            lines.append(json.dumps(jsonable(rec), separators=(",", ":")))
        self._append(self._frames_log, lines)
        # 3. state, then the count
        touched: set[int] = set()
        grown: set[int] = set()
        first_of_channel: list[tuple[_Image, int]] = []
        windows: dict[tuple[int, int], tuple[float, float]] = {}
        for frame, pixels in todo:  # contrast from the first frame of each channel, outside the lock
            i = frame.index
            if i.c not in self._images[(i.p, _KIND_RAW)].windows and (i.p, i.c) not in windows:
                windows[(i.p, i.c)] = ngff.contrast_window(pixels)
        with self._state:
            for frame, pixels in todo:
                i = frame.index
                key: Key = (i.p, i.t, i.c, i.z)
                if self._grow_sizes(key):
                    grown.add(i.p)
                prev = self._note_raw(key, frame.seq)
                if prev >= 0 and prev != frame.seq:
                    log.warning("seq %d overwrote index %s (was seq %d)", frame.seq, key, prev)
                img = self._images[(i.p, _KIND_RAW)]
                touched.add(i.p)
                if i.c not in img.windows and (i.p, i.c) in windows:
                    img.windows[i.c] = windows[(i.p, i.c)]
                    first_of_channel.append((img, i.c))
        for p in touched | grown:
            self._publish(self._images[(p, _KIND_RAW)])
        for p in grown:
            for kind in (_KIND_RESTORED, _KIND_UNCERTAINTY):
                if (p, kind) in self._images:
                    self._publish(self._images[(p, kind)])
        if first_of_channel:  # restored shares the raw contrast until it has its own
            for img, c in first_of_channel:
                rest = self._images[(img.p, _KIND_RESTORED)]
                with self._state:
                    rest.windows.setdefault(c, img.windows[c])
                self._publish(rest)

    def _prepare_chunk_dir(self, img: _Image, t: int, c: int, z: int, dirs: set[str]) -> bool:
        """Create the chunk's directory; note which directories got new entries. Returns whether the chunk exists."""
        leaf = img.chunk_dir(t, c, z)
        if os.path.isdir(leaf):
            exists = os.path.exists(leaf + "/0")
            if not exists:
                dirs.add(leaf)
            return exists
        base = f"{img.dir}/0/c"
        parts = [str(t), str(c), str(z), "0"]
        cur = base
        if not os.path.isdir(base):
            os.mkdir(base)
            dirs.add(str(img.array_dir))
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

    def _write_chunk(self, codec: _ChunkCodec, path: str, pixels: np.ndarray, exists: bool) -> None:
        # an existing chunk (an index written again) is replaced atomically: it may already be published
        write_file(path, codec.encode(pixels), fsync=self.cfg.fsync, atomic=exists)

    def _run_jobs(self, jobs: list[Callable[[], None]]) -> None:
        if len(jobs) == 1:
            jobs[0]()
            return
        futures = [self._pool.submit(j) for j in jobs]
        errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e

    def _append(self, fh: Any, lines: list[str]) -> None:
        fh.write(("\n".join(lines) + "\n").encode())
        fh.flush()
        if self.cfg.fsync:
            os.fsync(fh.fileno())

    def raw_seqs(self) -> set[int]:
        """Seqs durably stored (a copy)."""
        with self._state:
            return set(self._seqs.sorted().tolist())

    def raw_seq_ranges(self) -> list[tuple[int, int]]:
        """Stored seqs as inclusive [first, last] ranges, ascending: what an ack carries.

        Computed on the compact seq set, so announcing a run of millions of frames does not build a
        Python set of them.
        """
        with self._state:
            seqs = self._seqs.sorted()
        if not len(seqs):
            return []
        breaks = np.flatnonzero(np.diff(seqs) != 1)
        firsts = np.concatenate([seqs[:1], seqs[breaks + 1]])
        lasts = np.concatenate([seqs[breaks], seqs[-1:]])
        return list(zip(firsts.tolist(), lasts.tolist()))

    def has_seq(self, seq: int) -> bool:
        """Whether ``seq`` is durably stored (O(1); prefer it to ``raw_seqs()`` on the hot path)."""
        with self._state:
            return seq in self._seqs

    def raw_count(self) -> int:
        """Number of raw frames durably stored."""
        with self._state:
            return len(self._seqs)

    def read_raw(self, index: FrameIndex) -> np.ndarray:
        """The raw frame at ``index`` (written, even if not yet published); :class:`FrameNotStored` if absent."""
        key: Key = (index.p, index.t, index.c, index.z)
        with self._state:
            if self._raw_seq(key) < 0:
                raise FrameNotStored(f"no raw frame at t={index.t} p={index.p} c={index.c} z={index.z} in {self.path}")
            img = self._images[(index.p, _KIND_RAW)]
        path = img.chunk_path(index.t, index.c, index.z)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise _oserror(exc, "reading a raw frame", path) from exc
        return self._codec.decode(data)

    # ------------------------------------------------------------------ restored
    def write_restored(
        self,
        items: Sequence[tuple[FrameIndex, np.ndarray, np.ndarray | None]],
        info: DenoiserInfo,
        mode: Literal["live", "backfill"],
    ) -> None:
        """Write restored frames (raw's dtype) and optional float32 uncertainty maps; record each frame's status.

        Same order as raw: chunks (+ fsync), records in ``restored.jsonl`` (+ fsync), then the published
        shape of ``restored`` grows to its contiguous complete prefix.
        """
        self._check_open()
        if mode not in ("live", "backfill"):
            raise StoreError(f"restoration mode must be 'live' or 'backfill', got {mode!r}")
        if not items:
            return
        with self._restored_lock:
            with self._state:
                for index, frame, unc in items:
                    key = (index.p, index.t, index.c, index.z)
                    if self._raw_seq(key) < 0:
                        raise StoreError(
                            f"cannot store a restored frame at {index.model_dump()}: its raw frame is not in the store "
                            "(restore only frames that write_raw has stored)"
                        )
                    if tuple(frame.shape) != self.frame_shape or np.dtype(frame.dtype) != self.restored_dtype:
                        raise StoreError(
                            f"restored frame at {index.model_dump()} is {tuple(frame.shape)} {frame.dtype}; it must "
                            f"be {self.frame_shape} {self.restored_dtype.name} (storage.restored_dtype)"
                        )
                    if unc is not None and tuple(unc.shape) != self.frame_shape:
                        raise StoreError(f"uncertainty map at {index.model_dump()} is {unc.shape}, not {self.frame_shape}")
            try:
                self._write_restored_batch(items, info, mode)
            except OSError as exc:
                raise _oserror(exc, "writing restored frames", exc.filename or self.path) from exc

    def _model_id(self, info: DenoiserInfo) -> int:
        entry = {
            "name": info.name,
            "version": info.version,
            "checksum": info.checksum,
            "parameters": jsonable(info.parameters),
            "device": info.device,
            "tile_size": info.tile_size,
            "has_uncertainty": info.has_uncertainty,
        }
        for i, m in enumerate(self._models):
            if m == entry:
                return i
        self._append(self._restored_log, [json.dumps({"kind": "model", "id": len(self._models), "info": entry})])
        with self._state:
            self._models.append(entry)
        self._update_provenance()
        return len(self._models) - 1

    def _write_restored_batch(
        self, items: Sequence[tuple[FrameIndex, np.ndarray, np.ndarray | None]], info: DenoiserInfo, mode: str
    ) -> None:
        model = self._model_id(info)
        dirs: set[str] = set()
        jobs = []
        for index, frame, unc in items:
            rest = self._images[(index.p, _KIND_RESTORED)]
            exists = self._prepare_chunk_dir(rest, index.t, index.c, index.z, dirs)
            jobs.append((self._restored_codec, rest.chunk_path(index.t, index.c, index.z), frame, exists))
            if unc is not None:
                if (index.p, _KIND_UNCERTAINTY) not in self._images:
                    with self._state:
                        self._ensure_uncertainty(index.p)
                uimg = self._images[(index.p, _KIND_UNCERTAINTY)]
                uexists = self._prepare_chunk_dir(uimg, index.t, index.c, index.z, dirs)
                jobs.append((self._unc_codec, uimg.chunk_path(index.t, index.c, index.z), unc, uexists))
        # written in this (restore) thread: the shared pool stays free for the raw path
        for job in jobs:
            self._write_chunk(*job)
        if self.cfg.fsync:
            for d in dirs:
                fsync_dir(d)
        now = time.time()
        lines = [
            json.dumps(
                {"t": i.t, "p": i.p, "c": i.c, "z": i.z, "mode": mode, "model": model, "uncertainty": u is not None, "written": now},
                separators=(",", ":"),
            )
            for i, _, u in items
        ]
        self._append(self._restored_log, lines)
        touched: set[tuple[int, str]] = set()
        with self._state:
            for index, frame, unc in items:
                key = (index.p, index.t, index.c, index.z)
                self._note_restored(key, STATUS_CODES[mode], model, unc is not None)
                touched.add((index.p, _KIND_RESTORED))
                if unc is not None:
                    uimg = self._images[(index.p, _KIND_UNCERTAINTY)]
                    touched.add((index.p, _KIND_UNCERTAINTY))
                    if index.c not in uimg.windows:
                        uimg.windows[index.c] = ngff.contrast_window(unc)
        for k in touched:
            self._publish(self._images[k])

    def unrestored(self, limit: int | None = None) -> list[FrameIndex]:
        """Raw frames written but not restored, in acquisition (seq) order; the first ``limit`` only."""
        if limit is not None and limit <= 0:
            return []
        rows: list[np.ndarray] = []
        with self._state:
            # the restore loop asks for a batch every idle turn: visit blocks by their lowest pending seq and
            # stop once no further block can hold one of the first `limit`
            kth: int | None = None
            for low, (p, bn) in sorted((self._lowest_pending(b), b) for b in self._pending_blocks):
                if kth is not None and low > kth:
                    break
                blk = self._cells[p].block(bn)
                assert blk is not None
                rows.append(_rows_where(blk, _pending_mask(blk), p, bn))
                if limit is not None and sum(len(r) for r in rows) >= limit:
                    kth = int(np.partition(np.concatenate(rows)[:, 0], limit - 1)[limit - 1])
        return _indices_by_seq(rows, limit)

    def seq_of(self, index: FrameIndex) -> int:
        """The sequence number of the raw frame stored at ``index`` (FrameNotStored if none)."""
        with self._state:
            seq = self._raw_seq((index.p, index.t, index.c, index.z))
        if seq < 0:
            raise FrameNotStored(f"no raw frame at {index.model_dump()}")
        return seq

    def unrestored_count(self) -> int:
        """How many raw frames lack a restoration, in O(1)."""
        with self._state:
            return self._n_pending

    def raw_indices(self) -> list[FrameIndex]:
        """Every raw frame written, in acquisition (seq) order."""
        with self._state:
            rows = [
                _rows_where(blk, blk["seq"] >= 0, p, bn)
                for p, cells in self._cells.items()
                for bn, blk in cells.sorted_blocks()
            ]
        return _indices_by_seq(rows, None)

    def restored_count(self) -> int:
        """Frames with a stored restoration."""
        with self._state:
            return sum(self._status_n)

    def _update_provenance(self) -> None:
        with self._state:
            counts = self._status_counts()
            models = list(self._models)
            rests = [img for (p, kind), img in self._images.items() if kind in (_KIND_RESTORED, _KIND_UNCERTAINTY)]
        prov = {
            "kind": None,
            "lowdose_version": self.lowdose_version,
            "models": models,
            "model": models[-1] if models else None,
            "policy": self.policy,
            "status_counts": counts,
            "status_codes": STATUS_CODES,
            "status_table": "../lowdose/tables/restored_status (per raw frame row; written at finalize)",
            "model_table": "../lowdose/tables/restored_model (index into models, -1: not restored)",
            "frame_records": "../lowdose/restored.jsonl",
        }
        for img in rests:
            with img.pub_lock:
                attrs = img.group_meta["attributes"]
                attrs["lowdose"] = {**prov, "kind": img.kind, "position": img.p}
                _write_json(img.dir / "zarr.json", img.group_meta)

    # ------------------------------------------------------------------ end
    def finalize(self, end: End | None) -> dict[str, Any]:
        """Publish the final shapes, write per-frame tables, return (and store) the run's summary.

        Final shapes cover every written index of every image of a position (identical across raw,
        restored, uncertainty); never-written indices read as 0 and are listed in the summary; frames not
        yet restored are ``pending`` in the status table. May be called again (e.g. after backfill).
        """
        self._check_open()
        with self._raw_lock, self._restored_lock:
            try:
                return self._finalize(end)
            except OSError as exc:
                raise _oserror(exc, "finalizing the run store", exc.filename or self.path) from exc

    def _finalize(self, end: End | None) -> dict[str, Any]:
        with self._state:
            self._finalized = True
            # from now on every image of a position is published with the raw extent (see _target_shape)
        # contrast windows from a few frames per channel
        self._final_windows()
        for img in list(self._images.values()):
            self._publish(img)
        tables = self._write_tables()
        self._update_provenance()
        summary = self._summary(end, tables)
        root_json = self.path / "zarr.json"
        root = json.loads(root_json.read_text())
        root["attributes"]["lowdose"]["summary"] = summary
        root["attributes"]["lowdose"]["end"] = end.model_dump(mode="json") if end else None
        _write_json(root_json, jsonable(root), fsync=self.cfg.fsync)
        return summary

    def _final_windows(self) -> None:
        with self._state:
            picks = {
                (p, kind): _channel_picks(cells, kind)
                for p, cells in self._cells.items()
                for kind in (_KIND_RAW, _KIND_RESTORED)
            }
        for (p, kind), chans in picks.items():
            img = self._images[(p, kind)]
            for c, tz in chans.items():
                frames = [img.codec.decode(Path(img.chunk_path(t, c, z)).read_bytes()) for t, z in tz]
                win = ngff.contrast_window(np.stack(frames).reshape(-1, self.frame_shape[1]))
                with self._state:
                    img.windows[c] = win

    def _write_tables(self) -> dict[str, Any]:
        """Per-frame columns (one row per raw frame, seq order) as chunked 1-D zarr arrays."""
        with self._state:
            seqs = self._seqs.sorted()
        n = len(seqs)
        cols: dict[str, np.ndarray] = {name: np.zeros(n, np.int32) for name in ("t", "p", "c", "z")}
        cols.update({name: np.full(n, np.nan) for name in ("timestamp", "elapsed_ms", "exposure_ms", "written")})
        found = np.zeros(n, dtype=bool)
        # streamed in slices: a long run's records, all parsed at once, would take GBs
        with open(self.path / "lowdose" / "frames.jsonl", "rb") as f:
            recs: list[dict[str, Any]] = []
            for line in f:
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    continue
                if len(recs) == _TABLE_CHUNK:
                    _fill_rows(recs, seqs, cols, found)
                    recs = []
            _fill_rows(recs, seqs, cols, found)
        if not found.all():  # a seq whose record became unreadable: no row, as it has no columns
            seqs = seqs[found]
            cols = {name: col[found] for name, col in cols.items()}
            n = len(seqs)
        status = np.zeros(n, np.uint8)
        model = np.full(n, -1, np.int16)
        with self._state:
            for rows, p, bn in _group_by_block(cols["p"], cols["t"]):
                cells = self._cells.get(p)
                blk = None if cells is None else cells.block(bn)
                if blk is not None:
                    cell = blk[cols["t"][rows] % _BLOCK_T, cols["c"][rows], cols["z"][rows]]
                    status[rows] = cell["status"]
                    model[rows] = cell["model"]
        columns = {
            "seq": seqs,
            **cols,
            "restored_status": status,
            "restored_model": model,
        }
        store = LocalStore(self.path)
        for name, values in columns.items():
            arr = zarr.create_array(
                store=store,
                name=f"lowdose/tables/{name}",
                shape=values.shape,
                chunks=(max(1, min(_TABLE_CHUNK, n)),),
                dtype=values.dtype,
                fill_value=0,
                overwrite=True,
                zarr_format=3,
                attributes={"rows": "one per raw frame, ordered by seq", **({"codes": STATUS_CODES} if name == "restored_status" else {})},
            )
            if n:
                arr[:] = values
        return {"path": "lowdose/tables", "rows": n, "columns": list(columns)}

    def _summary(self, end: End | None, tables: dict[str, Any]) -> dict[str, Any]:
        with self._state:
            seqs = self._seqs.sorted()
            expected = end.frames if end is not None else (int(seqs[-1]) + 1 if len(seqs) else 0)
            inside = seqs[seqs < expected]
            images = {}
            missing_idx: list[list[int]] = []
            n_missing_idx = 0
            for (p, kind), img in sorted(self._images.items()):
                images[img.name] = {"shape": list(img.meta["shape"]), "dtype": img.codec.dtype.name, "frames": img.frames}
                if kind == _KIND_RAW:
                    t_n, c_n, z_n = img.meta["shape"][:3]
                    n_missing_idx += t_n * c_n * z_n - img.frames
                    if len(missing_idx) < _MAX_LISTED and n_missing_idx:
                        listed = _missing_indices(self._cells[p], (t_n, c_n, z_n), _MAX_LISTED - len(missing_idx))
                        missing_idx.extend([t, p, c, z] for t, c, z in listed)
            return jsonable(
                {
                    "run": self.start.run,
                    "path": str(self.path),
                    "frames_expected": expected,
                    "frames_written": len(seqs),
                    "frames_restored": sum(self._status_n),
                    "restoration": self._status_counts(),
                    "missing_seqs": _gaps(inside, expected),
                    "missing_seq_count": expected - len(inside),
                    "missing_indices": missing_idx,  # [t, p, c, z], first 1000
                    "missing_index_count": n_missing_idx,
                    "end_reason": end.reason if end else None,
                    "images": images,
                    "tables": tables,
                    "finalized_at": datetime.now(timezone.utc).isoformat(),
                }
            )

    def close(self) -> None:
        """Close the record files and the worker pool. Does not finalize. Idempotent."""
        if self._closed:
            return
        with self._raw_lock, self._restored_lock:
            self._closed = True
            for fh in (self._frames_log, self._restored_log):
                if fh is not None:
                    fh.close()
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the run store {self.path} is closed; RunStore.open() it again")


def _gaps(seqs: np.ndarray, end: int) -> list[list[int]]:
    """Inclusive [first, last] ranges of 0..end-1 missing from ``seqs`` (ascending, unique, all < end)."""
    before = np.concatenate([[-1], seqs])
    after = np.concatenate([seqs, [end]])
    gap = np.flatnonzero(after - before > 1)
    return np.stack([before[gap] + 1, after[gap] - 1], axis=1).tolist()


def _rows_where(blk: np.ndarray, mask: np.ndarray, p: int, bn: int) -> np.ndarray:
    """(seq, p, t, c, z) rows, int64, of a block's cells in ``mask``."""
    tt, cc, zz = np.nonzero(mask)
    return np.stack([blk["seq"][tt, cc, zz], np.full_like(tt, p), tt + bn * _BLOCK_T, cc, zz], axis=1).astype(np.int64)


def _indices_by_seq(rows: list[np.ndarray], limit: int | None) -> list[FrameIndex]:
    if not rows:
        return []
    table = np.concatenate(rows)
    table = table[np.argsort(table[:, 0], kind="stable")[:limit]]
    return [FrameIndex(p=p, t=t, c=c, z=z) for _, p, t, c, z in table.tolist()]


def _channel_picks(cells: _Cells, kind: str) -> dict[int, list[tuple[int, int]]]:
    """Per channel, the (t, z) of its first, middle and last frame of ``kind`` in (t, z) order."""
    blocks = cells.sorted_blocks()
    if not blocks:
        return {}
    masks = [_present(blk, kind) for _, blk in blocks]
    per = np.stack([m.sum(axis=(0, 2)) for m in masks])  # frames per block and channel
    ends = np.cumsum(per, axis=0)
    out: dict[int, list[tuple[int, int]]] = {}
    for c in np.flatnonzero(ends[-1]).tolist():
        n = int(ends[-1, c])
        for k in sorted({0, n // 2, n - 1}):
            b = int(np.searchsorted(ends[:, c], k, side="right"))
            tt, zz = np.nonzero(masks[b][:, c, :])
            j = k - int(ends[b, c] - per[b, c])
            out.setdefault(c, []).append((blocks[b][0] * _BLOCK_T + int(tt[j]), int(zz[j])))
    return out


def _missing_indices(cells: _Cells, shape: tuple[int, int, int], limit: int) -> list[tuple[int, int, int]]:
    """The first ``limit`` (t, c, z) within ``shape`` that have no raw frame, in (t, c, z) order."""
    t_n, c_n, z_n = shape
    out: list[tuple[int, int, int]] = []
    bn = 0
    # every absent block holds a missing index, so this ends after at most `limit` of them
    while len(out) < limit and bn * _BLOCK_T < t_n:
        rows = min(_BLOCK_T, t_n - bn * _BLOCK_T)
        blk = cells.block(bn)
        need = limit - len(out)
        if blk is None:
            tcz = np.stack(np.unravel_index(np.arange(min(need, rows * c_n * z_n)), (rows, c_n, z_n)), axis=1)
        else:
            tcz = np.argwhere(blk["seq"][:rows, :c_n, :z_n] < 0)[:need]
        out.extend((bn * _BLOCK_T + t, c, z) for t, c, z in tcz.tolist())
        bn += 1
    return out


def _fill_rows(recs: list[dict[str, Any]], seqs: np.ndarray, cols: dict[str, np.ndarray], found: np.ndarray) -> None:
    """Scatter frame records into their seq's row; a seq's later record wins (a resent frame's, say)."""
    if not recs or not len(seqs):
        return
    rec_seqs = np.array([r["seq"] for r in recs], dtype=np.int64)
    rows = np.minimum(np.searchsorted(seqs, rec_seqs), len(seqs) - 1)
    keep = np.flatnonzero(seqs[rows] == rec_seqs)[::-1]  # stored seqs only, latest first
    keep = keep[np.unique(rows[keep], return_index=True)[1]]
    rows = rows[keep]
    found[rows] = True
    for name, col in cols.items():
        col[rows] = np.array([recs[i].get(name) for i in keep.tolist()], dtype=float if col.dtype.kind == "f" else col.dtype)


def _group_by_block(ps: np.ndarray, ts: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
    """Rows grouped by (p, t's block): (rows, p, block) for each group."""
    if not len(ps):
        return []
    bns = ts.astype(np.int64) // _BLOCK_T
    order = np.lexsort((bns, ps))
    p_s, bn_s = ps[order], bns[order]
    starts = np.flatnonzero(np.concatenate([[True], (p_s[1:] != p_s[:-1]) | (bn_s[1:] != bn_s[:-1])]))
    stops = np.append(starts[1:], len(order))
    return [(order[a:b], int(p_s[a]), int(bn_s[a])) for a, b in zip(starts.tolist(), stops.tolist())]
