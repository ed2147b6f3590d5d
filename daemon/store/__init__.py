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
codec zarr-python's ``BloscCodec`` wraps, same configuration) and written by :mod:`.chunks`, because
zarr-python neither fsyncs nor lets us write data before publishing the shape (it publishes the shape
first). The tests read everything back through zarr-python, ome-zarr-py and both NGFF validators.

How the package is cut. Each module owns one kind of state and one kind of I/O, so each can be read,
tested and replaced alone:

- :mod:`.interface`: the :class:`Store` protocol the daemon's loops, backfill and the CLI program
  against, and the errors. The shard writer will be a second :class:`Store`; nothing above this
  package names :class:`RunStore` except to open one.
- :mod:`.index`: which frame is stored at each index, which are restored (pure numpy, no I/O, no
  lock). It is what makes the queries cheap and the recovery exact, and it is the same for any
  on-disk format, so a shard writer reuses it as is.
- :mod:`.records`: the append-only logs, the durable truth of a run, and their torn-line recovery.
- :mod:`.chunks`: chunk encoding, chunk files and their fsyncs, and the thread pool. This is the part
  a shard writer replaces.
- :mod:`.layout` (with the pure NGFF dicts of :mod:`.ngff`): groups and arrays, and when a shape may
  be published (rule 4); contrast windows and provenance attributes.
- :mod:`.finalize`: the end of a run: windows from real data, per-frame tables, the summary.
- :mod:`.run_store`: :class:`RunStore`, the facade that holds the locks and orders the steps; its
  ``write_raw`` reads as chunks, records, index, publish.

The locks stay in the facade rather than in the parts: a raw batch must note the index and adopt
windows in one critical section, and only the facade sees both.
"""

from .index import STATUS_CODES
from .interface import FrameNotStored, Store, StoreError
from .run_store import RunStore, declared_restored_dtype

__all__ = ["FrameNotStored", "RunStore", "STATUS_CODES", "Store", "StoreError", "declared_restored_dtype"]
