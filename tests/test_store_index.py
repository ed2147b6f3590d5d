"""The run store's per-frame tables (lowdose.daemon.store.index), alone: pure numpy, no disk."""

from __future__ import annotations

import numpy as np
import pytest

from lowdose.daemon.store.index import (
    BLOCK_T,
    KIND_RAW,
    KIND_RESTORED,
    KIND_UNCERTAINTY,
    STATUS_CODES,
    Cells,
    RunIndex,
    SeqSet,
    channel_picks,
    gaps,
    group_by_block,
    indices_by_seq,
    missing_indices,
    seq_ranges,
)
from lowdose.wire.protocol import FrameIndex

LIVE, BACKFILL = STATUS_CODES["live"], STATUS_CODES["backfill"]


def filled(cz: tuple[int, int] = (1, 1), keys: list[tuple[int, int, int, int]] = (), first_seq: int = 0) -> RunIndex:
    """An index with raw frames at ``keys``, numbered from ``first_seq`` in that order."""
    index = RunIndex(cz)
    for seq, key in enumerate(keys, first_seq):
        if key[0] not in index.cells:
            index.add_position(key[0])
        index.grow(key)
        index.note_raw(key, seq)
    return index


def pending(index: RunIndex, limit: int | None = None) -> list[FrameIndex]:
    return indices_by_seq(index.pending_rows(limit), limit)


def test_seq_set_is_dense_near_zero_and_sparse_far_out() -> None:
    seqs = SeqSet()
    for s in (0, 1, 5, 5, 3):
        seqs.add(s)
    assert len(seqs) == 4 and 5 in seqs and 2 not in seqs and -1 not in seqs
    far = 10**15
    seqs.add(far)
    assert far in seqs and far - 1 not in seqs and len(seqs) == 5
    assert seqs.sorted().tolist() == [0, 1, 3, 5, far]
    assert seqs.sorted().dtype == np.int64


def test_seq_set_folds_far_seqs_into_the_dense_part_as_it_grows() -> None:
    seqs = SeqSet()
    late = 100_000  # beyond what one stored seq may allocate densely: kept aside at first
    seqs.add(late)
    assert seqs._far == {late}
    for s in range(30_000):
        seqs.add(s)
    seqs.add(70_000)  # with 30,000 seqs stored the dense part may grow past both
    assert seqs._far == set()
    assert late in seqs and 70_000 in seqs and 69_999 not in seqs and len(seqs) == 30_002
    assert seqs.sorted().tolist() == [*range(30_000), 70_000, late]


def test_cells_keep_their_state_when_channels_and_z_grow() -> None:
    sizes = [1, 1]
    cells = Cells(sizes)
    assert cells.cell(3, 0, 0) is None  # no block yet, none made without `create`
    cells.cell(3, 0, 0, create=True)["seq"] = 7
    assert cells.cell(0, 1, 0, create=True) is None  # c=1 is outside the sizes
    sizes[:] = [2, 3]  # grown in place, as the index does
    assert int(cells.cell(3, 0, 0)["seq"]) == 7
    assert cells.cell(3, 1, 2) is None  # beyond the block's extent: nothing stored
    assert [bn for bn, blk in cells.sorted_blocks()] == [0]
    assert cells.sorted_blocks()[0][1].shape == (BLOCK_T, 1, 1)  # widened only when written beyond
    cells.cell(4, 1, 2, create=True)["seq"] = 8
    assert cells.sorted_blocks()[0][1].shape == (BLOCK_T, 2, 3) and int(cells.cell(3, 0, 0)["seq"]) == 7


def test_counts_follow_raw_and_restored_frames() -> None:
    index = filled(keys=[(0, t, 0, 0) for t in range(5)])
    assert index.pending == 5 and index.restored_count() == 0
    index.note_restored((0, 1, 0, 0), LIVE, 0, uncertainty=True)
    index.note_restored((0, 3, 0, 0), BACKFILL, 1, uncertainty=False)
    index.note_restored((0, 3, 0, 0), LIVE, 0, uncertainty=False)  # restored again: moves between counts
    assert index.status_counts() == {"pending": 3, "live": 2, "backfill": 0}
    assert index.frames(0, KIND_RAW) == 5 and index.frames(0, KIND_RESTORED) == 2
    assert index.frames(0, KIND_UNCERTAINTY) == 1 and index.t_end(0, KIND_UNCERTAINTY) == 2
    assert index.t_end(0, KIND_RESTORED) == 4 and index.t_end(1, KIND_RAW) == 0
    assert pending(index) == [FrameIndex(t=t) for t in (0, 2, 4)]


def test_a_later_seq_at_an_index_replaces_the_frame_without_counting_it_twice() -> None:
    index = filled(keys=[(0, 0, 0, 0), (0, 1, 0, 0)])
    assert index.note_raw((0, 0, 0, 0), 9) == 0
    assert index.seq_at((0, 0, 0, 0)) == 9 and index.seq_at((0, 5, 0, 0)) == -1 and index.seq_at((3, 0, 0, 0)) == -1
    assert index.pending == 2 and index.frames(0, KIND_RAW) == 2 and len(index.seqs) == 3
    assert pending(index) == [FrameIndex(t=1), FrameIndex(t=0)]  # by seq: 1, then 9


def test_pending_rows_give_the_lowest_seqs_across_blocks_and_positions() -> None:
    rng = np.random.default_rng(3)
    keys = [(p, t, c, 0) for p in range(2) for t in range(0, 3 * BLOCK_T, 5) for c in range(2)]
    order = rng.permutation(len(keys))
    index = RunIndex((2, 1))
    for p in range(2):
        index.add_position(p)
    seq_of = {}
    for seq, k in enumerate(order.tolist()):
        index.note_raw(keys[k], seq)
        seq_of[keys[k]] = seq
    for key in keys[::3]:
        index.note_restored(key, LIVE, 0, False)
        del seq_of[key]
    expect = [FrameIndex(p=p, t=t, c=c, z=z) for (p, t, c, z), _ in sorted(seq_of.items(), key=lambda kv: kv[1])]
    assert pending(index) == expect
    for limit in (1, 7, 100, len(expect) + 5):
        assert pending(index, limit) == expect[:limit]
    assert index.pending == len(expect)
    raw = indices_by_seq(index.raw_rows(), None)
    assert raw == [FrameIndex(p=k[0], t=k[1], c=k[2], z=k[3]) for k in (keys[i] for i in order.tolist())]


def test_complete_prefix_waits_for_every_channel_and_crosses_blocks() -> None:
    index = filled((2, 1), [(0, t, 0, 0) for t in range(BLOCK_T + 10)])
    assert index.complete_prefix(0, KIND_RAW, 0) == 0  # c=1 missing everywhere
    for seq, t in enumerate(range(BLOCK_T + 10), 1000):
        if t != BLOCK_T + 3:
            index.note_raw((0, t, 1, 0), seq)
    assert index.complete_prefix(0, KIND_RAW, 0) == BLOCK_T + 3
    assert index.complete_prefix(0, KIND_RAW, BLOCK_T + 4) == BLOCK_T + 10
    assert index.complete_prefix(0, KIND_RESTORED, 0) == 0


def test_grow_reports_when_channels_or_z_widen() -> None:
    index = RunIndex((2, 1))
    index.add_position(0)
    assert not index.grow((0, 0, 1, 0))
    assert index.grow((0, 0, 2, 0)) and index.sizes[0] == [3, 1]
    assert index.grow((0, 0, 0, 4)) and index.sizes[0] == [3, 5]
    assert index.grow((1, 0, 0, 0)) is False and index.sizes[1] == [2, 1]  # a new position starts at the default


def test_status_and_model_per_row() -> None:
    keys = [(0, 0, 0, 0), (0, BLOCK_T + 1, 0, 0), (1, 2, 0, 0)]
    index = filled(keys=keys)
    index.note_restored(keys[1], BACKFILL, 3, False)
    index.note_restored(keys[2], LIVE, 0, False)
    ps, ts, cs, zs = (np.array(col, np.int32) for col in zip(*keys, (0, 9, 0, 0), (5, 0, 0, 0)))
    status, model = index.status_and_model(ps, ts, cs, zs)
    assert status.tolist() == [0, BACKFILL, LIVE, 0, 0] and model.tolist() == [-1, 3, 0, -1, -1]
    assert status.dtype == np.uint8 and model.dtype == np.int16


def test_seq_ranges_and_gaps() -> None:
    seqs = np.array([0, 1, 2, 5, 7, 8, 40], np.int64)
    assert seq_ranges(seqs) == [(0, 2), (5, 5), (7, 8), (40, 40)]
    assert seq_ranges(np.array([], np.int64)) == []
    assert gaps(seqs, 42) == [[3, 4], [6, 6], [9, 39], [41, 41]]
    assert gaps(np.array([], np.int64), 3) == [[0, 2]]
    assert gaps(np.arange(4), 4) == []


def test_channel_picks_are_first_middle_and_last_in_t_z_order() -> None:
    keys = [(0, t, c, z) for t in range(0, 2 * BLOCK_T, 3) for c in range(2) for z in range(2) if not (c == 1 and t % 2)]
    index = filled((2, 2), keys)
    picks = channel_picks(index.cells[0], KIND_RAW)
    for c in (0, 1):
        tz = sorted((t, z) for _, t, cc, z in keys if cc == c)
        assert picks[c] == [tz[0], tz[len(tz) // 2], tz[-1]]
    assert channel_picks(index.cells[0], KIND_RESTORED) == {}
    index.note_restored((0, 3, 0, 1), LIVE, 0, False)
    assert channel_picks(index.cells[0], KIND_RESTORED) == {0: [(3, 1)]}
    assert channel_picks(Cells([1, 1]), KIND_RAW) == {}


def test_missing_indices_are_listed_in_order_up_to_the_limit() -> None:
    index = filled((2, 1), [(0, t, c, 0) for t in range(BLOCK_T + 2) for c in range(2) if (t, c) != (4, 1)])
    cells = index.cells[0]
    assert missing_indices(cells, (BLOCK_T + 2, 2, 1), 10) == [(4, 1, 0)]
    # beyond the written blocks every index is missing: a whole absent block, in (t, c, z) order
    far = missing_indices(cells, (3 * BLOCK_T, 2, 1), 5)
    assert far == [(4, 1, 0), (BLOCK_T + 2, 0, 0), (BLOCK_T + 2, 1, 0), (BLOCK_T + 3, 0, 0), (BLOCK_T + 3, 1, 0)]
    assert missing_indices(Cells([1, 1]), (10**9, 1, 1), 3) == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]


def test_group_by_block_partitions_rows() -> None:
    ps = np.array([1, 0, 0, 1, 0], np.int32)
    ts = np.array([5, BLOCK_T, 3, 7, 2 * BLOCK_T + 1], np.int32)
    groups = group_by_block(ps, ts)
    assert [(sorted(rows.tolist()), p, bn) for rows, p, bn in groups] == [([2], 0, 0), ([1], 0, 1), ([4], 0, 2), ([0, 3], 1, 0)]
    assert group_by_block(np.array([], np.int32), np.array([], np.int32)) == []


@pytest.mark.parametrize("cz", [(1, 1), (3, 2)])
def test_every_restore_empties_the_backlog_exactly_once(cz: tuple[int, int]) -> None:
    c_n, z_n = cz
    keys = [(0, t, c, z) for t in range(40) for c in range(c_n) for z in range(z_n)]
    index = filled(cz, keys)
    for k, key in enumerate(keys):
        index.note_restored(key, LIVE if k % 2 else BACKFILL, 0, False)
        assert index.pending == len(keys) - k - 1
    assert index.pending_rows(None) == [] and index.restored_count() == len(keys)


def test_a_frame_at_a_far_channel_and_slice_allocates_a_bounded_block() -> None:
    import tracemalloc

    index = filled(keys=[(0, t, 0, 0) for t in range(300)])
    index.note_restored((0, 7, 0, 0), LIVE, 0, uncertainty=False)
    tracemalloc.start()
    index.grow((0, 3, 15, 1000))  # C x Z becomes 16 x 1001: 256 time points of it would be 48 MiB
    index.note_raw((0, 3, 15, 1000), 999)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # blocks now hold one time point each; the earlier frames' blocks keep their 1 x 1 extent
    assert index.cells[0].bt == 1
    assert sorted(blk.nbytes for blk in index.cells[0].blocks.values())[-2:] == [12, 16 * 1001 * 12]
    assert peak < 1 << 20
    assert index.seq_at((0, 3, 15, 1000)) == 999 and index.seq_at((0, 299, 0, 0)) == 299
    assert index.pending == 300 and pending(index, 3) == [FrameIndex(t=t) for t in (0, 1, 2)]
    assert index.complete_prefix(0, KIND_RAW, 0) == 0
    status, model = index.status_and_model(*(np.array(v) for v in ([0, 0], [7, 8], [0, 0], [0, 0])))
    assert status.tolist() == [LIVE, 0] and model.tolist() == [0, -1]
    assert missing_indices(index.cells[0], (1, 16, 1001), 2) == [(0, 0, 1), (0, 0, 2)]
