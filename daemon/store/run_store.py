"""The run store the daemon uses: :class:`RunStore`, frames in shards (or one file each) plus append-only records.

It composes the parts of this package and holds the locks; the layout on disk and the durability
contract it keeps are in the package docstring (:mod:`lowdose.daemon.store`).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from .config import StorageConfig
from lowdose.plugins.denoisers.interface import DenoiserInfo
from lowdose.wire.durable import fsync_dir
from lowdose.wire.protocol import End, Frame, FrameIndex, Start

from . import finalize, ngff, records
from .chunks import ChunkCodec, ChunkFiles
from .index import KIND_RAW, KIND_RESTORED, KIND_UNCERTAINTY, MAX_SEQ_OR_T, STATUS_CODES, Key, RunIndex
from .index import indices_by_seq, seq_ranges
from .interface import FrameNotStored, StoreError, store_error
from .layout import Layout, read_attrs
from .plan import StoragePlan, plan_for
from .records import RecordLog
from .shards import ShardFiles

log = logging.getLogger(__name__)


class RunStore:
    """One OME-Zarr (NGFF 0.5, Zarr v3) store per run, raw and restored images side by side.

    Thread-safety: ``write_raw`` (writer thread) and ``write_restored`` / ``read_raw`` / ``unrestored``
    (restore thread) may run concurrently. Each write path holds its own lock for its whole batch; shared
    bookkeeping (the index, the images' windows, the models) sits behind a short state lock, so raw chunk
    I/O never waits for restored chunk I/O.
    """

    path: Path

    def __init__(self, path: Path, start: Start, cfg: StorageConfig, lowdose_version: str, policy: str | None,
                 plan: StoragePlan):
        """Use :meth:`open`."""
        self.path = path
        self.plan = plan
        self.start = start
        self.cfg = cfg
        self.frame_shape: tuple[int, int] = (int(start.shape[0]), int(start.shape[1]))
        self.dtype = np.dtype(start.dtype)
        raw_codec = ChunkCodec(self.dtype, self.frame_shape, cfg.compression, cfg.compression_level)
        unc_codec = ChunkCodec(np.dtype("float32"), self.frame_shape, cfg.compression, cfg.compression_level)
        # float32 keeps the sub-ADU precision a model recovers at a few photons per pixel
        restored_codec = unc_codec if cfg.restored_dtype == "float32" else raw_codec
        self.restored_dtype = restored_codec.dtype.newbyteorder("=")
        self._state = threading.Lock()
        self._raw_lock = threading.Lock()
        self._restored_lock = threading.Lock()
        sizes = start.sizes
        self._index = RunIndex((max(1, sizes.get("c", 1) or 1), max(1, sizes.get("z", 1) or 1)))
        codecs = {KIND_RAW: raw_codec, KIND_RESTORED: restored_codec, KIND_UNCERTAINTY: unc_codec}
        self._layout = Layout(path, start, cfg, lowdose_version, policy, codecs, self._index, self._state, plan)
        # the one part the two layouts differ in: where a frame's bytes go
        self._chunks: ChunkFiles | ShardFiles = (
            ShardFiles(cfg.fsync, plan.shard_frames) if plan.layout == "sharded" else ChunkFiles(cfg.fsync))
        records_dir = plan.records_dir(path)
        self._frames_log = RecordLog(records_dir / "frames.jsonl", cfg.fsync)
        self._restored_log = RecordLog(records_dir / "restored.jsonl", cfg.fsync)
        self._models: list[dict[str, Any]] = []
        self._closed = False

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

        On reopen the store's own records (``lowdose/records/frames.jsonl``, ``restored.jsonl``) say which
        frames are written and which are restored, and where their bytes are in their shards; a torn last
        line is dropped (that frame is resent), and every shard's index is rebuilt from them.
        Reopening with a different frame shape/dtype raises :class:`StoreError`, and so does a disk-full or
        permission error. ``policy`` (``fifo``/``latest``) is recorded as provenance of ``restored``.
        """
        return cls._open_at(Path(output_dir) / f"{start.run}.ome.zarr", start, cfg, lowdose_version, policy)

    @classmethod
    def _open_at(cls, path: Path, start: Start, cfg: StorageConfig, lowdose_version: str,
                 policy: str | None) -> "RunStore":
        cfg = _keep_declared_restored_dtype(path, start, cfg)
        store = cls(path, start, cfg, lowdose_version, policy, plan_for(path, start, cfg))
        try:
            store._open()
        except OSError as exc:
            store._chunks.shutdown(wait=False)
            raise store_error(exc, f"opening the run store for run {start.run!r}", exc.filename or path) from exc
        except BaseException:
            store._chunks.shutdown(wait=False)
            raise
        return store

    @classmethod
    def reopen(cls, path: Path, cfg: StorageConfig, lowdose_version: str, *, renamed_ok: bool = False) -> "RunStore":
        """Open an existing run store from its own records (offline backfill, daemon resume).

        The run is the one the store's own metadata names. A daemon finds runs by folder name, so it
        opens only ``<run>.ome.zarr``; ``renamed_ok`` opens a renamed copy too (offline tools).
        """
        path = Path(path)
        try:
            attrs = read_attrs(path)
            start = Start.model_validate(attrs["start"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path} is not a lowdose run store ({exc}); give the path of a <run>.ome.zarr") from None
        if path.name != f"{start.run}.ome.zarr" and not renamed_ok:
            raise StoreError(f"{path} holds run {start.run!r}; its folder must be named {start.run}.ome.zarr")
        return cls._open_at(path, start, cfg, lowdose_version, attrs.get("policy"))

    @staticmethod
    def read_state(path: Path) -> dict[str, Any]:
        """The root's lowdose attributes (``summary`` and ``end`` appear once finalized)."""
        return read_attrs(path)

    def _open(self) -> None:
        self._layout.open_root()
        frames = self._frames_log.recover()
        restored = self._restored_log.recover()
        self._ensure_position(0)
        _recover(self, frames, restored)
        self._frames_log.open()
        self._restored_log.open()
        if self.cfg.fsync:
            fsync_dir(self._frames_log.path.parent)
        for img in list(self._layout.images.values()):
            self._layout.publish(img, force=True)

    def _ensure_position(self, p: int) -> None:
        if self._layout.has(p, KIND_RAW):
            return
        self._index.add_position(p)
        self._layout.add_position(p)

    # ------------------------------------------------------------------ raw
    def write_raw(self, frames: Sequence[tuple[Frame, np.ndarray]]) -> list[int]:
        """Write a batch of frames (arrival order) durably; return the seqs now durably stored.

        Order: frame data, appended to shards or as chunk files (+ fsync of files and new directory
        entries when ``storage.fsync``), then the
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
                    if frame.seq not in self._index.seqs:
                        todo.append((frame, pixels))
            if not todo:
                return out
            for frame, pixels in todo:
                _check_raw(self.start, frame, pixels, self.frame_shape, self.dtype)
            try:
                self._write_raw_batch(todo)
            except OSError as exc:
                raise store_error(exc, "writing raw frames", exc.filename or self.path) from exc
            return out

    def _write_raw_batch(self, todo: list[tuple[Frame, np.ndarray]]) -> None:
        for p in sorted({f.index.p for f, _ in todo} - self._layout.positions()):
            with self._state:
                self._ensure_position(p)
        # data, then the records that name it, then the count (docs/design.md rule 4): each step only once
        # the one before it is durable, so a kill at any point leaves nothing visible that is not stored
        winners = _last_per_index(todo)
        where = self._chunks.write([self._layout.job(KIND_RAW, f.index, px) for f, px in winners], parallel=True)
        at = {(f.index.p, f.index.t, f.index.c, f.index.z): w for (f, _), w in zip(winners, where)}
        # Every seq gets its record (each is acked and must stay stored after a reopen), in arrival
        # order, so replaying them leaves each index naming its winner, the seq whose pixels are there.
        self._frames_log.append(records.frame_lines(todo, [at[(f.index.p, f.index.t, f.index.c, f.index.z)]
                                                           for f, _ in todo]))
        windows = self._layout.first_windows(winners)
        grown: set[int] = set()
        with self._state:
            for frame, _ in todo:
                i = frame.index
                key: Key = (i.p, i.t, i.c, i.z)
                if self._index.grow(key):
                    grown.add(i.p)
                prev = self._index.note_raw(key, frame.seq)
                if prev >= 0 and prev != frame.seq:
                    log.warning("seq %d overwrote index %s (was seq %d)", frame.seq, key, prev)
            firsts = self._layout.adopt_windows(windows)
        self._layout.publish_raw({f.index.p for f, _ in todo}, grown, firsts)

    def raw_seqs(self) -> set[int]:
        """Seqs durably stored (a copy)."""
        with self._state:
            return set(self._index.seqs.sorted().tolist())

    def raw_seq_ranges(self) -> list[tuple[int, int]]:
        """Stored seqs as inclusive [first, last] ranges, ascending: what an ack carries.

        Computed on the compact seq set, so announcing a run of millions of frames does not build a
        Python set of them.
        """
        with self._state:
            seqs = self._index.seqs.sorted()
        return seq_ranges(seqs)

    def has_seq(self, seq: int) -> bool:
        """Whether ``seq`` is durably stored (O(1); prefer it to ``raw_seqs()`` on the hot path)."""
        with self._state:
            return seq in self._index.seqs

    def raw_count(self) -> int:
        """Number of raw frames durably stored."""
        with self._state:
            return len(self._index.seqs)

    def read_raw(self, index: FrameIndex) -> np.ndarray:
        """The raw frame at ``index`` (written, even if not yet published); :class:`FrameNotStored` if absent."""
        key: Key = (index.p, index.t, index.c, index.z)
        with self._state:
            if self._index.seq_at(key) < 0:
                raise FrameNotStored(f"no raw frame at t={index.t} p={index.p} c={index.c} z={index.z} in {self.path}")
            img = self._layout.images[(index.p, KIND_RAW)]
        try:
            data = self._chunks.read_bytes(img.array_dir, index.t, index.c, index.z)
        except OSError as exc:
            raise store_error(exc, "reading a raw frame", exc.filename or img.array_dir) from exc
        return img.codec.decode(data)

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
                    stored = self._index.seq_at((index.p, index.t, index.c, index.z)) >= 0
                    _check_restored(index, frame, unc, stored, self.frame_shape, self.restored_dtype)
            try:
                self._write_restored_batch(items, info, mode)
            except OSError as exc:
                raise store_error(exc, "writing restored frames", exc.filename or self.path) from exc

    def _model_id(self, info: DenoiserInfo) -> int:
        entry = records.model_entry(info)
        for i, m in enumerate(self._models):
            if m == entry:
                return i
        self._restored_log.append([records.model_line(len(self._models), entry)])
        with self._state:
            self._models.append(entry)
        self._update_provenance()
        return len(self._models) - 1

    def _write_restored_batch(
        self, items: Sequence[tuple[FrameIndex, np.ndarray, np.ndarray | None]], info: DenoiserInfo, mode: str
    ) -> None:
        model = self._model_id(info)
        jobs = []
        for index, frame, unc in items:
            jobs.append(self._layout.job(KIND_RESTORED, index, frame))
            if unc is not None:
                if not self._layout.has(index.p, KIND_UNCERTAINTY):
                    with self._state:
                        self._layout.ensure_uncertainty(index.p)
                jobs.append(self._layout.job(KIND_UNCERTAINTY, index, unc))
        where = iter(self._chunks.write(jobs, parallel=False))
        places = [(next(where), next(where) if unc is not None else None) for _, _, unc in items]
        self._restored_log.append(records.restored_lines(items, mode, model, places))
        touched: set[tuple[int, str]] = set()
        with self._state:
            for index, frame, unc in items:
                self._index.note_restored((index.p, index.t, index.c, index.z), STATUS_CODES[mode], model, unc is not None)
                touched.add((index.p, KIND_RESTORED))
                if unc is not None:
                    touched.add((index.p, KIND_UNCERTAINTY))
                    self._layout.window_from(self._layout.images[(index.p, KIND_UNCERTAINTY)], index.c, unc)
        for k in touched:
            self._layout.publish(self._layout.images[k])

    def unrestored(self, limit: int | None = None) -> list[FrameIndex]:
        """Raw frames written but not restored, in acquisition (seq) order; the first ``limit`` only."""
        if limit is not None and limit <= 0:
            return []
        with self._state:
            rows = self._index.pending_rows(limit)
        return indices_by_seq(rows, limit)

    def seq_of(self, index: FrameIndex) -> int:
        """The sequence number of the raw frame stored at ``index`` (FrameNotStored if none)."""
        with self._state:
            seq = self._index.seq_at((index.p, index.t, index.c, index.z))
        if seq < 0:
            raise FrameNotStored(f"no raw frame at {index.model_dump()}")
        return seq

    def is_restored(self, index: FrameIndex) -> bool:
        """Whether the frame at ``index`` has a stored restoration (False when no raw frame is there)."""
        with self._state:
            return self._index.restored_at((index.p, index.t, index.c, index.z))

    def unrestored_count(self) -> int:
        """How many raw frames lack a restoration, in O(1)."""
        with self._state:
            return self._index.pending

    def raw_indices(self) -> list[FrameIndex]:
        """Every raw frame written, in acquisition (seq) order."""
        with self._state:
            rows = self._index.raw_rows()
        return indices_by_seq(rows, None)

    def restored_count(self) -> int:
        """Frames with a stored restoration."""
        with self._state:
            return self._index.restored_count()

    def _update_provenance(self) -> None:
        with self._state:
            counts = self._index.status_counts()
            models = list(self._models)
            images = self._layout.provenance_images()
        self._layout.write_provenance(images, counts, models)

    # ------------------------------------------------------------------ end
    def record_end(self, end: End) -> None:
        """Keep the run's ``End`` in the root's attributes (fsynced when ``storage.fsync``).

        Called before the end can be acknowledged (rule 2): a daemon killed after the hook heard
        ``finished`` finds the end on restart and finalizes the run, which no hook will end again.
        """
        self._check_open()
        try:
            self._layout.record_end(end)
        except OSError as exc:
            raise store_error(exc, "recording the end of the run", exc.filename or self.path) from exc

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
                raise store_error(exc, "finalizing the run store", exc.filename or self.path) from exc

    def _finalize(self, end: End | None) -> dict[str, Any]:
        with self._state:
            self._layout.finalized = True
        finalize.contrast_windows(self._state, self._index, self._layout, self._chunks.read_bytes)
        for img in list(self._layout.images.values()):
            self._layout.publish(img)
        tables = finalize.write_tables(self.path, self._state, self._index, self._frames_log.path)
        if not (self.start.frame_interval_s or 0) > 0:
            interval = finalize.measured_frame_interval(self.path)
            if interval is not None:
                self._layout.set_time_step(interval)
        self._update_provenance()
        with self._state:
            summary = finalize.summary(self._index, self._layout, end, tables)
        self._layout.write_end(summary, end)
        return summary

    def close(self) -> None:
        """Close the record files and the worker pool. Does not finalize. Idempotent."""
        if self._closed:
            return
        with self._raw_lock, self._restored_lock:
            self._closed = True
            self._frames_log.close()
            self._restored_log.close()
            self._chunks.shutdown(wait=True)

    @property
    def closed(self) -> bool:
        """Closed by :meth:`close` (its files and threads released); open it again to write."""
        return self._closed

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the run store {self.path} is closed; RunStore.open() it again")


def _last_per_index(frames: list[tuple[Frame, np.ndarray]]) -> list[tuple[Frame, np.ndarray]]:
    """One writer per chunk: of the frames of a batch that share an index, only the last to arrive.

    Two writes to one chunk file on the pool race (neither sees the other's file, both truncate it in
    place), and the file may end with the loser's pixels while the records name the winner.
    """
    last: dict[tuple[int, int, int, int], int] = {}
    for k, (f, _) in enumerate(frames):
        last[(f.index.p, f.index.t, f.index.c, f.index.z)] = k
    if len(last) == len(frames):
        return frames
    keep = set(last.values())
    return [item for k, item in enumerate(frames) if k in keep]


def _recover(store: RunStore, frames: list[dict[str, Any]], restored: list[dict[str, Any]]) -> None:
    """Rebuild the index (and the shards' indexes) from the records, the durable truth: a record whose
    frame is not on disk is dropped, and that frame is resent by its hook (rule 2)."""
    n = store.plan.shard_frames
    located: dict[tuple[str, int, int, int], Any] = {}
    for rec in frames:
        key: Key = (rec["p"], rec["t"], rec["c"], rec["z"])
        store._ensure_position(key[0])
        a = store._layout.images[(key[0], KIND_RAW)].array_dir
        if not store._chunks.present(rec.get("at"), a, n, key[1], key[2], key[3]):
            log.warning("frame seq %d has a record but no data; it will be resent", rec["seq"])
            continue
        store._index.grow(key)
        store._index.note_raw(key, rec["seq"])
        located[(a, key[1], key[2], key[3])] = rec.get("at")
    for rec in restored:
        if rec.get("kind") == "model":
            store._models.append(rec["info"])
            continue
        key = (rec["p"], rec["t"], rec["c"], rec["z"])
        if store._index.seq_at(key) < 0:
            continue
        a = store._layout.images[(key[0], KIND_RESTORED)].array_dir
        if not store._chunks.present(rec.get("at"), a, n, key[1], key[2], key[3]):
            continue
        unc = bool(rec.get("uncertainty"))
        if unc:
            store._layout.ensure_uncertainty(key[0])
            u = store._layout.images[(key[0], KIND_UNCERTAINTY)].array_dir
            unc = store._chunks.present(rec.get("unc_at"), u, n, key[1], key[2], key[3])
            if unc:
                located[(u, key[1], key[2], key[3])] = rec.get("unc_at")
        located[(a, key[1], key[2], key[3])] = rec.get("at")
        store._index.note_restored(key, STATUS_CODES[rec["mode"]], rec["model"], unc)
    store._chunks.rebuild([img.array_dir for img in store._layout.images.values()], located)
    if store._models:
        store._update_provenance()


def _check_raw(start: Start, frame: Frame, pixels: np.ndarray, shape: tuple[int, int], dtype: np.dtype) -> None:
    if frame.run != start.run:
        raise StoreError(f"frame seq {frame.seq} belongs to run {frame.run!r}, not {start.run!r}")
    if max(frame.seq, frame.index.t) >= MAX_SEQ_OR_T:  # the protocol caps both; a Python caller need not
        raise StoreError(
            f"frame seq {frame.seq} at t={frame.index.t}: seq and t must be below 2**62 (the hook numbers frames "
            "and time points from 0)"
        )
    if tuple(pixels.shape) != shape or np.dtype(pixels.dtype) != dtype:
        raise StoreError(
            f"frame seq {frame.seq} is {tuple(pixels.shape)} {pixels.dtype} but run {start.run!r} stores "
            f"{shape} {dtype.name}; the hook must send frames of the announced shape and dtype"
        )


def _check_restored(
    index: FrameIndex, frame: np.ndarray, unc: np.ndarray | None, stored: bool, shape: tuple[int, int], dtype: np.dtype
) -> None:
    if not stored:
        raise StoreError(
            f"cannot store a restored frame at {index.model_dump()}: its raw frame is not in the store "
            "(restore only frames that write_raw has stored)"
        )
    if tuple(frame.shape) != shape or np.dtype(frame.dtype) != dtype:
        raise StoreError(
            f"restored frame at {index.model_dump()} is {tuple(frame.shape)} {frame.dtype}; it must "
            f"be {shape} {dtype.name} (storage.restored_dtype)"
        )
    if unc is not None and tuple(unc.shape) != shape:
        raise StoreError(f"uncertainty map at {index.model_dump()} is {unc.shape}, not {shape}")


def declared_restored_dtype(path: Path) -> np.dtype | None:
    """The dtype the store's restored image of position 0 declares, or None if it has none yet."""
    meta = Path(path) / ngff.image_names(0)[1] / "0" / "zarr.json"
    try:
        return np.dtype(json.loads(meta.read_text())["data_type"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _keep_declared_restored_dtype(path: Path, start: Start, cfg: StorageConfig) -> StorageConfig:
    """An existing store keeps the restored dtype it declared, whatever the config says now.

    A restored image whose chunks disagree with its declared dtype is unreadable, so a daemon
    restarted with another ``storage.restored_dtype`` goes on in the store's own dtype (new runs
    get the new one); ``lowdose backfill`` refuses such a config instead (it would be a surprise).
    """
    declared = declared_restored_dtype(path)
    if declared is None:
        return cfg
    wanted = "input" if declared == np.dtype(start.dtype) else "float32"
    if wanted != cfg.restored_dtype:
        log.warning("%s keeps its restored dtype %s (storage.restored_dtype is %s)", path, declared,
                    cfg.restored_dtype)
        cfg = cfg.model_copy(update={"restored_dtype": wanted})
    return cfg
