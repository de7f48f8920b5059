"""The offset guard: each partition's records reach the correlator once each, in order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.offset_order import OffsetOrder, Verdict


def test_records_from_the_committed_offset_on_are_processed_in_order() -> None:
    order = OffsetOrder()
    order.assign({0, 1})
    order.start(0, 100)
    order.start(1, 0)
    assert [order.admit(0, o) for o in (100, 101, 102)] == [Verdict.PROCESS] * 3
    assert order.admit(1, 0) is Verdict.PROCESS
    assert order.next_offset(0) == 103
    assert order.next_offset(1) == 1


def test_a_record_past_the_next_offset_is_ahead_and_does_not_move_the_partition_on() -> None:
    # The failure seen in the crash test: a restarted worker was handed offset 14,264
    # while the group had committed 11,838.
    order = OffsetOrder()
    order.assign({5})
    order.start(5, 11_838)
    assert order.admit(5, 14_264) is Verdict.AHEAD
    assert order.admit(5, 14_265) is Verdict.AHEAD
    assert order.next_offset(5) == 11_838
    # After the seek back, the records come again from the next offset.
    assert order.admit(5, 11_838) is Verdict.PROCESS
    assert order.next_offset(5) == 11_839


def test_a_replayed_record_is_seen_not_processed_again() -> None:
    order = OffsetOrder()
    order.assign({0})
    order.start(0, 10)
    for offset in (10, 11, 12):
        order.admit(0, offset)
    assert order.admit(0, 11) is Verdict.SEEN
    assert order.admit(0, 12) is Verdict.SEEN
    assert order.admit(0, 13) is Verdict.PROCESS


def test_an_assigned_partition_must_be_started_before_its_records_are_judged() -> None:
    order = OffsetOrder()
    order.assign({3})
    assert order.unstarted == {3}
    with pytest.raises(AssertionError, match="not started"):
        order.admit(3, 0)


def test_a_reassignment_forgets_where_the_partition_was() -> None:
    order = OffsetOrder()
    order.assign({0})
    order.start(0, 5)
    order.admit(0, 5)
    order.assign({0})
    assert order.next_offset(0) is None
    order.start(0, 2)  # the group committed less than this worker processed: a replay
    assert order.admit(0, 2) is Verdict.PROCESS


def test_a_revoked_partition_is_forgotten() -> None:
    order = OffsetOrder()
    order.assign({0, 1})
    order.start(0, 5)
    order.forget(0)
    order.forget(1)
    assert order.next_offset(0) is None
    assert order.unstarted == set()


@given(
    start=st.integers(0, 1000),
    deliveries=st.lists(st.integers(0, 60), max_size=200),
)
def test_processed_offsets_are_exactly_consecutive_from_the_start(
    start: int, deliveries: list[int]
) -> None:
    """Whatever order the transport delivers in (replays, jumps, duplicates), the records
    the correlator processes are start, start+1, ... with none skipped or repeated."""
    order = OffsetOrder()
    order.assign({0})
    order.start(0, start)
    processed = [start + d for d in deliveries if order.admit(0, start + d) is Verdict.PROCESS]
    assert processed == list(range(start, start + len(processed)))
