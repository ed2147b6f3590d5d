"""The sharded writer beyond the conformance suite: readers during writes, recovery of shard indexes,
a SIGKILLed daemon mid-shard, file counts, and the records where Zarr tools don't trip on them."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from lowdose.daemon.config import StorageConfig
from lowdose.daemon.store import RunStore
from lowdose.daemon.store.shards import EMPTY, default_shard_frames
from lowdose.plugins.denoisers.interface import DenoiserInfo
from lowdose.wire.protocol import End, Frame, FrameIndex, Start

Y, X = 16, 24
# restored_dtype="input": these tests write restored frames in the camera's dtype (the default is float32)
VERSION = "9.9.9-test"
INFO = DenoiserInfo(name="testnet", version="1", has_uncertainty=True)
_SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


def start(**kw) -> Start:
    return Start(**{"run": "run1", "shape": (Y, X), "dtype": "uint16", **kw})


def pixels(seq: int) -> np.ndarray:
    rng = np.random.default_rng(seq)
    px = (100 + rng.poisson(6, (Y, X))).astype(np.uint16)
    px[0, 0] = 1000 + seq
    return px


def frame(seq: int, t: int, c: int = 0) -> tuple[Frame, np.ndarray]:
    return Frame(run="run1", seq=seq, index=FrameIndex(t=t, c=c), shape=(Y, X), dtype="uint16"), pixels(seq)


def shard_index(store: RunStore, name: str, shard: int, c: int = 0) -> np.ndarray:
    n = store.plan.shard_frames
    data = (store.path / name / "0" / "c" / str(shard) / str(c) / "0" / "0" / "0").read_bytes()
    return np.frombuffer(data[: 16 * n], "<u8").reshape(n, 2)


def test_default_is_sharded_with_shards_sized_from_the_frame() -> None:
    assert StorageConfig().layout == "sharded" and StorageConfig().shard_frames is None
    assert default_shard_frames(2048 * 2048 * 2) == 64
    assert default_shard_frames(1024 * 1024 * 2) == 256 and default_shard_frames(16 * 16 * 2) == 256
    with pytest.raises(ValueError):
        StorageConfig(layout="tiff")


def test_zarr_and_tensorstore_read_every_frame_while_written_and_finished(tmp_path: Path) -> None:
    import tensorstore as ts

    store = RunStore.open(tmp_path, start(sizes={"c": 2}), StorageConfig(restored_dtype="input", fsync=False, shard_frames=8), VERSION)
    path = store.path / "raw" / "0"
    stop = threading.Event()
    problems: list[str] = []
    seen = {"zarr": 0, "tensorstore": 0}
    expect: dict[tuple[int, int], np.ndarray] = {}

    def check(name: str, arr: np.ndarray) -> None:
        for t in range(arr.shape[0]):
            for c in range(arr.shape[1]):
                if not np.array_equal(arr[t, c, 0], expect[(t, c)]):
                    problems.append(f"{name}: t={t} c={c} differs (fill or torn)")
        seen[name] += 1

    def reader() -> None:
        while not stop.is_set():
            try:
                check("zarr", zarr.open_array(path, mode="r")[:])
                spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
                check("tensorstore", ts.open(spec, read=True, context=ts.Context()).result().read().result())
            except Exception as exc:  # noqa: BLE001 - any failure to read a store being written is the finding
                problems.append(repr(exc))

    th = threading.Thread(target=reader)
    th.start()
    try:
        seq = 0
        for t in range(40):  # five shards per channel; the second channel first, so t completes late
            for c in (1, 0):
                expect[(t, c)] = pixels(seq)
                store.write_raw([frame(seq, t, c)])
                seq += 1
    finally:
        stop.set()
        th.join()
    assert problems == [] and seen["zarr"] > 0 and seen["tensorstore"] > 0, (problems[:3], seen)
    store.finalize(End(run="run1", frames=80))
    assert len(list((store.path / "raw" / "0" / "c").glob("*/*/*/0/0"))) == 10  # 5 shards x 2 channels
    check("zarr", zarr.open_array(path, mode="r")[:])
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
    check("tensorstore", ts.open(spec, read=True).result().read().result())
    assert problems == []
    store.close()


def test_reopen_rebuilds_shard_indexes_from_the_records(tmp_path: Path) -> None:
    """As after a SIGKILL: bytes appended but never recorded, an index entry never rewritten, a record
    whose bytes a power cut took: the index after reopening names exactly the recorded frames."""
    cfg = StorageConfig(restored_dtype="input", fsync=False, shard_frames=8)
    a = RunStore.open(tmp_path, start(), cfg, VERSION)
    a.write_raw([frame(s, s) for s in range(12)])  # shard 0 full, shard 1 half
    unc = np.full((Y, X), 0.5, np.float32)
    a.write_restored([(FrameIndex(t=t), pixels(t) + 1, unc) for t in range(10)], INFO, "live")
    shard1 = a.path / "raw/0/c/1/0/0/0/0"
    recorded = shard1.stat().st_size
    with open(shard1, "r+b") as f:  # frame t=12 appended and indexed, killed before its record
        f.seek(recorded)
        f.write(b"\x07" * 300)
        f.seek(16 * 4)
        f.write(np.array([recorded, 300], "<u8").tobytes())
    # the restored frame of t=9 lost its bytes (no fsync, power cut): its record must be dropped
    rshard = a.path / "restored/0/c/1/0/0/0/0"
    rsize = rshard.stat().st_size
    last = shard_index(a, "restored", 1)[1]
    assert int(last[0]) + int(last[1]) == rsize
    with open(rshard, "r+b") as f:
        f.truncate(rsize - 5)

    b = RunStore.reopen(a.path, cfg, VERSION)  # `a` never closed
    assert b.raw_seqs() == set(range(12)) and b.restored_count() == 9
    assert b.unrestored() == [FrameIndex(t=t) for t in (9, 10, 11)]
    index = shard_index(b, "raw", 1)
    assert (index[4:] == EMPTY).all() and shard1.stat().st_size == recorded
    recs = [json.loads(x) for x in (b.path / "lowdose/records/frames.jsonl").read_text().splitlines()]
    for r in recs:
        assert shard_index(b, "raw", r["t"] // 8)[r["t"] % 8].tolist() == r["at"]
    assert (shard_index(b, "restored", 1)[1] == EMPTY).all()
    raw = zarr.open_array(b.path / "raw" / "0", mode="r")
    np.testing.assert_array_equal(raw[:, 0, 0], np.stack([pixels(s) for s in range(12)]))
    # the hook resends seq 12 and the restorer redoes t=9: both land after what the records name
    assert b.write_raw([frame(12, 12)]) == [12]
    b.write_restored([(FrameIndex(t=9), pixels(9) + 1, unc)], INFO, "backfill")
    np.testing.assert_array_equal(zarr.open_array(b.path / "raw" / "0", mode="r")[12, 0, 0], pixels(12))
    np.testing.assert_array_equal(zarr.open_array(b.path / "restored" / "0", mode="r")[9, 0, 0], pixels(9) + 1)
    b.close()
    a.close()


def test_file_count_stays_below_one_per_fifty_frames(tmp_path: Path) -> None:
    store = RunStore.open(tmp_path, start(), StorageConfig(restored_dtype="input", fsync=False), VERSION)
    n = 1200
    for s in range(0, n, 50):
        store.write_raw([frame(k, k) for k in range(s, s + 50)])
    store.write_restored([(FrameIndex(t=t), pixels(t), None) for t in range(n)], INFO, "backfill")
    store.finalize(End(run="run1", frames=n))
    for name in ("raw", "restored"):
        files = [p for p in (store.path / name).rglob("*") if p.is_file()]
        data = [p for p in files if p.name != "zarr.json"]
        assert len(data) == -(-n // store.plan.shard_frames) and len(files) <= n / 50 + 2, (name, len(files))
    store.close()


def test_walking_the_whole_store_warns_about_nothing(tmp_path: Path) -> None:
    store = RunStore.open(tmp_path, start(sizes={"c": 2}), StorageConfig(restored_dtype="input", fsync=False, shard_frames=4), VERSION)
    store.write_raw([frame(s, s // 2, s % 2) for s in range(10)])
    store.write_restored([(FrameIndex(t=0, c=c), pixels(c), np.ones((Y, X), np.float32)) for c in (0, 1)], INFO, "live")
    store.finalize(End(run="run1", frames=10))
    assert (store.path / "lowdose/records/frames.jsonl").is_file()
    assert not (store.path / "lowdose/frames.jsonl").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Object at frames.jsonl is not recognized ..." would raise
        members = dict(zarr.open_group(store.path, mode="r").members(max_depth=None))
    assert {"raw/0", "restored/0", "uncertainty/0", "lowdose/records", "lowdose/tables/seq"} <= set(members)
    assert members["lowdose/records"].shape == (0,)
    store.close()


def test_a_store_with_its_records_in_the_old_place_still_opens(tmp_path: Path) -> None:
    """Stores written before the records moved keep lowdose/frames.jsonl (and one file per frame)."""
    cfg = StorageConfig(restored_dtype="input", fsync=False, layout="chunk_per_frame")
    old = RunStore.open(tmp_path, start(), cfg, VERSION)
    old.write_raw([frame(s, s) for s in range(4)])
    old.write_restored([(FrameIndex(t=0), pixels(0), None)], INFO, "live")
    old.close()
    # what the previous version left on disk: records in the lowdose group, no layout in the root
    for name in ("frames.jsonl", "restored.jsonl"):
        shutil.move(old.path / "lowdose/records" / name, old.path / "lowdose" / name)
    shutil.rmtree(old.path / "lowdose/records")
    root = json.loads((old.path / "zarr.json").read_text())
    attrs = root["attributes"]["lowdose"]
    del attrs["storage"]["layout"], attrs["storage"]["shard_frames"]
    attrs["records"] = {"frames": "lowdose/frames.jsonl", "restored": "lowdose/restored.jsonl"}
    (old.path / "zarr.json").write_text(json.dumps(root))

    again = RunStore.reopen(old.path, StorageConfig(restored_dtype="input", fsync=False), VERSION)  # the config now says sharded
    assert again.plan.layout == "chunk_per_frame" and again.plan.records == "lowdose"
    assert again.raw_seqs() == {0, 1, 2, 3} and again.restored_count() == 1
    again.write_raw([frame(4, 4)])
    summary = again.finalize(End(run="run1", frames=5))
    assert summary["frames_written"] == 5 and summary["tables"]["rows"] == 5
    assert len((old.path / "lowdose/frames.jsonl").read_text().splitlines()) == 5
    assert not (old.path / "lowdose/records").exists()
    np.testing.assert_array_equal(zarr.open_array(old.path / "raw" / "0", mode="r")[4, 0, 0], pixels(4))
    again.close()


@pytest.fixture(scope="module")
def soak_module():
    spec = importlib.util.spec_from_file_location("lowdose_soak_sharded", _SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_sigkilled_daemon_mid_shard_loses_and_duplicates_nothing(soak_module, tmp_path: Path) -> None:
    # shards of 16 frames: each kill lands inside a shard being appended to
    result = soak_module.soak(150, 2, rate=60.0, seed=3, pauses=(0.1, 0.4), finish_timeout=60.0,
                              finalize_timeout=20.0, work=tmp_path, storage={"layout": "sharded", "shard_frames": 16})
    print(result.line())
    assert result.kills == 2, result
    assert (result.lost, result.duplicated, result.corrupted, result.index_mismatches) == (0, 0, 0, 0), result
    assert result.intact == result.sent == 150 and result.finalized and result.spooled == 0, result
    attrs = json.loads((tmp_path / "data" / "soak-3.ome.zarr" / "zarr.json").read_text())["attributes"]["lowdose"]
    assert attrs["storage"]["layout"] == "sharded" and attrs["storage"]["shard_frames"] == 16


def test_more_open_shards_than_kept_open_with_raw_and_restored_threads(tmp_path: Path) -> None:
    """72 channels: 72 shards per image being appended to, more than stay open; the raw writer and the
    restorer open and close them concurrently and every frame still lands where its index says."""
    c_n, t_n = 72, 4
    store = RunStore.open(tmp_path, start(sizes={"c": c_n}), StorageConfig(restored_dtype="input", fsync=False, shard_frames=4), VERSION)
    errors: list[BaseException] = []
    done = threading.Event()

    def restorer() -> None:
        try:
            while not done.is_set() or store.unrestored_count():
                todo = store.unrestored(limit=40)
                if todo:
                    store.write_restored([(i, store.read_raw(i) + 1, None) for i in todo], INFO, "live")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    th = threading.Thread(target=restorer)
    th.start()
    try:
        for t in range(t_n):
            store.write_raw([frame(t * c_n + c, t, c) for c in range(c_n)])
    finally:
        done.set()
        th.join(60)
    assert errors == [] and not th.is_alive()
    raw = zarr.open_array(store.path / "raw" / "0", mode="r")[:]
    restored = zarr.open_array(store.path / "restored" / "0", mode="r")[:]
    assert raw.shape[:3] == restored.shape[:3] == (t_n, c_n, 1)
    for t in range(t_n):
        for c in range(c_n):
            np.testing.assert_array_equal(raw[t, c, 0], pixels(t * c_n + c))
    np.testing.assert_array_equal(restored, raw + 1)
    store.close()


def test_disk_full_while_a_new_shard_is_created_then_space_again(tmp_path: Path, monkeypatch) -> None:
    from lowdose.daemon.store import StoreError
    from lowdose.daemon.store import shards as shards_mod

    store = RunStore.open(tmp_path, start(), StorageConfig(restored_dtype="input", shard_frames=4), VERSION)
    store.write_raw([frame(s, s) for s in range(4)])  # shard 0 full; t=4 opens shard 1
    real = shards_mod._write_at

    def full(fd, offset, bufs):  # the new shard's file exists, its index only half written
        real(fd, offset, [memoryview(bufs[0]).cast("B")[:10]])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards_mod, "_write_at", full)
    with pytest.raises(StoreError, match="disk is full"):
        store.write_raw([frame(4, 4)])
    assert not store.has_seq(4) and (store.path / "raw/0/c/1/0/0/0/0").stat().st_size == 10
    monkeypatch.setattr(shards_mod, "_write_at", real)
    assert store.write_raw([frame(4, 4), frame(5, 5)]) == [4, 5]
    raw = zarr.open_array(store.path / "raw" / "0", mode="r")
    np.testing.assert_array_equal(raw[:, 0, 0], np.stack([pixels(s) for s in range(6)]))
    store.close()
    again = RunStore.reopen(store.path, StorageConfig(), VERSION)
    np.testing.assert_array_equal(again.read_raw(FrameIndex(t=5)), pixels(5))
    again.close()
