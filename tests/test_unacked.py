"""UnackedFrames alone: a real Spool on tmp_path, no socket, no daemon."""

from __future__ import annotations

import numpy as np
import pytest

from lowdose.plugins.acquisition.spool import Spool
from lowdose.plugins.acquisition.unacked import UnackedFrames
from lowdose.wire.frame_header import FrameFields, encode_frame_header
from lowdose.wire.protocol import TAG, End, Start, decode, encode

RUN = "run-u"
SHAPE = (8, 8)
NBYTES = SHAPE[0] * SHAPE[1] * 2


def _pixels(seq: int) -> np.ndarray:
    return np.full(SHAPE, seq, np.uint16)


def _header(seq: int) -> bytes:
    return encode_frame_header(RUN, FrameFields(seq, _pixels(seq), {"t": seq}, 0.0, None, None, None))


def _ledger(tmp_path, frames_in_ram: float = 100) -> tuple[UnackedFrames, Spool]:
    spool = Spool(tmp_path, RUN)
    start = encode(Start(run=RUN, shape=SHAPE, dtype="uint16"))[1]
    return UnackedFrames(spool, start, int(frames_in_ram * NBYTES)), spool


def _fill(led: UnackedFrames, n: int, first: int = 0) -> None:
    for seq in range(first, first + n):
        led.accept(seq, _header(seq), _pixels(seq))


def _send_all(led: UnackedFrames, session: int = 0) -> list[int]:
    sent = []
    while (entry := led.next_to_send()) is not None:
        led.mark_sent(entry, session, 0.0)
        sent.append(entry.seq)
    return sent


def _decoded(parts) -> tuple[int, np.ndarray]:
    msg, payload = decode(parts)
    return msg.seq, np.frombuffer(payload, dtype=msg.dtype).reshape(msg.shape)


def test_frames_go_out_in_order_once_and_leave_only_on_ack(tmp_path):
    led, spool = _ledger(tmp_path)
    _fill(led, 5)
    assert len(led) == 5 and led.in_memory_bytes == 5 * NBYTES
    assert _send_all(led) == [0, 1, 2, 3, 4]
    assert led.next_to_send() is None and len(led.in_flight) == 5
    assert led.ack(0, 2) == 3 and led.ack(0, 2) == 0  # acks may repeat
    assert sorted(led.unacked) == [3, 4] and led.in_memory_bytes == 2 * NBYTES
    assert led.ack(3, 10**12) == 2  # a cumulative range far past what is held
    assert len(led) == 0 and led.in_memory_bytes == 0 and not led.in_flight and not led.mem_order
    assert spool.seqs() == [] and not spool.dir.exists()


def test_past_the_memory_bound_the_oldest_frames_not_on_the_wire_spill(tmp_path):
    led, spool = _ledger(tmp_path, frames_in_ram=3)
    _fill(led, 2)
    _send_all(led)  # 0 and 1 are on the wire: ZeroMQ holds their buffers anyway
    _fill(led, 6, first=2)
    led.spill()
    assert led.in_memory_bytes <= 3 * NBYTES
    assert spool.seqs() == [2, 3, 4, 5, 6] and led.spooled == led.spooled_now == 5
    assert led.in_memory_bytes == 3 * NBYTES  # 0 and 1 on the wire, 7 the newest
    assert spool.read_start().run == RUN  # a spool with frames can be replayed
    assert list(led.mem_order)[:2] == [0, 1]  # kept first in line for the next spill
    # spilled frames are sent from disk, bit for bit
    entry = led.next_to_send()
    assert entry is not None and entry.seq == 2 and entry.pixels is None
    seq, pixels = _decoded(led.frame_parts(entry))
    assert seq == 2 and np.array_equal(pixels, _pixels(2))
    # an ack deletes the spool file
    led.ack(2, 3)
    assert spool.seqs() == [4, 5, 6] and led.spooled_now == 3


def test_in_ram_frames_are_sent_zero_copy(tmp_path):
    led, _ = _ledger(tmp_path)
    pixels = _pixels(0)
    led.accept(0, _header(0), pixels)
    parts = led.frame_parts(led.next_to_send())
    assert parts[0] == TAG and np.shares_memory(np.frombuffer(parts[2], np.uint16), pixels)
    strided = np.zeros((8, 16), np.uint16)[:, ::2]  # not C-contiguous: copied once, on accept
    led.accept(1, _header(1), strided)
    assert led.get(1).pixels.flags.c_contiguous


def test_requeue_and_resend_all_put_frames_back_in_line(tmp_path):
    led, _ = _ledger(tmp_path)
    _fill(led, 4)
    _send_all(led, session=0)
    led.requeue(2)  # a transient error: 2 goes first
    assert led.next_to_send().seq == 2 and 2 not in led.in_flight
    led.ack(0, 0)
    led.resend_all()  # a new session: nothing is on the wire
    assert not led.in_flight and _send_all(led, session=1) == [1, 2, 3]
    assert all(led.get(s).session == 1 and led.get(s).sends == 2 for s in (1, 3))


def test_rejected_frames_are_kept_aside_from_ram_and_from_the_spool(tmp_path):
    led, spool = _ledger(tmp_path, frames_in_ram=1)
    _fill(led, 3)
    led.spill()  # 0 and 1 on disk, 2 in RAM
    led.reject(0, "invalid: test")
    led.reject(2, "invalid: test")
    assert sorted(led.unacked) == [1] and led.spooled_now == 1 and led.in_memory_bytes == 0
    assert spool.rejected() == [0, 2] and spool.seqs() == [1]
    assert "invalid" in (spool.dir / "rejected" / "000000000002.reason.txt").read_text()
    led.keep_unsendable(7, np.zeros((2, 2, 2), np.uint8), "3-D")
    assert spool.rejected() == [0, 2, 7] and 7 not in led


def test_spool_all_keeps_everything_for_a_replay_and_adopt_takes_it_back(tmp_path):
    led, spool = _ledger(tmp_path)
    _fill(led, 4)
    led.ack(1, 1)
    led.spool_all(encode(End(run=RUN, frames=4))[1])
    assert spool.seqs() == [0, 2, 3] and spool.read_end().frames == 4
    assert led.in_memory_bytes == 0 and led.spooled_now == 3

    later, _ = _ledger(tmp_path)  # another process, same run
    (spool.dir / "000000000009.frame").write_bytes(b"not a frame")
    adopted, errors = later.adopt()
    assert adopted == 3 and len(errors) == 1 and "000000000009" in errors[0]
    assert later.spooled_now == 3 and later.in_memory_bytes == 0
    for want in (0, 2, 3):
        entry = later.next_to_send()
        assert _decoded(later.frame_parts(entry))[0] == want
        later.mark_sent(entry, 0, 0.0)
    later.ack(0, 3)
    assert spool.seqs() == [9]  # the unreadable file is not the ledger's to delete


def test_nothing_left_means_no_spool_directory(tmp_path):
    led, spool = _ledger(tmp_path)
    _fill(led, 2)
    led.ack(0, 1)
    led.spool_all(None)
    assert not spool.dir.exists()


def test_an_unreadable_spool_file_raises_when_its_turn_comes(tmp_path):
    from lowdose.plugins.acquisition.spool import SpoolError

    led, spool = _ledger(tmp_path, frames_in_ram=0)
    _fill(led, 1)
    led.spill()
    spool.frame_path(0).write_bytes(b"garbage")
    with pytest.raises(SpoolError):
        led.frame_parts(led.next_to_send())
