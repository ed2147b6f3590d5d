"""The per-frame tables of one run: which raw frame sits at each (p, t, c, z), which are restored, by whom.

Pure numpy: no I/O, no lock. The run store calls :class:`RunIndex` under its state lock; the tests call it
bare (``tests/test_store_index.py``). Everything here is rebuilt from the record logs on reopen, so none
of it is ever written as is.

Per-frame bookkeeping lives in numpy, not in Python objects: a run of 10 hours at 100 frames/s has 3.6 M
frames, and a set entry or dict item per frame (~0.7 KB with its tuples) would grow the daemon by GBs.
"""

from __future__ import annotations

import numpy as np

from lowdose.wire.protocol import FrameIndex

#: Restoration status codes in ``lowdose/tables/restored_status``.
STATUS_CODES: dict[str, int] = {"pending": 0, "live": 1, "backfill": 2}
KIND_RAW, KIND_RESTORED, KIND_UNCERTAINTY = "raw", "restored", "uncertainty"
MAX_SEQ_OR_T = 1 << 62  # both land in int64 arithmetic

Key = tuple[int, int, int, int]  # (p, t, c, z)

BLOCK_T = 256  # time points per block of cells: a far-out t costs one block, not a grid reaching it
# cells per block at most: a frame at a far c or z (C x Z up to 16384) costs a block of fewer time
# points, not 256 of them (48 MiB); 16384 cells are 192 KiB
BLOCK_CELLS = 1 << 14
CELL = np.dtype([("seq", "<i8"), ("status", "u1"), ("model", "<i2"), ("unc", "?")])  # packed: 12 bytes
EMPTY_CELL = np.array((-1, 0, -1, False), dtype=CELL)  # no raw frame, not restored, no uncertainty


class SeqSet:
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


class Cells:
    """Per-frame state of one position's (t, c, z) indices: blocks of ``bt`` time points x C x Z cells.

    A cell holds the seq of the raw frame stored there (-1: none), its restoration status code and model id
    (0 and -1: not restored), and whether its uncertainty map is stored. Blocks take the position's current
    C x Z; a block laid out before C or Z grew is re-laid out when next used, so growth costs nothing up front.
    ``bt`` is ``BLOCK_T`` unless C x Z is large: then blocks hold fewer time points, so that no block
    exceeds ``BLOCK_CELLS`` cells; growing past that splits the existing blocks (:meth:`fit`).
    """

    def __init__(self, sizes: list[int]):
        self.sizes = sizes  # the index's [C, Z] of this position: the same list, grown in place
        self.blocks: dict[int, np.ndarray] = {}
        self.bt = block_t(sizes[0] * sizes[1])

    def fit(self) -> bool:
        """Split blocks if C x Z grew past what ``bt`` time points per block allow; whether they were split."""
        bt = block_t(self.sizes[0] * self.sizes[1])
        if bt >= self.bt:
            return False
        k = self.bt // bt
        split: dict[int, np.ndarray] = {}
        for bn, blk in self.blocks.items():
            for j in range(k):
                piece = blk[j * bt:(j + 1) * bt]
                if (piece["seq"] >= 0).any():
                    split[bn * k + j] = piece.copy()
        self.blocks, self.bt = split, bt
        return True

    def block(self, bn: int, create: bool = False, cz: tuple[int, int] = (0, 0)) -> np.ndarray | None:
        """Block ``bn``; ``create``: made (or widened) to hold at least ``cz`` channels x slices.

        A block keeps the C x Z extent its frames needed: cells outside it are empty, so a frame at a far
        c or z widens only its own block, never the long past of the run.
        """
        self.fit()
        blk = self.blocks.get(bn)
        if not create:
            return blk
        c, z = cz
        if blk is None:
            blk = self.blocks[bn] = np.full((self.bt, c, z), EMPTY_CELL)
        elif blk.shape[1] < c or blk.shape[2] < z:
            grown = np.full((self.bt, max(c, blk.shape[1]), max(z, blk.shape[2])), EMPTY_CELL)
            grown[:, : blk.shape[1], : blk.shape[2]] = blk
            blk = self.blocks[bn] = grown
        return blk

    def cell(self, t: int, c: int, z: int, create: bool = False) -> np.void | None:
        """The cell at (t, c, z), a view that writes through; None if nothing can be stored there yet."""
        if c >= self.sizes[0] or z >= self.sizes[1]:
            return None
        blk = self.block(t // self.bt, create, (c + 1, z + 1))
        if blk is None or c >= blk.shape[1] or z >= blk.shape[2]:
            return None
        return blk[t % self.bt, c, z]

    def sorted_blocks(self) -> list[tuple[int, np.ndarray]]:
        """Every block by t (each with its own C x Z extent)."""
        self.fit()
        return sorted(self.blocks.items(), key=lambda kv: kv[0])


def full_extent(blk: np.ndarray, mask: np.ndarray, cz: tuple[int, int], fill: bool) -> np.ndarray:
    """``mask`` of a block's cells widened to C x Z; cells beyond the block's extent are ``fill``."""
    if blk.shape[1:] == cz:
        return mask
    out = np.full((len(blk), *cz), fill)
    c, z = min(cz[0], blk.shape[1]), min(cz[1], blk.shape[2])
    out[:, :c, :z] = mask[:, :c, :z]
    return out


def block_t(cz: int) -> int:
    """Time points per block for C x Z cells per time point: a power of two, 1 to ``BLOCK_T``."""
    bt = BLOCK_T
    while bt > 1 and bt * max(cz, 1) > BLOCK_CELLS:
        bt //= 2
    return bt


class RunIndex:
    """The cells of every position, the stored seqs, and the counts kept up to date as frames are noted.

    Counts are maintained incrementally so the daemon's hot queries (``pending``, the first frames of the
    backlog) cost O(1) or O(blocks holding pending frames), never O(frames in the run).
    """

    def __init__(self, default_cz: tuple[int, int]):
        self.default_cz = default_cz
        self.sizes: dict[int, list[int]] = {}  # p -> [C, Z]
        self.seqs = SeqSet()
        self.cells: dict[int, Cells] = {}  # p -> what is stored at each of its indices
        self.status_n = [0] * len(STATUS_CODES)  # restored frames per status code (code 0 unused)
        self.pending = 0  # raw frames stored and not restored
        # blocks (p, block) holding pending frames -> how many, and their lowest pending seq (cached until
        # the block changes): the backlog query visits only these, never the long restored past of a run
        self._pending_blocks: dict[tuple[int, int], int] = {}
        self._pending_min: dict[tuple[int, int], int] = {}
        self._frames: dict[tuple[int, str], int] = {}  # (p, kind) -> indices with a frame of that kind
        self._t_end: dict[tuple[int, str], int] = {}  # (p, kind) -> highest t with such a frame, plus one

    def add_position(self, p: int) -> None:
        self.cells[p] = Cells(self.sizes.setdefault(p, list(self.default_cz)))

    def grow(self, key: Key) -> bool:
        """Widen position ``key[0]``'s C and Z to hold ``key``; whether they grew."""
        sizes = self.sizes.setdefault(key[0], list(self.default_cz))
        grown = False
        if key[2] >= sizes[0]:
            sizes[0] = key[2] + 1
            grown = True
        if key[3] >= sizes[1]:
            sizes[1] = key[3] + 1
            grown = True
        cells = self.cells.get(key[0])
        if grown and cells is not None and cells.fit():
            self._recount_pending(key[0], cells)
        return grown

    def _recount_pending(self, p: int, cells: Cells) -> None:
        """Position ``p``'s blocks were split: its pending-block bookkeeping, counted again."""
        for b in [b for b in self._pending_blocks if b[0] == p]:
            del self._pending_blocks[b]
            self._pending_min.pop(b, None)
        for bn, blk in cells.blocks.items():
            n = int(pending_mask(blk).sum())
            if n:
                self._pending_blocks[(p, bn)] = n

    def seq_at(self, key: Key) -> int:
        """The seq of the raw frame stored at ``key``; -1 if none."""
        cells = self.cells.get(key[0])
        cell = None if cells is None else cells.cell(key[1], key[2], key[3])
        return -1 if cell is None else int(cell["seq"])

    def restored_at(self, key: Key) -> bool:
        """Whether a restoration is stored for the raw frame at ``key``."""
        cells = self.cells.get(key[0])
        cell = None if cells is None else cells.cell(key[1], key[2], key[3])
        return cell is not None and int(cell["status"]) != 0

    def note_raw(self, key: Key, seq: int) -> int:
        """Raw frame ``seq`` is stored at ``key`` (its C, Z already grown); returns the seq it replaced, -1 if none."""
        p, t, c, z = key
        self.seqs.add(seq)
        cell = self.cells[p].cell(t, c, z, create=True)
        assert cell is not None  # grow() made room
        prev = int(cell["seq"])
        cell["seq"] = seq
        if cell["status"] == 0:  # pending: new, or (replaced) under another seq
            block = (p, t // self.cells[p].bt)
            self._pending_min.pop(block, None)
            if prev < 0:
                self.pending += 1
                self._pending_blocks[block] = self._pending_blocks.get(block, 0) + 1
        if prev < 0:
            self._mark(p, KIND_RAW, t)
        return prev

    def note_restored(self, key: Key, code: int, model: int, uncertainty: bool) -> None:
        """The restoration of the raw frame stored at ``key`` is stored (and its uncertainty map, if said)."""
        p, t, c, z = key
        cell = self.cells[p].cell(t, c, z)
        assert cell is not None  # callers checked the raw frame is there
        prev = int(cell["status"])
        if prev == 0:
            block = (p, t // self.cells[p].bt)
            self._pending_min.pop(block, None)
            self.pending -= 1
            left = self._pending_blocks[block] - 1
            if left:
                self._pending_blocks[block] = left
            else:
                del self._pending_blocks[block]
            self._mark(p, KIND_RESTORED, t)
        else:
            self.status_n[prev] -= 1
        self.status_n[code] += 1
        cell["status"] = code
        cell["model"] = model
        if uncertainty and not cell["unc"]:
            cell["unc"] = True
            self._mark(p, KIND_UNCERTAINTY, t)

    def _mark(self, p: int, kind: str, t: int) -> None:
        """A frame of ``kind`` is now stored at an index of position ``p`` that had none."""
        k = (p, kind)
        self._frames[k] = self._frames.get(k, 0) + 1
        self._t_end[k] = max(self._t_end.get(k, 0), t + 1)

    def frames(self, p: int, kind: str) -> int:
        """Indices of position ``p`` with a frame of ``kind`` stored."""
        return self._frames.get((p, kind), 0)

    def t_end(self, p: int, kind: str) -> int:
        """The highest t of position ``p`` with a frame of ``kind`` stored, plus one (0: none)."""
        return self._t_end.get((p, kind), 0)

    def restored_count(self) -> int:
        return sum(self.status_n)

    def status_counts(self) -> dict[str, int]:
        counts = {name: self.status_n[code] for name, code in STATUS_CODES.items()}
        counts["pending"] = self.pending
        return counts

    def pending_rows(self, limit: int | None) -> list[np.ndarray]:
        """(seq, p, t, c, z) rows of pending frames, at least the ``limit`` lowest seqs among them."""
        rows: list[np.ndarray] = []
        # the restore loop asks for a batch every idle turn: visit blocks by their lowest pending seq and
        # stop once no further block can hold one of the first `limit`
        kth: int | None = None
        for low, (p, bn) in sorted((self._lowest_pending(b), b) for b in self._pending_blocks):
            if kth is not None and low > kth:
                break
            blk = self.cells[p].block(bn)
            assert blk is not None
            rows.append(rows_where(blk, pending_mask(blk), p, bn * len(blk)))
            if limit is not None and sum(len(r) for r in rows) >= limit:
                kth = int(np.partition(np.concatenate(rows)[:, 0], limit - 1)[limit - 1])
        return rows

    def raw_rows(self) -> list[np.ndarray]:
        """(seq, p, t, c, z) rows of every raw frame stored."""
        return [
            rows_where(blk, blk["seq"] >= 0, p, bn * len(blk)) for p, cells in self.cells.items()
            for bn, blk in cells.sorted_blocks()
        ]

    def _lowest_pending(self, block: tuple[int, int]) -> int:
        low = self._pending_min.get(block)
        if low is None:
            blk = self.cells[block[0]].block(block[1])
            assert blk is not None
            low = self._pending_min[block] = int(blk["seq"][pending_mask(blk)].min())
        return low

    def complete_prefix(self, p: int, kind: str, t: int) -> int:
        """The first time point at or after ``t`` that lacks some (c, z) of ``kind`` at position ``p``."""
        cells = self.cells[p]
        while True:
            bn, off = divmod(t, cells.bt)
            blk = cells.block(bn)
            if blk is None:
                return t
            if list(blk.shape[1:]) != self.sizes[p]:
                return t  # the block lacks the (c, z) beyond its extent at every time point
            full = present(blk[off:], kind).all(axis=(1, 2))
            if not full.all():
                return t + int(np.argmin(full))
            t = (bn + 1) * cells.bt

    def status_and_model(self, ps: np.ndarray, ts: np.ndarray, cs: np.ndarray, zs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Restoration status code and model id at each (p, t, c, z) row; (0, -1) where nothing is stored."""
        status = np.zeros(len(ps), np.uint8)
        model = np.full(len(ps), -1, np.int16)
        bts = {p: cells.bt for p, cells in self.cells.items()}
        for rows, p, bn in group_by_block(ps, ts, bts):
            cells = self.cells.get(p)
            blk = None if cells is None else cells.block(bn)
            if blk is not None:
                rows = rows[(cs[rows] < blk.shape[1]) & (zs[rows] < blk.shape[2])]
                cell = blk[ts[rows] % cells.bt, cs[rows], zs[rows]]
                status[rows] = cell["status"]
                model[rows] = cell["model"]
        return status, model


def present(blk: np.ndarray, kind: str) -> np.ndarray:
    """Which cells of a block have an image of ``kind`` stored."""
    if kind == KIND_RAW:
        return blk["seq"] >= 0
    if kind == KIND_RESTORED:
        return blk["status"] > 0
    return blk["unc"]


def pending_mask(blk: np.ndarray) -> np.ndarray:
    return (blk["seq"] >= 0) & (blk["status"] == 0)


def rows_where(blk: np.ndarray, mask: np.ndarray, p: int, t0: int) -> np.ndarray:
    """(seq, p, t, c, z) rows, int64, of the cells in ``mask`` of a block starting at time point ``t0``."""
    tt, cc, zz = np.nonzero(mask)
    return np.stack([blk["seq"][tt, cc, zz], np.full_like(tt, p), tt + t0, cc, zz], axis=1).astype(np.int64)


def indices_by_seq(rows: list[np.ndarray], limit: int | None) -> list[FrameIndex]:
    """The indices of (seq, p, t, c, z) rows in seq order; the first ``limit`` only."""
    if not rows:
        return []
    table = np.concatenate(rows)
    table = table[np.argsort(table[:, 0], kind="stable")[:limit]]
    return [FrameIndex(p=p, t=t, c=c, z=z) for _, p, t, c, z in table.tolist()]


def seq_ranges(seqs: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive [first, last] ranges of ascending unique ``seqs``: what an ack carries."""
    if not len(seqs):
        return []
    breaks = np.flatnonzero(np.diff(seqs) != 1)
    firsts = np.concatenate([seqs[:1], seqs[breaks + 1]])
    lasts = np.concatenate([seqs[breaks], seqs[-1:]])
    return list(zip(firsts.tolist(), lasts.tolist()))


def gaps(seqs: np.ndarray, end: int) -> list[list[int]]:
    """Inclusive [first, last] ranges of 0..end-1 missing from ``seqs`` (ascending, unique, all < end)."""
    before = np.concatenate([[-1], seqs])
    after = np.concatenate([seqs, [end]])
    gap = np.flatnonzero(after - before > 1)
    return np.stack([before[gap] + 1, after[gap] - 1], axis=1).tolist()


def channel_picks(cells: Cells, kind: str) -> dict[int, list[tuple[int, int]]]:
    """Per channel, the (t, z) of its first, middle and last frame of ``kind`` in (t, z) order."""
    blocks = cells.sorted_blocks()
    if not blocks:
        return {}
    cz = tuple(cells.sizes)
    masks = [full_extent(blk, present(blk, kind), cz, False) for _, blk in blocks]
    per = np.stack([m.sum(axis=(0, 2)) for m in masks])  # frames per block and channel
    ends = np.cumsum(per, axis=0)
    out: dict[int, list[tuple[int, int]]] = {}
    for c in np.flatnonzero(ends[-1]).tolist():
        n = int(ends[-1, c])
        for k in sorted({0, n // 2, n - 1}):
            b = int(np.searchsorted(ends[:, c], k, side="right"))
            tt, zz = np.nonzero(masks[b][:, c, :])
            j = k - int(ends[b, c] - per[b, c])
            out.setdefault(c, []).append((blocks[b][0] * cells.bt + int(tt[j]), int(zz[j])))
    return out


def missing_indices(cells: Cells, shape: tuple[int, int, int], limit: int) -> list[tuple[int, int, int]]:
    """The first ``limit`` (t, c, z) within ``shape`` that have no raw frame, in (t, c, z) order."""
    t_n, c_n, z_n = shape
    out: list[tuple[int, int, int]] = []
    bn = 0
    # every absent block holds a missing index, so this ends after at most `limit` of them
    bt = cells.bt
    while len(out) < limit and bn * bt < t_n:
        rows = min(bt, t_n - bn * bt)
        blk = cells.block(bn)
        need = limit - len(out)
        if blk is None:
            tcz = np.stack(np.unravel_index(np.arange(min(need, rows * c_n * z_n)), (rows, c_n, z_n)), axis=1)
        else:
            tcz = np.argwhere(full_extent(blk, blk["seq"] < 0, (c_n, z_n), True)[:rows])[:need]
        out.extend((bn * bt + t, c, z) for t, c, z in tcz.tolist())
        bn += 1
    return out


def group_by_block(ps: np.ndarray, ts: np.ndarray, bts: dict[int, int] | None = None) -> list[tuple[np.ndarray, int, int]]:
    """Rows grouped by (p, t's block): (rows, p, block) for each group; ``bts``: time points per block by p."""
    if not len(ps):
        return []
    per = np.full(len(ps), BLOCK_T, np.int64)
    for p, bt in (bts or {}).items():
        if bt != BLOCK_T:
            per[ps == p] = bt
    bns = ts.astype(np.int64) // per
    order = np.lexsort((bns, ps))
    p_s, bn_s = ps[order], bns[order]
    starts = np.flatnonzero(np.concatenate([[True], (p_s[1:] != p_s[:-1]) | (bn_s[1:] != bn_s[:-1])]))
    stops = np.append(starts[1:], len(order))
    return [(order[a:b], int(p_s[a]), int(bn_s[a])) for a, b in zip(starts.tolist(), stops.tolist())]
