"""The per-run store: one OME-Zarr (NGFF 0.5 on Zarr v3) with raw and restored images side by side.

Layout of ``<output_dir>/<run>.ome.zarr/``::

    zarr.json                 root: ome["bioformats2raw.layout"] = 3 (one collection of images);
                              attributes["lowdose"]: run info, Start message, storage plan, summary
    OME/zarr.json             ome["series"]: every image below, by name (:mod:`.collection`)
    raw/ restored/            NGFF 0.5 images of position 0 (TCZYX, one level at path "0")
    uncertainty/              float32 uncertainty map, when the model gives one
    raw_p1/ restored_p1/ ...  further stage positions
    lowdose/                  zarr group of lowdose's own data
        records/              a zero-length zarr array whose folder holds the record logs (no Zarr
                              tool lists inside an array, so none trips on them):
            frames.jsonl      append-only: one line per raw frame (seq, index, timestamps, metadata, at)
            restored.jsonl    append-only: one line per restored frame (index, mode, model, at) + models
        tables/               per-frame columns as 1-D zarr arrays, written by finalize()

Stores written before the records moved keep them in ``lowdose/`` and are read there.

Frame data, ``storage.layout`` (an existing store keeps its own, see :mod:`.plan`):

- ``sharded`` (the default): Zarr v3 ``sharding_indexed`` along T, one frame per inner chunk, one shard
  file per ``shard_frames`` time points of each (c, z) (:mod:`.shards`). A frame is appended to its open
  shard and the shard's index, at the start of the file, rewritten in place; ``at`` in its record says
  where its bytes are, and reopening rebuilds every shard index from the records.
- ``chunk_per_frame``: one chunk file per frame (:mod:`.chunks`), ``c/<t>/<c>/<z>/0/0``.

How a frame is written (``docs/design.md`` rule 2 "no raw frame lost" and rule 4 "data before count"):

1. its bytes are written: appended to the shard (and its index entry) or as a chunk file, and fsynced
   with the new directory entries when ``storage.fsync``;
2. its record is appended to ``frames.jsonl`` (fsynced): from here on it is acknowledged;
3. the array's published shape (its ``zarr.json``, replaced atomically) grows to the contiguous prefix
   of *complete* time points (all C x Z frames present).

A reader therefore never sees an index whose data is not there (a reader of a shard being written reads
the index entries of published time points only, and those never change), and after a crash the records
are the truth: a frame with a record has its data; a frame without one (torn last line included) is
resent by the hook and written again. Reopening rebuilds everything from the records.

The arrays' metadata is created with zarr-python; frame bytes are encoded with numcodecs' Blosc (the
codec zarr-python's ``BloscCodec`` wraps, same configuration) and written by this package, because
zarr-python neither fsyncs, nor appends to a shard (it rewrites the shard per frame: 0.04 GB/s on our
VM), nor lets us write data before publishing the shape. The tests read everything back through
zarr-python, tensorstore, ome-zarr-py and both NGFF validators.

How the package is cut. Each module owns one kind of state and one kind of I/O, so each can be read,
tested and replaced alone:

- :mod:`.interface`: the :class:`Store` protocol the daemon's loops, backfill and the CLI program
  against, and the errors; nothing above this package names :class:`RunStore` except to open one.
- :mod:`.index`: which frame is stored at each index, which are restored (pure numpy, no I/O, no
  lock). It is what makes the queries cheap and the recovery exact, and it is the same for any
  on-disk format, so both layouts use it as is.
- :mod:`.records`: the append-only logs, the durable truth of a run, and their torn-line recovery.
- :mod:`.chunks` / :mod:`.shards`: frame encoding, chunk files or shard files and their fsyncs, and the
  thread pool: the one part the two layouts differ in (the same five methods); :mod:`.plan` picks one.
- :mod:`.collection`: the root as a collection of images, and :func:`images` for readers.
- :mod:`.layout` (with the pure NGFF dicts of :mod:`.ngff`): groups and arrays, and when a shape may
  be published (rule 4); contrast windows and provenance attributes.
- :mod:`.finalize`: the end of a run: windows from real data, per-frame tables, the summary.
- :mod:`.run_store`: :class:`RunStore`, the facade that holds the locks and orders the steps; its
  ``write_raw`` reads as chunks, records, index, publish.

The locks stay in the facade rather than in the parts: a raw batch must note the index and adopt
windows in one critical section, and only the facade sees both.
"""

from .collection import images
from .index import STATUS_CODES
from .interface import FrameNotStored, Store, StoreError
from .run_store import RunStore, declared_restored_dtype

__all__ = ["FrameNotStored", "RunStore", "STATUS_CODES", "Store", "StoreError", "declared_restored_dtype", "images"]
