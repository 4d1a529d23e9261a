from hypothesis import example, given
from hypothesis import strategies as st

from bridge.commit_frontier import CommitFrontier


def test_nothing_to_commit_before_anything_is_tracked():
    f = CommitFrontier()
    assert f.commit_point(0) is None and f.to_commit() == {} and f.outstanding == 0


def test_an_out_of_order_ack_does_not_move_the_commit_past_a_pending_offset():
    f = CommitFrontier()
    for offset in (10, 11, 12):
        f.track(0, offset)
    f.done(0, 11)
    assert f.commit_point(0) == 10  # 10 is still pending: a crash must re-read it
    f.done(0, 10)
    assert f.commit_point(0) == 12
    f.done(0, 12)
    assert f.to_commit() == {0: 13} and f.outstanding == 0
    assert f.to_commit() == {}  # unchanged since the last call


def test_partitions_are_independent_and_a_revoked_one_forgets_its_pending_records():
    f = CommitFrontier()
    f.track(0, 5)
    f.track(1, 7)
    f.done(1, 7)
    assert f.to_commit() == {0: 5, 1: 8}
    f.reset(0)
    f.done(0, 5)  # an ack from before the rebalance changes nothing
    assert f.commit_point(0) is None and f.outstanding == 0


def test_commit_points_lists_every_partition_moved_or_not():
    f = CommitFrontier()
    f.track(0, 5)
    f.track(1, 7)
    f.done(1, 7)
    assert f.to_commit() == {0: 5, 1: 8}
    assert f.to_commit() == {} and f.commit_points() == {0: 5, 1: 8}


def test_a_redelivered_record_is_tracked_once():
    f = CommitFrontier()
    f.track(0, 3)
    f.track(0, 3)
    f.done(0, 3)
    assert f.outstanding == 0 and f.commit_point(0) == 4


@given(st.lists(st.integers(0, 40), unique=True, min_size=1), st.randoms(use_true_random=False))
@example([0, 1, 2], __import__("random").Random(1))
def test_the_commit_point_never_passes_an_unacknowledged_offset(offsets, rnd):
    offsets.sort()
    f = CommitFrontier()
    for offset in offsets:
        f.track(0, offset)
    acked: set[int] = set()
    order = offsets[:]
    rnd.shuffle(order)
    for offset in order:
        f.done(0, offset)
        acked.add(offset)
        point = f.commit_point(0)
        assert all(o in acked for o in offsets if o < point)
        unacked = [o for o in offsets if o not in acked]
        assert point == (min(unacked) if unacked else offsets[-1] + 1)
    assert f.outstanding == 0
