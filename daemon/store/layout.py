"""The store's NGFF layout: the root group, the images of each position, and the shape a reader sees.

Metadata is created with zarr-python, so the tests can read everything back through zarr-python,
ome-zarr-py and both NGFF validators; the dicts themselves come from :mod:`.ngff`. Afterwards the layout
rewrites only ``zarr.json`` files, each replaced atomically: the array's, when its published shape grows
(after the data and the records, ``docs/design.md`` rule 4), and the group's, when its contrast windows
or provenance change.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import zarr
from zarr.storage import LocalStore

from lowdose.wire.durable import fsync_dir, write_file
from lowdose.wire.jsonsafe import jsonable
from lowdose.wire.protocol import End, Frame, FrameIndex, Start

from . import collection, ngff
from .chunks import ChunkCodec, ChunkJob
from .index import KIND_RAW, KIND_RESTORED, KIND_UNCERTAINTY, STATUS_CODES, RunIndex
from .interface import StoreError
from .plan import RECORDS, StoragePlan

if TYPE_CHECKING:
    from .config import StorageConfig


def write_json(path: Path, obj: Any, fsync: bool = False) -> None:
    write_file(path, json.dumps(obj, indent=2, allow_nan=False).encode(), fsync=fsync, atomic=True)


def read_attrs(path: Path) -> dict[str, Any]:
    """The root group's lowdose attributes."""
    return json.loads((Path(path) / "zarr.json").read_text())["attributes"]["lowdose"]


@dataclass
class Image:
    """One NGFF image group (raw, restored or uncertainty of one position) and its publication state."""

    name: str
    kind: str
    p: int
    dir: Path
    codec: ChunkCodec
    meta: dict[str, Any]  # the array's zarr.json
    group_meta: dict[str, Any]  # the group's zarr.json
    prefix: int = 0  # complete time points 0..prefix-1
    prefix_cz: tuple[int, int] = (0, 0)  # the C, Z the prefix was counted for
    windows: dict[int, tuple[float, float]] = field(default_factory=dict)
    pub_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def array_dir(self) -> str:
        return f"{self.dir}/0"


class Layout:
    """The groups and arrays of one run's store, and when each array's shape may grow.

    ``state`` is the store's state lock: what is published is computed from the index and the windows
    under it, and written outside it. ``images`` changes under it too.
    """

    def __init__(
        self,
        path: Path,
        start: Start,
        cfg: StorageConfig,
        lowdose_version: str,
        policy: str | None,
        codecs: dict[str, ChunkCodec],
        index: RunIndex,
        state: threading.Lock,
        plan: StoragePlan,
    ):
        self.path = path
        self.plan = plan
        self.start = start
        self.cfg = cfg
        self.lowdose_version = lowdose_version
        self.policy = policy
        self.frame_shape: tuple[int, int] = (int(start.shape[0]), int(start.shape[1]))
        self.dtype = np.dtype(start.dtype)
        self.codecs = codecs
        self.images: dict[tuple[int, str], Image] = {}
        self.finalized = False  # then every image of a position is published with the raw extent
        self.collection = False  # the root is a bioformats2raw.layout listing the images (stores since 0.1)
        self._index = index
        self._state = state
        self._root_lock = threading.Lock()  # the root's zarr.json is read, changed and replaced whole
        self._scale = ngff.scale(start.frame_interval_s, start.z_step_um, start.pixel_size_um)

    # ------------------------------------------------------------------ root
    def open_root(self) -> None:
        """Create the root and the ``lowdose`` group, or check that the existing root is this run's."""
        Path(self.path.parent).mkdir(parents=True, exist_ok=True)
        root_json = self.path / "zarr.json"
        if root_json.exists():
            self._check_existing(root_json)
        else:
            self._create_root()
        self.collection = "bioformats2raw.layout" in json.loads(root_json.read_text())["attributes"].get("ome", {})
        if not (self.path / "lowdose" / "zarr.json").exists():
            zarr.open_group(store=LocalStore(self.path), path="lowdose", mode="a", zarr_format=3)
        if self.plan.records == RECORDS and not (self.path / RECORDS / "zarr.json").exists():
            # a zero-length array whose folder holds the logs: no Zarr tool lists inside an array
            zarr.create_array(store=LocalStore(self.path), name=RECORDS, shape=(0,), dtype="uint8", zarr_format=3,
                              attributes={"lowdose": "append-only JSON-lines logs of lowdose: frames.jsonl, "
                                                     "restored.jsonl (not array data)"})

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
            "ome": collection.BF2RAW,
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
                    "layout": self.plan.layout,
                    "shard_frames": self.plan.shard_frames,
                    "chunks": "one frame per chunk (1, 1, 1, Y, X), unsharded" if self.plan.layout == "chunk_per_frame"
                    else f"one frame per inner chunk (1, 1, 1, Y, X), shards of {self.plan.shard_frames} time points",
                    "fsync": self.cfg.fsync,
                },
                "start": start.model_dump(mode="json"),
                "summary_metadata": start.summary,
                "sequence": start.sequence,
                "records": {"frames": f"{self.plan.records}/frames.jsonl", "restored": f"{self.plan.records}/restored.jsonl"},
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

    def write_end(self, summary: dict[str, Any], end: End | None) -> None:
        """Store the run's summary and End message in the root's attributes."""
        with self._root_lock:
            root_json = self.path / "zarr.json"
            root = json.loads(root_json.read_text())
            root["attributes"]["lowdose"]["summary"] = summary
            root["attributes"]["lowdose"]["end"] = end.model_dump(mode="json") if end else None
            write_json(root_json, jsonable(root), fsync=self.cfg.fsync)

    def record_end(self, end: End) -> bool:
        """Store the End alone in the root's attributes, durably; False if it was there already."""
        with self._root_lock:
            root_json = self.path / "zarr.json"
            root = json.loads(root_json.read_text())
            attrs = root["attributes"]["lowdose"]
            dumped = end.model_dump(mode="json")
            if attrs.get("end") == dumped:
                return False  # an End sent again after a reconnect costs no write
            attrs["end"] = dumped
            write_json(root_json, jsonable(root), fsync=self.cfg.fsync)
            if self.cfg.fsync:
                fsync_dir(self.path)  # the rename over the old zarr.json
            return True

    # ------------------------------------------------------------------ images
    def has(self, p: int, kind: str) -> bool:
        return (p, kind) in self.images

    def positions(self) -> set[int]:
        return {p for p, _ in self.images}

    def add_position(self, p: int) -> None:
        """The raw and restored images of position ``p``, created unless on disk (uncertainty: if on disk)."""
        raw, restored, unc = ngff.image_names(p)
        self.images[(p, KIND_RAW)] = self._image(raw, KIND_RAW, p)
        self.images[(p, KIND_RESTORED)] = self._image(restored, KIND_RESTORED, p)
        if (self.path / unc / "0" / "zarr.json").exists():
            self.ensure_uncertainty(p)
        self.update_series()

    def ensure_uncertainty(self, p: int) -> None:
        if (p, KIND_UNCERTAINTY) not in self.images:
            self.images[(p, KIND_UNCERTAINTY)] = self._image(ngff.image_names(p)[2], KIND_UNCERTAINTY, p)
            self.update_series()

    def update_series(self) -> None:
        """List every image in the root's ``OME`` group (the collection readers open)."""
        if not self.collection:
            return
        order = {KIND_RAW: 0, KIND_RESTORED: 1, KIND_UNCERTAINTY: 2}
        names = [img.name for (p, kind), img in sorted(self.images.items(), key=lambda kv: (kv[0][0], order[kv[0][1]]))]
        with self._root_lock:
            collection.write_series(self.path, names, self.cfg.fsync)

    def _image(self, name: str, kind: str, p: int) -> Image:
        codec = self.codecs[kind]
        gdir = self.path / name
        if not (gdir / "0" / "zarr.json").exists():
            c, z = self._index.sizes[p]
            labels = ngff.channel_labels(self.start.channel_names, c)
            attrs = {
                "ome": ngff.image_ome(name, self._scale, labels, codec.dtype, {}),
                "lowdose": {"kind": kind, "position": p, "frame_records": f"../{self.plan.records}/frames.jsonl"},
            }
            root = LocalStore(self.path)
            zarr.open_group(store=root, path=name, mode="a", zarr_format=3, attributes=jsonable(attrs))
            sharded = self.plan.layout == "sharded"
            zarr.create_array(
                store=root,
                name=f"{name}/0",
                shape=(0, c, z, *self.frame_shape),
                chunks=(1, 1, 1, *self.frame_shape),
                shards={"shape": (self.plan.shard_frames, 1, 1, *self.frame_shape), "index_location": "start"}
                if sharded else None,
                dtype=codec.dtype,
                compressors=codec.zarr_compressors(),
                fill_value=0,
                dimension_names=list(ngff.AXES),
                zarr_format=3,
                overwrite=False,
            )
            if sharded:
                _index_without_checksum(gdir / "0" / "zarr.json")
            if self.cfg.fsync:
                fsync_dir(self.path)
        meta = json.loads((gdir / "0" / "zarr.json").read_text())
        group_meta = json.loads((gdir / "zarr.json").read_text())
        return Image(name=name, kind=kind, p=p, dir=gdir, codec=codec, meta=meta, group_meta=group_meta)

    def job(self, kind: str, index: FrameIndex, pixels: np.ndarray) -> ChunkJob:
        """What the frame files (:mod:`.chunks`, :mod:`.shards`) need to write ``pixels`` of the ``kind`` image at ``index``."""
        img = self.images[(index.p, kind)]
        return (img.codec, img.array_dir, index.t, index.c, index.z, pixels)

    # ------------------------------------------------------------------ publishing
    def publish(self, img: Image, force: bool = False) -> None:
        """Rewrite the array's zarr.json if its shape (or the group's omero) changed. Data is already on disk."""
        with img.pub_lock:
            with self._state:
                shape = self._target_shape(img)
                labels = ngff.channel_labels(self.start.channel_names, shape[1])
                omero = ngff.omero(labels, img.codec.dtype, img.windows)
            if force or shape != img.meta["shape"]:
                img.meta["shape"] = shape
                write_json(img.dir / "0" / "zarr.json", img.meta)
            ome = img.group_meta["attributes"]["ome"]
            if force or ome.get("omero") != omero:
                ome["omero"] = omero
                write_json(img.dir / "zarr.json", img.group_meta)

    def _target_shape(self, img: Image) -> list[int]:
        """Published shape: complete prefix of time points (or everything written, once finalized). Under state."""
        c, z = self._index.sizes[img.p]
        if img.prefix_cz != (c, z):
            img.prefix, img.prefix_cz = 0, (c, z)
        img.prefix = self._index.complete_prefix(img.p, img.kind, img.prefix)
        t = img.prefix
        if self.finalized:
            t = max(t, self._index.t_end(img.p, KIND_RAW), self._index.t_end(img.p, img.kind))
        return [t, c, z, *self.frame_shape]

    def first_windows(self, frames: Sequence[tuple[Frame, np.ndarray]]) -> dict[tuple[int, int], tuple[float, float]]:
        """Contrast windows, by (p, c), from the first frame of each raw channel that has none yet.

        Computed outside the state lock (percentiles of a frame); :meth:`adopt_windows` then takes them.
        """
        windows: dict[tuple[int, int], tuple[float, float]] = {}
        for frame, pixels in frames:
            i = frame.index
            if i.c not in self.images[(i.p, KIND_RAW)].windows and (i.p, i.c) not in windows:
                windows[(i.p, i.c)] = ngff.contrast_window(pixels)
        return windows

    def set_time_step(self, seconds: float) -> None:
        """The ``t`` axis' scale of every image becomes ``seconds`` (the measured frame interval)."""
        self._scale = [seconds, *self._scale[1:]]
        for img in list(self.images.values()):
            with img.pub_lock:
                for ms in img.group_meta["attributes"]["ome"]["multiscales"]:
                    for ds in ms["datasets"]:
                        for tr in ds["coordinateTransformations"]:
                            if tr.get("type") == "scale":
                                tr["scale"][0] = seconds
                write_json(img.dir / "zarr.json", img.group_meta)

    def adopt_windows(self, windows: dict[tuple[int, int], tuple[float, float]]) -> list[tuple[Image, int]]:
        """Give raw images the windows of channels they lack; the (image, channel)s that got one. Under state."""
        firsts = []
        for (p, c), win in windows.items():
            img = self.images[(p, KIND_RAW)]
            if c not in img.windows:
                img.windows[c] = win
                firsts.append((img, c))
        return firsts

    def window_from(self, img: Image, c: int, frame: np.ndarray) -> None:
        """Channel ``c`` of ``img`` takes its window from ``frame`` unless it has one. Under state."""
        if c not in img.windows:
            img.windows[c] = ngff.contrast_window(frame)

    def publish_raw(self, positions: set[int], grown: set[int], firsts: list[tuple[Image, int]]) -> None:
        """Publish after a raw batch: the raw images it touched, every image whose C or Z grew, new windows."""
        for p in positions | grown:
            self.publish(self.images[(p, KIND_RAW)])
        for p in grown:
            for kind in (KIND_RESTORED, KIND_UNCERTAINTY):
                if (p, kind) in self.images:
                    self.publish(self.images[(p, kind)])
        for img, c in firsts:  # restored shares the raw contrast until it has its own
            rest = self.images[(img.p, KIND_RESTORED)]
            with self._state:
                rest.windows.setdefault(c, img.windows[c])
            self.publish(rest)

    # ------------------------------------------------------------------ provenance
    def provenance_images(self) -> list[Image]:
        """The images that carry restoration provenance. Under state."""
        return [img for (p, kind), img in self.images.items() if kind in (KIND_RESTORED, KIND_UNCERTAINTY)]

    def write_provenance(self, images: list[Image], counts: dict[str, int], models: list[dict[str, Any]]) -> None:
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
            "frame_records": f"../{self.plan.records}/restored.jsonl",
        }
        for img in images:
            with img.pub_lock:
                attrs = img.group_meta["attributes"]
                attrs["lowdose"] = {**prov, "kind": img.kind, "position": img.p}
                write_json(img.dir / "zarr.json", img.group_meta)


def _index_without_checksum(meta_path: Path) -> None:
    """The shard index as :mod:`.shards` writes it: little-endian uint64 pairs, no crc32c.

    A reader of a store being written reads the open shard's index while it changes; a checksum over
    it would fail whenever a reader caught an update, while each published entry itself never changes.
    """
    meta = json.loads(meta_path.read_text())
    for codec in meta["codecs"]:
        if codec["name"] == "sharding_indexed":
            codec["configuration"]["index_codecs"] = [{"name": "bytes", "configuration": {"endian": "little"}}]
            codec["configuration"]["index_location"] = "start"
    write_json(meta_path, meta)
