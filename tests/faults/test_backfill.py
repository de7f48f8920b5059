"""A backfill replayed behind live traffic, on the real local stack.

A producer that buffered hours of evidence replays it while live traffic has moved every
partition's watermark on. Its events span several custody trees, hence several partitions,
and the correlator reads those at their own pace. The chain check must wait for the other
partitions' links a grace period from the moment the first ones arrive, not judge them by
their hours-old event times (which reported the hole between two partitions' reads as an
``EVIDENCE_GAP`` at once: the flake this file was written for).

The stack is the bad-input tests' (tests/support/stack.py: ``WatchedStack``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from producers.context import CustodyContext
from schemas import topics
from tests.faults.conftest import Recorder, scaled
from tests.support.events import declare
from tests.support.polling import until
from tests.support.samples import Chain
from tests.support.stack import WatchedStack, watched
from tests.support.trees import in_turn, mischievous, run

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WatchedStack]:
    with watched(tmp_path_factory.mktemp("backfill")) as running:
        yield running


def evidence_gaps(stack: WatchedStack, prefix: str) -> list[str]:
    rows = stack.sql(
        "SELECT detail FROM alerts WHERE alert_type = 'EVIDENCE_GAP'"
        " AND startsWith(root_task_id, {p:String})",
        p=prefix,
    )
    return [str(r["detail"]) for r in rows]


def test_a_backfill_read_unevenly_from_two_partitions_raises_no_false_gap(
    replay: WatchedStack, record_fault: Recorder
) -> None:
    partitions = replay.stack.settings().event_partitions
    producer = replay.raw()

    # Live traffic on every partition moves each watermark to now.
    live = Chain("backfill/live")
    now = datetime.now(UTC)
    for partition in range(partitions):
        root = CustodyContext.new_root(f"bfl-{partition}")
        event = declare(root, now, purpose="live", scopes=["a"])
        producer.produce(
            topics.EVENTS, value=live.encode(event), key=root.task_id.encode(), partition=partition
        )
    assert producer.flush(30) == 0
    until(
        lambda: (
            replay.sql("SELECT count() AS n FROM tasks WHERE startsWith(root_task_id, 'bfl-')")
            == [{"n": partitions}]
        ),
        60,
        "live traffic correlated on every partition",
    )

    # The backfill: one producer instance's trees from hours ago (each with one
    # misbehaviour in turn, every fourth clean). The later half of its chain (on
    # partition 1) is read first, the earlier half (on partition 0) after it.
    trees = [mischievous(in_turn(i), f"bf-{i}-", 40 * i) for i in range(scaled(4, 16))]
    assert trees[-1][-1].event_time < now - timedelta(hours=1)
    replayed = Chain("backfill/replayed")
    stream = sorted((e for tree in trees for e in tree), key=lambda e: (e.event_time, e.event_id))
    encoded = {e.event_id: replayed.encode(e) for e in stream}
    half = len(trees) // 2
    expected_later = {a for tree in trees[half:] for a in run(tree, replay.config).ids()}
    expected = expected_later | {a for tree in trees[:half] for a in run(tree, replay.config).ids()}
    for partition, read in ((1, trees[half:]), (0, trees[:half])):
        for sent in (e for tree in read for e in tree):
            producer.produce(
                topics.EVENTS,
                value=encoded[sent.event_id],
                key=sent.root_task_id.encode(),
                partition=partition,
            )
        assert producer.flush(30) == 0
        if partition == 1:
            # The later half's alerts are stored: the correlator has read partition 1.
            until(
                lambda: replay.alert_ids("bf-") >= expected_later,
                60,
                "the later half of the backfill correlated",
            )
            first_read_at = time.monotonic()
    second_sent_after = time.monotonic() - first_read_at

    until(lambda: replay.alert_ids("bf-") >= expected, 90, "the backfill's alerts")
    # Every link has arrived by now, so the chain is whole; a gap would have been judged
    # within a grace period of the first half's arrival: wait that out before looking.
    time.sleep(replay.grace + replay.lateness + 3)
    stored = replay.alert_ids("bf-")
    gaps = evidence_gaps(replay, "bf-")
    survived, health = replay.survived()
    ok = survived and stored == expected and not gaps
    record_fault(
        "bad input",
        f"a backfill of {len(trees)} trees hours behind live traffic, one producer instance's "
        "chain split over two partitions read one after the other",
        ok,
        events=len(stream),
        trees=len(trees),
        second_partition_sent_after_s=round(second_sent_after, 1),
        alerts=f"{len(stored & expected)}/{len(expected)} expected, "
        f"{len(stored - expected)} unexpected",
        evidence_gaps=len(gaps),
        **health,
    )
    assert not gaps, gaps
    assert stored == expected
    assert survived, health
