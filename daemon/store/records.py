"""The store's append-only record logs, ``frames.jsonl`` and ``restored.jsonl`` (in ``lowdose/records/``).

The records are the truth of a run (``docs/design.md`` rule 2): a frame with a record has its chunk, and
reopening rebuilds every table from them. One JSON object per line, appended a batch at a time and
fsynced with it when ``storage.fsync``; a kill mid-append leaves at most a torn last line, which
:meth:`RecordLog.recover` cuts off (that frame was never acknowledged, so the hook resends it).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

import numpy as np

from lowdose.plugins.denoisers.interface import DenoiserInfo
from lowdose.wire.jsonsafe import jsonable
from lowdose.wire.protocol import Frame, FrameIndex

log = logging.getLogger(__name__)


class RecordLog:
    """One JSON-lines log: read (and repaired) once at open, then appended to."""

    def __init__(self, path: Path, fsync: bool):
        self.path = path
        self.fsync = fsync
        self._fh: BinaryIO | None = None

    def recover(self) -> list[dict[str, Any]]:
        """Every readable record; a torn last line is cut off the file, an unreadable inner one skipped."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
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
                log.warning("%s: skipping an unreadable record at byte %d", self.path, pos)
                good_end = nl + 1
            pos = nl + 1
        if good_end < len(data):
            log.warning("%s: dropping a torn last record (%d bytes); that frame will be resent", self.path, len(data) - good_end)
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        return records

    def open(self) -> None:
        self._fh = open(self.path, "ab")

    def append(self, lines: list[str]) -> None:
        """Append ``lines`` as one write, then one fsync for the whole batch."""
        fh = self._fh
        assert fh is not None, "RecordLog.open() first"
        fh.write(("\n".join(lines) + "\n").encode())
        fh.flush()
        if self.fsync:
            os.fsync(fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def read_batches(path: Path, size: int) -> Iterator[list[dict[str, Any]]]:
    """The records of a log, ``size`` at a time; unreadable lines skipped.

    Streamed: a long run's records, all parsed at once, would take GBs.
    """
    with open(path, "rb") as f:
        recs: list[dict[str, Any]] = []
        for line in f:
            try:
                recs.append(json.loads(line))
            except ValueError:
                continue
            if len(recs) == size:
                yield recs
                recs = []
        if recs:
            yield recs


def frame_lines(frames: Sequence[tuple[Frame, np.ndarray]], where: Sequence[list[int] | None] = ()) -> list[str]:
    """The ``frames.jsonl`` records of a batch of raw frames, all stamped with the same write time.

    ``where``: per frame, where its bytes are in its shard ([offset, nbytes], the ``at`` of the record);
    none for one file per frame, where a chunk's place is its name.
    """
    now = time.time()
    lines = []
    for k, (frame, _) in enumerate(frames):
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
        if k < len(where) and where[k] is not None:
            rec["at"] = where[k]
        lines.append(json.dumps(jsonable(rec), separators=(",", ":")))
    return lines


def restored_lines(items: Sequence[tuple[FrameIndex, np.ndarray, np.ndarray | None]], mode: str, model: int,
                   where: Sequence[tuple[list[int] | None, list[int] | None]] = ()) -> list[str]:
    """The ``restored.jsonl`` records of a batch of restorations by model id ``model``.

    ``where``: per item, where the restored frame's and the uncertainty map's bytes are in their shards.
    """
    now = time.time()
    lines = []
    for k, (i, _, u) in enumerate(items):
        rec: dict[str, Any] = {"t": i.t, "p": i.p, "c": i.c, "z": i.z, "mode": mode, "model": model,
                               "uncertainty": u is not None, "written": now}
        at, unc_at = where[k] if k < len(where) else (None, None)
        if at is not None:
            rec["at"] = at
        if unc_at is not None:
            rec["unc_at"] = unc_at
        lines.append(json.dumps(rec, separators=(",", ":")))
    return lines


def model_entry(info: DenoiserInfo) -> dict[str, Any]:
    """A model's provenance as stored: in ``restored.jsonl`` once, and in the restored images' attributes."""
    return {
        "name": info.name,
        "version": info.version,
        "checksum": info.checksum,
        "parameters": jsonable(info.parameters),
        "device": info.device,
        "tile_size": info.tile_size,
        "has_uncertainty": info.has_uncertainty,
    }


def model_line(model_id: int, entry: dict[str, Any]) -> str:
    """The ``restored.jsonl`` record that defines model id ``model_id``; restored records cite the id."""
    return json.dumps({"kind": "model", "id": model_id, "info": entry})
