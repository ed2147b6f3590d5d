"""The per-run OME-Zarr store (lowdose.daemon.store): real stores on disk, read back with real readers."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from lowdose.daemon.store import chunks as chunks_mod
from lowdose.daemon.store import shards as shards_mod
from lowdose.daemon.config import StorageConfig
from lowdose.wire.protocol import End, Frame, FrameIndex, Start, ranges_from_seqs
from lowdose.daemon.store import FrameNotStored, RunStore, StoreError, images
from lowdose.plugins.denoisers.interface import DenoiserInfo

Y, X = 24, 40
VERSION = "9.9.9-test"
INFO = DenoiserInfo(name="testnet", version="1.2", checksum="sha256:abc", parameters={"steps": 10}, has_uncertainty=True)


def make_start(run: str = "run1", **kw) -> Start:
    base = dict(run=run, instrument="scope-A", source="pymmcore-plus", shape=(Y, X), dtype="uint16",
                pixel_size_um=0.65, frame_interval_s=0.5, z_step_um=2.0, channel_names=["GFP"],
                summary={"Camera": "Demo"}, sequence={"time_plan": {"loops": 3}})
    base.update(kw)
    return Start(**base)


def pixels(seq: int) -> np.ndarray:
    """A low-light frame whose values identify it: offset 100 + Poisson, first pixel = seq."""
    rng = np.random.default_rng(seq)
    px = (100 + rng.poisson(8, (Y, X))).astype(np.uint16)
    px[0, 0] = 1000 + seq
    return px


def frame(seq: int, t: int = 0, c: int = 0, z: int = 0, p: int = 0, run: str = "run1") -> tuple[Frame, np.ndarray]:
    return (
        Frame(run=run, seq=seq, index=FrameIndex(t=t, p=p, c=c, z=z), shape=(Y, X), dtype="uint16",
              timestamp=1000.0 + seq, elapsed_ms=10.0 * seq, exposure_ms=5.0, metadata={"n": seq}),
        pixels(seq),
    )


LAYOUTS = ("sharded", "chunk_per_frame")


@pytest.fixture(params=LAYOUTS)
def cfg(request):
    """StorageConfig(**kw) for the writer under test: every test here runs against both layouts."""

    def make(**kw) -> StorageConfig:
        # these tests write restored frames in the camera's dtype (the default restored dtype is float32)
        return StorageConfig(**{"layout": request.param, "restored_dtype": "input", **kw})

    make.layout = request.param
    return make


def stored(store: RunStore, name: str, t: int, c: int, z: int) -> bool:
    """Whether the data of (t, c, z) of image ``name`` is on disk: its chunk file, or its shard's index entry."""
    array = store.path / name / "0"
    if store.plan.layout == "chunk_per_frame":
        return (array / "c" / str(t) / str(c) / str(z) / "0" / "0").is_file()
    n = store.plan.shard_frames
    shard = array / "c" / str(t // n) / str(c) / str(z) / "0" / "0"
    if not shard.is_file():
        return False
    index = np.frombuffer(shard.read_bytes()[: 16 * n], "<u8").reshape(n, 2)
    offset, nbytes = index[t % n]
    return offset != 2**64 - 1 and shard.stat().st_size >= int(offset) + int(nbytes)


def published(store: RunStore, name: str = "raw") -> zarr.Array:
    return zarr.open_array(store.path / name / "0", mode="r")


def assert_published_complete(store: RunStore, name: str = "raw") -> tuple[int, ...]:
    """Every index inside the published shape has its chunk file, and reads non-zero (never fill)."""
    arr = published(store, name)
    t_n, c_n, z_n = arr.shape[:3]
    for t in range(t_n):
        for c in range(c_n):
            for z in range(z_n):
                assert stored(store, name, t, c, z), (name, t, c, z)
    if t_n:
        assert arr[t_n - 1].min() > 0
    return arr.shape


@pytest.mark.parametrize("compression,fsync", [("lz4", True), ("zstd", False), ("none", False)])
def test_frames_land_bit_identical_at_their_index(tmp_path: Path, compression: str, fsync: bool, cfg) -> None:
    start = make_start(sizes={"c": 2, "z": 3})
    store = RunStore.open(tmp_path, start, cfg(compression=compression, fsync=fsync), VERSION)
    grid = [(t, c, z) for t in range(3) for c in range(2) for z in range(3)]
    order = np.random.default_rng(1).permutation(len(grid))  # arrival order differs from index order
    seq_of = {}
    batch = []
    for k, i in enumerate(order):
        t, c, z = grid[i]
        seq_of[(t, c, z)] = k
        batch.append(frame(k, t=t, c=c, z=z))
        if len(batch) == 4:
            assert store.write_raw(batch) == [f.seq for f, _ in batch]
            batch = []
    store.write_raw(batch)
    arr = published(store)
    assert arr.shape == (3, 2, 3, Y, X)
    assert arr.dtype == np.uint16
    for (t, c, z), seq in seq_of.items():
        np.testing.assert_array_equal(arr[t, c, z], pixels(seq))
        np.testing.assert_array_equal(store.read_raw(FrameIndex(t=t, c=c, z=z)), pixels(seq))
    assert store.raw_seqs() == set(range(len(grid)))
    meta = json.loads((store.path / "raw" / "0" / "zarr.json").read_text())
    codecs = meta["codecs"]
    grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
    if cfg.layout == "sharded":  # shards along T of one frame per inner chunk, the index first
        assert [c["name"] for c in codecs] == ["sharding_indexed"] and grid == [store.plan.shard_frames, 1, 1, Y, X]
        inner = codecs[0]["configuration"]
        assert inner["chunk_shape"] == [1, 1, 1, Y, X] and inner["index_location"] == "start"
        codecs = inner["codecs"]
    else:
        assert grid == [1, 1, 1, Y, X]
    assert [c["name"] for c in codecs] == (["bytes"] if compression == "none" else ["bytes", "blosc"])
    if compression != "none":
        assert codecs[1]["configuration"]["cname"] == compression
        assert codecs[1]["configuration"]["shuffle"] == "bitshuffle"
    store.close()


def test_duplicate_seq_is_written_once(tmp_path: Path, cfg) -> None:
    store = RunStore.open(tmp_path, make_start(), cfg(), VERSION)
    assert store.write_raw([frame(0, t=0), frame(1, t=1)]) == [0, 1]
    chunk = store.path / "raw/0/c/0/0/0/0/0"  # the chunk of t=0, or the shard holding it
    before = chunk.stat().st_mtime_ns, chunk.stat().st_ino, chunk.stat().st_size
    # resend of seq 0 (even with different pixels: the stored frame wins) and a duplicate inside a batch
    dup = (frame(0, t=0)[0], np.zeros((Y, X), np.uint16))
    if cfg.layout == "sharded":
        assert store.write_raw([dup]) == [0]
    else:
        assert store.write_raw([dup, frame(2, t=2), frame(2, t=2)]) == [0, 2]
    assert (chunk.stat().st_mtime_ns, chunk.stat().st_ino, chunk.stat().st_size) == before
    if cfg.layout == "sharded":
        size = chunk.stat().st_size
        assert store.write_raw([dup, frame(2, t=2), frame(2, t=2)]) == [0, 2]
        assert chunk.stat().st_size == size + len(store._chunks.read_bytes(str(store.path / "raw/0"), 2, 0, 0))
    np.testing.assert_array_equal(published(store)[0, 0, 0], pixels(0))
    lines = (store.path / "lowdose/records/frames.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["seq"] for line in lines) == [0, 1, 2]
    store.close()


def test_reopen_after_crash_recovers_state_and_drops_torn_line(tmp_path: Path, cfg) -> None:
    start = make_start()
    a = RunStore.open(tmp_path, start, cfg(), VERSION)
    a.write_raw([frame(s, t=s) for s in range(5)])
    a.write_restored([(FrameIndex(t=0), pixels(0), None), (FrameIndex(t=1), pixels(1), None)], INFO, "live")
    # crash: no close(), no finalize(); seq 5's chunk got written but its record is torn
    a.write_raw([frame(5, t=5)])
    log = a.path / "lowdose/records/frames.jsonl"
    text = log.read_bytes()
    last_start = text.rstrip(b"\n").rfind(b"\n") + 1
    log.write_bytes(text[: last_start + 17])  # torn mid-record, no newline
    rlog = a.path / "lowdose/records/restored.jsonl"
    rlog.write_bytes(rlog.read_bytes() + b'{"t": 2, "p": 0, "c"')

    b = RunStore.open(tmp_path, start, cfg(), VERSION)
    assert b.raw_seqs() == {0, 1, 2, 3, 4}
    assert b.restored_count() == 2
    assert b.unrestored() == [FrameIndex(t=t) for t in (2, 3, 4)]
    assert published(b).shape[0] == 5
    assert published(b, "restored").shape[0] == 2
    assert log.read_bytes().endswith(b"\n") and rlog.read_bytes().endswith(b"\n")
    # the hook resends seq 5: it is written again and now recorded; a resent stored seq is not rewritten
    assert b.write_raw([frame(4, t=4), frame(5, t=5)]) == [4, 5]
    assert published(b).shape[0] == 6
    np.testing.assert_array_equal(published(b)[5, 0, 0], pixels(5))
    assert [json.loads(x)["seq"] for x in log.read_text().splitlines()] == [0, 1, 2, 3, 4, 5]
    b.close()
    a.close()


def test_published_shape_never_covers_unwritten_chunks(tmp_path: Path, cfg) -> None:
    start = make_start(sizes={"c": 2})
    store = RunStore.open(tmp_path, start, cfg(fsync=False), VERSION)
    # c=1 of t=0 arrives last: nothing may be published before it
    store.write_raw([frame(0, t=0, c=0), frame(1, t=1, c=0), frame(2, t=1, c=1)])
    assert assert_published_complete(store)[0] == 0
    store.write_raw([frame(3, t=0, c=1)])
    assert assert_published_complete(store)[0] == 2
    # a channel beyond the announced sizes: C grows, T shrinks to what is complete for the new C
    store.write_raw([frame(4, t=2, c=0), frame(5, t=2, c=1), frame(6, t=2, c=2)])
    shape = assert_published_complete(store)
    assert shape[:3] == (0, 3, 1)
    store.write_raw([frame(7 + t, t=t, c=2) for t in (0, 1)])
    assert assert_published_complete(store)[:3] == (3, 3, 1)
    store.close()


def test_concurrent_reader_never_sees_fill(tmp_path: Path, cfg) -> None:
    store = RunStore.open(tmp_path, make_start(sizes={"c": 2}), cfg(fsync=False), VERSION)
    stop = threading.Event()
    problems: list[str] = []
    checks = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                arr = zarr.open_array(store.path / "raw" / "0", mode="r")
            except Exception as exc:  # a torn zarr.json would land here
                problems.append(f"open: {exc!r}")
                continue
            if arr.shape[0]:
                last = arr[arr.shape[0] - 1]
                checks[0] += 1
                if last.min() == 0:
                    problems.append(f"fill value seen at t={arr.shape[0] - 1}")

    th = threading.Thread(target=reader)
    th.start()
    try:
        seq = 0
        for t in range(40):
            for c in (1, 0):  # the second channel first: t is complete only after c=0
                store.write_raw([frame(seq, t=t, c=c)])
                seq += 1
    finally:
        stop.set()
        th.join()
    assert problems == []
    assert checks[0] > 0
    assert published(store).shape[0] == 40
    store.close()


def test_multi_channel_z_and_positions(tmp_path: Path, cfg) -> None:
    start = make_start(sizes={"c": 2, "z": 2, "p": 2}, channel_names=["GFP", "mCherry"])
    store = RunStore.open(tmp_path, start, cfg(), VERSION)
    seq = 0
    expect = {}
    for t in range(2):
        for p in range(2):
            batch = []
            for c in range(2):
                for z in range(2):
                    batch.append(frame(seq, t=t, c=c, z=z, p=p))
                    expect[(p, t, c, z)] = seq
                    seq += 1
            store.write_raw(batch)
    assert (store.path / "raw_p1").is_dir() and (store.path / "restored_p1").is_dir()
    found = images(store.path)
    assert found == {p: {"raw": store.path / raw, "restored": store.path / rest}
                     for p, (raw, rest) in enumerate((("raw", "restored"), ("raw_p1", "restored_p1")))}
    for p, name in ((0, "raw"), (1, "raw_p1")):
        arr = published(store, name)
        assert arr.shape == (2, 2, 2, Y, X)
        for (pp, t, c, z), s in expect.items():
            if pp == p:
                np.testing.assert_array_equal(arr[t, c, z], pixels(s))
    ome = json.loads((store.path / "raw" / "zarr.json").read_text())["attributes"]["ome"]
    assert [ch["label"] for ch in ome["omero"]["channels"]] == ["GFP", "mCherry"]
    ms = ome["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 1.0, 2.0, 0.65, 0.65]
    assert [a.get("unit") for a in ms["axes"]] == ["second", None, "micrometer", "micrometer", "micrometer"]
    summary = store.finalize(End(run="run1", frames=seq))
    assert summary["images"]["restored_p1"]["shape"] == [2, 2, 2, Y, X]
    import yaozarrs
    from ome_zarr_models.v05 import Image

    yaozarrs.validate_zarr_store(str(store.path))  # the root, and every image its series lists
    for p, found in images(store.path).items():
        for kind, path in found.items():
            Image.from_zarr(zarr.open_group(path, mode="r"))
            yaozarrs.validate_ome_uri(str(path))
    assert summary["missing_seq_count"] == 0
    store.close()


def test_restored_provenance_status_and_backfill(tmp_path: Path, cfg) -> None:
    store = RunStore.open(tmp_path, make_start(), cfg(), VERSION, policy="latest")
    store.write_raw([frame(s, t=s) for s in range(6)])
    assert store.unrestored() == [FrameIndex(t=t) for t in range(6)]
    # `latest`: frames 0 and 3 restored live, the rest skipped
    unc = np.full((Y, X), 0.5, np.float32)
    store.write_restored([(FrameIndex(t=0), pixels(0) + 1, unc), (FrameIndex(t=3), pixels(3) + 1, unc)], INFO, "live")
    assert published(store, "restored").shape[0] == 1  # t=1, 2 are not restored yet
    assert store.unrestored() == [FrameIndex(t=t) for t in (1, 2, 4, 5)]
    attrs = json.loads((store.path / "restored" / "zarr.json").read_text())["attributes"]["lowdose"]
    assert attrs["lowdose_version"] == VERSION and attrs["policy"] == "latest"
    assert attrs["model"] == {"name": "testnet", "version": "1.2", "checksum": "sha256:abc", "parameters": {"steps": 10},
                              "device": "cpu", "tile_size": None, "has_uncertainty": True}
    # backfill fills the gaps: restored becomes visible
    store.write_restored([(FrameIndex(t=t), pixels(t) + 1, unc) for t in (1, 2, 4)], INFO, "backfill")
    assert published(store, "restored").shape[0] == 5
    assert published(store, "uncertainty").shape[0] == 5
    assert published(store, "uncertainty").dtype == np.float32
    np.testing.assert_array_equal(published(store, "restored")[4, 0, 0], pixels(4) + 1)
    assert store.restored_count() == 5
    summary = store.finalize(End(run="run1", frames=6))
    assert summary["restoration"] == {"pending": 1, "live": 2, "backfill": 3}
    assert published(store, "restored").shape == published(store).shape == (6, 1, 1, Y, X)
    status = zarr.open_array(store.path / "lowdose/tables/restored_status")[:]
    seqs = zarr.open_array(store.path / "lowdose/tables/seq")[:]
    assert list(seqs) == list(range(6))
    assert list(status) == [1, 2, 2, 1, 2, 0]
    assert list(zarr.open_array(store.path / "lowdose/tables/timestamp")[:]) == [1000.0 + s for s in range(6)]
    attrs = json.loads((store.path / "restored" / "zarr.json").read_text())["attributes"]["lowdose"]
    assert attrs["status_counts"] == {"pending": 1, "live": 2, "backfill": 3}
    with pytest.raises(StoreError, match="raw frame is not in the store"):
        store.write_restored([(FrameIndex(t=9), pixels(0), None)], INFO, "live")
    with pytest.raises(FrameNotStored):
        store.read_raw(FrameIndex(t=9))
    store.close()


def test_store_validates_with_ngff_tools_and_opens_with_ome_zarr_py(tmp_path: Path, cfg) -> None:
    import ome_zarr_models
    import yaozarrs
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05 import BioFormats2Raw, Image

    start = make_start(sizes={"c": 2})
    store = RunStore.open(tmp_path, start, cfg(), VERSION)
    store.write_raw([frame(s, t=s // 2, c=s % 2) for s in range(6)])
    store.write_restored([(FrameIndex(t=0, c=c), pixels(c), np.ones((Y, X), np.float32)) for c in (0, 1)], INFO, "live")

    def check() -> None:
        for name in ("raw", "restored", "uncertainty"):
            group = zarr.open_group(store.path / name, mode="r")
            assert isinstance(ome_zarr_models.open_ome_zarr(group), Image)
            Image.from_zarr(group)
            yaozarrs.validate_zarr_store(str(store.path / name))
            yaozarrs.validate_ome_uri(str(store.path / name))
        # the root is one collection (bioformats2raw.layout) listing every image; ome-zarr-models 1.7's
        # open_ome_zarr() tries no 0.5 bioformats2raw model, so its model is asked directly
        root = zarr.open_group(store.path, mode="r")
        assert BioFormats2Raw.from_zarr(root).attributes.ome.bioformats2raw_layout == 3
        yaozarrs.validate_zarr_store(str(store.path))
        series = json.loads((store.path / "OME" / "zarr.json").read_text())["attributes"]["ome"]["series"]
        assert series == ["raw", "restored", "uncertainty"]
        assert images(store.path) == {0: {k: store.path / k for k in series}}
        nodes = list(Reader(parse_url(str(store.path / "raw")))())
        assert nodes[0].data[0].shape == published(store).shape
        np.testing.assert_array_equal(np.asarray(nodes[0].data[0][1, 1, 0]), pixels(3))
        assert nodes[0].metadata["channel_names"] == ["GFP", "c1"]

    check()  # while being written
    store.finalize(End(run="run1", frames=6))
    check()
    root = json.loads((store.path / "zarr.json").read_text())["attributes"]["lowdose"]
    assert root["run"] == "run1" and root["instrument"] == "scope-A" and root["source"] == "pymmcore-plus"
    assert root["lowdose_version"] == VERSION and root["sequence"] == {"time_plan": {"loops": 3}}
    assert root["summary_metadata"] == {"Camera": "Demo"} and root["summary"]["frames_written"] == 6
    store.close()


def test_reopen_with_different_shape_or_dtype_raises(tmp_path: Path, cfg) -> None:
    RunStore.open(tmp_path, make_start(), cfg(), VERSION).close()
    with pytest.raises(StoreError, match="cannot change"):
        RunStore.open(tmp_path, make_start(shape=(Y + 1, X)), cfg(), VERSION)
    with pytest.raises(StoreError, match="cannot change"):
        RunStore.open(tmp_path, make_start(dtype="uint8"), cfg(), VERSION)
    RunStore.open(tmp_path, make_start(), cfg(), VERSION).close()  # same shape: fine


def test_unwritable_output_dir_raises_store_error(tmp_path: Path, cfg) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    with pytest.raises(StoreError, match="storage.output_dir"):
        RunStore.open(blocker / "data", make_start(), cfg(), VERSION)
    if os.geteuid() != 0:  # root ignores permission bits; the file case above holds for everyone
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(StoreError, match="permission denied"):
            RunStore.open(ro, make_start(), cfg(), VERSION)


def test_disk_full_raises_store_error_and_frame_is_not_acknowledged(tmp_path: Path, monkeypatch, cfg) -> None:
    store = RunStore.open(tmp_path, make_start(), cfg(), VERSION)
    store.write_raw([frame(0, t=0)])
    real_file, real_at = chunks_mod.write_file, shards_mod._write_at

    def full(path, data, *, fsync, atomic=True):
        if "/c/" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real_file(path, data, fsync=fsync, atomic=atomic)

    def full_mid_shard(fd, offset, bufs):  # the disk fills half-way through a frame's bytes
        if offset > 0:
            real_at(fd, offset, [memoryview(bufs[0]).cast("B")[: len(memoryview(bufs[0]).cast("B")) // 2]])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_at(fd, offset, bufs)

    monkeypatch.setattr(chunks_mod, "write_file", full)
    monkeypatch.setattr(shards_mod, "_write_at", full_mid_shard)
    with pytest.raises(StoreError, match="disk is full"):
        store.write_raw([frame(1, t=1)])
    assert store.raw_seqs() == {0} and not store.has_seq(1) and store.raw_count() == 1
    assert published(store).shape[0] == 1
    monkeypatch.setattr(chunks_mod, "write_file", real_file)
    monkeypatch.setattr(shards_mod, "_write_at", real_at)
    assert store.write_raw([frame(1, t=1)]) == [1]  # the resend succeeds once there is space
    assert published(store).shape[0] == 2
    np.testing.assert_array_equal(published(store)[:, 0, 0], np.stack([pixels(0), pixels(1)]))
    store.close()
    again = RunStore.reopen(store.path, cfg(), VERSION)
    assert again.raw_seqs() == {0, 1}
    np.testing.assert_array_equal(again.read_raw(FrameIndex(t=1)), pixels(1))
    again.close()


def test_concurrent_raw_and_restored_threads(tmp_path: Path, cfg) -> None:
    store = RunStore.open(tmp_path, make_start(), cfg(fsync=False), VERSION, policy="fifo")
    n = 60
    errors: list[BaseException] = []

    def restorer() -> None:
        try:
            done = 0
            while done < n:
                todo = store.unrestored()[:4]
                if not todo:
                    continue
                items = [(i, store.read_raw(i), None) for i in todo]
                store.write_restored(items, INFO, "live")
                done += len(items)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    th = threading.Thread(target=restorer)
    th.start()
    for s in range(0, n, 3):
        store.write_raw([frame(k, t=k) for k in range(s, s + 3)])
    th.join(timeout=30)
    assert not th.is_alive() and errors == []
    assert store.restored_count() == n and store.unrestored() == []
    np.testing.assert_array_equal(published(store, "restored")[:], published(store)[:])
    store.close()


def test_seq_of_names_the_frame_at_an_index_and_backlog_queries_are_bounded(tmp_path, cfg):
    store = RunStore.open(tmp_path, make_start(), cfg(), "test")
    store.write_raw([frame(seq, t=t) for seq, t in ((10, 0), (11, 2), (12, 1))])
    assert store.seq_of(FrameIndex(t=2)) == 11
    with pytest.raises(FrameNotStored):
        store.seq_of(FrameIndex(t=5))
    assert store.unrestored_count() == 3
    assert store.unrestored(limit=2) == [FrameIndex(t=0), FrameIndex(t=2)]  # seq order, first two only
    store.close()


# ---------------------------------------------------------------- compact per-frame bookkeeping


def status_table(store: RunStore) -> dict[int, tuple[int, int]]:
    """seq -> (restored_status, restored_model) from the tables finalize wrote."""
    tables = store.path / "lowdose" / "tables"
    seqs = zarr.open_array(tables / "seq")[:].tolist()
    status = zarr.open_array(tables / "restored_status")[:].tolist()
    model = zarr.open_array(tables / "restored_model")[:].tolist()
    return {s: (st, m) for s, st, m in zip(seqs, status, model)}


def test_channel_and_z_growing_late_keep_every_earlier_frame(tmp_path: Path, cfg) -> None:
    store = RunStore.open(tmp_path, make_start(), cfg(fsync=False), VERSION)  # no sizes announced: C = Z = 1
    n = 600  # more time points than one block of bookkeeping holds
    store.write_raw([frame(t, t=t) for t in range(n)])
    unc = np.full((Y, X), 0.25, np.float32)
    store.write_restored([(FrameIndex(t=t), pixels(t) + 1, unc if t % 3 == 0 else None) for t in range(0, n, 2)],
                         INFO, "live")
    assert published(store).shape[:3] == (n, 1, 1)
    # channel 1 and z 1 appear only now: the published extent waits for them, earlier frames keep their state
    store.write_raw([frame(n + t, t=t, c=1) for t in range(n)])
    store.write_raw([frame(2 * n, t=0, z=1)])
    assert published(store).shape[:3] == (0, 2, 2)
    for t in range(n):
        assert store.seq_of(FrameIndex(t=t)) == t
        assert store.seq_of(FrameIndex(t=t, c=1)) == n + t
    assert store.seq_of(FrameIndex(t=0, z=1)) == 2 * n
    with pytest.raises(FrameNotStored):
        store.seq_of(FrameIndex(t=1, z=1))
    np.testing.assert_array_equal(store.read_raw(FrameIndex(t=599)), pixels(599))
    np.testing.assert_array_equal(store.read_raw(FrameIndex(t=7, c=1)), pixels(n + 7))
    assert store.restored_count() == n // 2
    pending = [FrameIndex(t=t) for t in range(1, n, 2)] + [FrameIndex(t=t, c=1) for t in range(n)] + [FrameIndex(t=0, z=1)]
    assert store.unrestored_count() == len(pending) and store.unrestored() == pending
    # the rest of z=1 completes the grid: everything is published, and restored grows as its gaps are filled
    store.write_raw([frame(2 * n + 1 + k, t=t, c=c, z=1) for k, (t, c) in enumerate(
        [(t, c) for t in range(n) for c in range(2) if (t, c) != (0, 0)])])
    assert published(store).shape[:3] == (n, 2, 2)
    assert published(store, "restored").shape[0] == 0
    store.write_restored([(i, pixels(0), None) for i in store.unrestored()], INFO, "backfill")
    assert published(store, "restored").shape[:3] == (n, 2, 2)
    assert published(store, "uncertainty").shape[0] == 0  # uncertainty only at t = 0, 6, 12, ... of (c=0, z=0)
    summary = store.finalize(End(run="run1", frames=4 * n))
    assert summary["restoration"] == {"pending": 0, "live": n // 2, "backfill": 4 * n - n // 2}
    assert summary["missing_index_count"] == 0 and summary["missing_seq_count"] == 0
    assert summary["images"]["uncertainty"] == {"shape": [n, 2, 2, Y, X], "dtype": "float32", "frames": n // 6}
    table = status_table(store)
    assert [table[t] for t in range(4)] == [(1, 0), (2, 0), (1, 0), (2, 0)]
    assert table[n + 5] == (2, 0) and len(table) == 4 * n
    store.close()


def test_far_out_of_order_t_and_seq(tmp_path: Path, cfg) -> None:
    import tracemalloc

    store = RunStore.open(tmp_path, make_start(), cfg(fsync=False), VERSION)
    far_t, far_seq = 100_000, 10**15

    def numbered(seq: int, t: int) -> tuple[Frame, np.ndarray]:
        meta, px = frame(4, t=t)
        return meta.model_copy(update={"seq": seq}), px

    tracemalloc.start()
    store.write_raw([frame(0, t=0), frame(1, t=1), frame(2, t=far_t), numbered(far_seq, t=2), frame(3, t=3)])
    held = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert held < 8 << 20  # neither the far t nor the far seq allocates bookkeeping up to it
    assert published(store).shape[0] == 4  # the gap stays unpublished
    assert store.seq_of(FrameIndex(t=far_t)) == 2 and store.seq_of(FrameIndex(t=2)) == far_seq
    assert store.has_seq(far_seq) and not store.has_seq(far_seq - 1) and store.raw_count() == 5
    assert store.raw_seqs() == {0, 1, 2, 3, far_seq}
    assert store.unrestored() == [FrameIndex(t=t) for t in (0, 1, far_t, 3, 2)]  # seq order
    assert store.raw_indices() == store.unrestored()
    store.write_restored([(FrameIndex(t=far_t), pixels(2), None)], INFO, "live")
    assert store.unrestored(limit=3) == [FrameIndex(t=t) for t in (0, 1, 3)]
    with pytest.raises(StoreError, match="below 2\\*\\*62"):
        store.write_raw([numbered(1 << 62, t=4)])
    assert store.raw_count() == 5
    summary = store.finalize(None)
    assert summary["frames_expected"] == far_seq + 1
    assert summary["missing_seqs"] == [[4, far_seq - 1]] and summary["missing_seq_count"] == far_seq - 4
    assert summary["images"]["raw"]["shape"][0] == far_t + 1
    assert summary["missing_index_count"] == far_t + 1 - 5
    assert summary["missing_indices"] == [[t, 0, 0, 0] for t in range(4, 1004)]
    assert published(store, "restored").shape[0] == far_t + 1
    assert status_table(store) == {0: (0, -1), 1: (0, -1), 2: (1, 0), 3: (0, -1), far_seq: (0, -1)}
    store.close()


def test_unrestored_follows_seq_order_through_restores_in_random_order(tmp_path: Path, cfg) -> None:
    rng = np.random.default_rng(7)
    store = RunStore.open(tmp_path, make_start(sizes={"c": 2}), cfg(fsync=False), VERSION)
    grid = [(t, c) for t in range(400) for c in range(2)]
    seqs = rng.permutation(len(grid))  # seq order unrelated to index order, spread over many blocks
    pending: dict[int, FrameIndex] = {}
    at = 0
    while at < len(grid):  # lower seqs keep arriving after higher ones: the backlog's order must follow
        k = int(rng.integers(1, 60))
        store.write_raw([frame(int(s), t=t, c=c) for s, (t, c) in zip(seqs[at:at + k], grid[at:at + k])])
        pending.update({int(s): FrameIndex(t=t, c=c) for s, (t, c) in zip(seqs[at:at + k], grid[at:at + k])})
        at += k
        limit = int(rng.integers(1, 20))
        assert store.unrestored(limit=limit) == [pending[s] for s in sorted(pending)][:limit]
    restored = 0
    while pending:
        k = int(rng.integers(1, 40))
        pick = rng.choice(sorted(pending), size=min(k, len(pending)), replace=False)
        store.write_restored([(pending.pop(int(s)), pixels(0), None) for s in pick], INFO, "backfill")
        restored += len(pick)
        expect = [pending[s] for s in sorted(pending)]
        limit = int(rng.integers(1, 20))
        assert store.unrestored(limit=limit) == expect[:limit]
        assert store.unrestored_count() == len(expect) and store.restored_count() == restored
    assert store.unrestored() == [] and store.unrestored(limit=5) == []
    store.close()


def test_reopen_without_close_recovers_the_same_state(tmp_path: Path, cfg) -> None:
    start = make_start(sizes={"c": 2, "z": 2})
    first = RunStore.open(tmp_path, start, cfg(fsync=False), VERSION)
    grid = [(t, c, z) for t in range(300) for c in range(2) for z in range(2)]
    first.write_raw([frame(s, t=t, c=c, z=z) for s, (t, c, z) in enumerate(grid)])
    first.write_raw([frame(len(grid), t=5, c=1, z=1)])  # a later seq replaces the frame at an index
    other = DenoiserInfo(name="othernet", version="2")
    unc = np.ones((Y, X), np.float32)
    first.write_restored([(FrameIndex(t=t, c=1), pixels(0), unc) for t in range(0, 300, 7)], INFO, "live")
    first.write_restored([(FrameIndex(t=t, z=1), pixels(0), None) for t in range(290, 3, -11)], other, "backfill")
    first.write_restored([(FrameIndex(t=0, c=1), pixels(0), None)], other, "backfill")  # restored again

    def state(store: RunStore) -> dict:
        every = [FrameIndex(t=t, c=c, z=z) for t, c, z in grid]
        return {
            "seq_of": [store.seq_of(i) for i in every],
            "unrestored": store.unrestored(),
            "first": store.unrestored(limit=9),
            "pending": store.unrestored_count(),
            "restored": store.restored_count(),
            "seqs": store.raw_seqs(),
            "indices": store.raw_indices(),
            "shapes": [published(store, name).shape for name in ("raw", "restored", "uncertainty")],
        }

    before = state(first)
    assert before["seq_of"][grid.index((5, 1, 1))] == len(grid)
    assert before["restored"] == 43 + 27
    second = RunStore.reopen(first.path, cfg(fsync=False), VERSION)  # as after a SIGKILL: `first` never closed
    assert state(second) == before
    summary = second.finalize(End(run="run1", frames=len(grid) + 1))
    assert summary["restoration"] == {"pending": len(grid) - 70, "live": 42, "backfill": 28}
    table = status_table(second)
    assert table[grid.index((0, 1, 0))] == (2, 1) and table[grid.index((7, 1, 0))] == (1, 0)
    assert table[grid.index((290, 0, 1))] == (2, 1) and table[grid.index((1, 0, 0))] == (0, -1)
    second.close()
    first.close()


def test_raw_seq_ranges_match_the_stored_seqs(tmp_path: Path, cfg) -> None:
    store = RunStore.open(tmp_path, make_start(), cfg(fsync=False), VERSION)
    assert store.raw_seq_ranges() == []
    seqs = [0, 1, 2, 5, 7, 8, 40]
    store.write_raw([frame(s, t=s) for s in seqs])
    assert store.raw_seq_ranges() == [(0, 2), (5, 5), (7, 8), (40, 40)]
    assert store.raw_seq_ranges() == ranges_from_seqs(sorted(store.raw_seqs()))
    store.close()


def test_run_store_implements_the_store_interface(tmp_path: Path, cfg) -> None:
    import inspect

    from lowdose.daemon.store import Store

    members = [n for n, v in vars(Store).items() if callable(v) or isinstance(v, (classmethod, staticmethod))]
    members = [n for n in members if not n.startswith("_") or n in ("__enter__", "__exit__")]
    assert {"open", "reopen", "read_state", "write_raw", "write_restored", "finalize", "close"} <= set(members)
    for name in members:
        want = inspect.signature(getattr(Store, name))
        got = inspect.signature(getattr(RunStore, name))
        assert list(got.parameters) == list(want.parameters), name
    store = RunStore.open(tmp_path, make_start(), cfg(fsync=False), VERSION)
    for attr in Store.__annotations__:
        assert hasattr(store, attr), attr
    store.close()


def _t_scale(store: RunStore, name: str) -> float:
    meta = json.loads((store.path / name / "zarr.json").read_text())
    return meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][0]


def test_an_unknown_frame_interval_is_measured_at_finalize(tmp_path: Path, cfg) -> None:
    """A hook that does not know its interval announces none; the t axis must not claim 1 s per frame."""
    store = RunStore.open(tmp_path, make_start(frame_interval_s=None), cfg(fsync=False), VERSION)
    frames = [frame(s, t=s) for s in range(6)]
    frames = [(f.model_copy(update={"timestamp": 1000.0 + 0.04 * f.seq}), px) for f, px in frames]
    store.write_raw(frames)
    store.finalize(End(run="run1", frames=6))
    assert _t_scale(store, "raw") == pytest.approx(0.04, rel=1e-3)
    assert _t_scale(store, "restored") == pytest.approx(0.04, rel=1e-3)
    store.close()


def test_an_announced_frame_interval_is_kept(tmp_path: Path, cfg) -> None:
    store = RunStore.open(tmp_path, make_start(frame_interval_s=0.5), cfg(fsync=False), VERSION)
    store.write_raw([frame(s, t=s) for s in range(4)])  # timestamps 1 s apart
    store.finalize(End(run="run1", frames=4))
    assert _t_scale(store, "raw") == 0.5
    store.close()


def test_two_seqs_for_one_index_in_one_batch_store_the_last(tmp_path: Path, cfg) -> None:
    # A hook that re-took a time point sends a second seq for the same index; when both land in one
    # write batch they used to be written in parallel to the same chunk file, and some indices kept the
    # first seq's pixels while the records (and the index) named the second.
    n = 300
    store = RunStore.open(tmp_path, make_start(), cfg(fsync=False), VERSION)
    # adjacent in the batch, so the two writes of an index overlap on the pool
    batch = [f for t in range(n) for f in (frame(t, t=t), frame(n + t, t=t))]
    assert sorted(store.write_raw(batch)) == list(range(2 * n))
    wrong = [t for t in range(n) if not np.array_equal(store.read_raw(FrameIndex(t=t)), pixels(n + t))]
    assert wrong == []
    assert [store.seq_of(FrameIndex(t=t)) for t in range(n)] == [n + t for t in range(n)]
    store.close()
    # the records agree with the chunks after a reopen: the last record of each index is the winner
    reopened = RunStore.open(tmp_path, make_start(), cfg(fsync=False), VERSION)
    assert [reopened.seq_of(FrameIndex(t=t)) for t in range(n)] == [n + t for t in range(n)]
    assert all(np.array_equal(reopened.read_raw(FrameIndex(t=t)), pixels(n + t)) for t in range(n))
    assert reopened.raw_count() == 2 * n  # both seqs count as stored: the first is acked, not resent
    reopened.close()
