"""Live restoration policies and fairness between microscopes."""

import numpy as np

from lowdose.wire.protocol import FrameIndex
from lowdose.daemon.scheduler import LiveItem, Scheduler


def _item(run, seq):
    return LiveItem(run=run, seq=seq, index=FrameIndex(t=seq), pixels=np.zeros((2, 2)), received_at=0.0)


def test_fifo_restores_in_order_and_skips_oldest_past_the_bound():
    s = Scheduler(batch_size=2, queue_frames=4, default_policy="fifo")
    s.add_run("a")
    for i in range(6):
        s.offer(_item("a", i))
    assert s.skipped("a") == 2  # 0 and 1 fell off the bounded queue
    seqs = []
    while (b := s.next_batch(0)) is not None:
        seqs += [it.seq for it in b.items]
    assert seqs == [2, 3, 4, 5]


def test_latest_restores_only_the_newest_batch():
    s = Scheduler(batch_size=2, queue_frames=100, default_policy="latest")
    s.add_run("a")
    for i in range(10):
        s.offer(_item("a", i))
    b = s.next_batch(0)
    assert [it.seq for it in b.items] == [8, 9]
    assert s.skipped("a") == 8
    assert s.next_batch(0) is None


def test_runs_take_turns():
    s = Scheduler(batch_size=1, queue_frames=100, default_policy="fifo")
    s.add_run("a")
    s.add_run("b")
    for i in range(5):
        s.offer(_item("a", i))
    s.offer(_item("b", 0))
    order = [s.next_batch(0).run for _ in range(3)]
    assert order.count("b") == 1 and order[:2] in (["a", "b"], ["b", "a"])


def test_frames_of_unknown_runs_are_ignored_and_close_wakes_waiters():
    s = Scheduler(batch_size=1, queue_frames=10, default_policy="fifo")
    s.offer(_item("ghost", 0))
    assert s.pending() == 0
    s.close()
    assert s.next_batch(5.0) is None
