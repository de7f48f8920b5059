"""Bounded state (processors/correlation/retention.py): trees and chains are retired
exactly when the rule says, events and links that arrive for retired ones are counted and
not judged, the per-tree sets stay bounded, and retiring never changes the alerts of
events that arrive within retention."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.correlation.chains import ChainLink, ChainState, links_to_json
from processors.correlation.engine import expire, observe, to_micros
from processors.correlation.retention import (
    BEYOND_RETENTION,
    CHUNK,
    RETIRED_CHAIN,
    RETIRED_PERIODS,
    RETIRED_TREE,
    RetiredKeys,
    RetireQueue,
    chunk_from_json,
    chunk_to_json,
    tree_retirable,
)
from processors.correlation.tree import TreeState
from processors.correlator.codec import stored_state, tree_key
from processors.correlator.step import CHAIN_LINKS, WATERMARK_KEY, Correlation
from producers.context import CustodyContext
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec
from schemas.models import AccessEvent, CredentialIssuedEvent, Envelope
from tests.support.events import at, declare, issue, use
from tests.support.samples import stamped
from tests.support.trees import CONFIG, DETECTED, GRACE, in_turn, mischievous

CODEC = AvroCodec()
WALL = 1_900_000_000 * 1_000_000
LATENESS_S = 1
RETENTION_S = 60
US = 1_000_000


def _work(retention_s: float = RETENTION_S, chain_retention_s: float = RETENTION_S) -> Correlation:
    return Correlation(
        Settings(
            grace_seconds=3,
            allowed_lateness_seconds=LATENESS_S,
            event_partitions=1,
            idle_advance=False,
            tree_retention_seconds=retention_s,
            chain_retention_seconds=chain_retention_s,
        )
    )


class Feed:
    """Events into one worker step as the faust app does: on_events, store, written; the
    wall clock moves on by more than the allowed lateness at each step, so a backfill
    held for it is judged at the next."""

    def __init__(self, work: Correlation) -> None:
        self.work = work
        self.table: dict[str, bytes] = {}
        self.seq = 0
        self.alerts: list[str] = []
        self.wall = WALL

    def _tick(self) -> int:
        self.wall += 2 * LATENESS_S * US
        return self.wall

    def events(self, events: list[Envelope]) -> None:
        records = []
        for event in events:
            self.seq += 1
            value = CODEC.encode_event(stamped(event, self.seq, "p/1"))
            records.append((0, self.seq, event.root_task_id.encode(), value))
        wall = self._tick()
        sends, dirty = self.work.on_events(records, self.table.get, wall)
        self._sent(sends)
        self._store(dirty)
        self.work.written(dirty, {}, wall)

    def clock(self, watermark_us: int) -> None:
        """Move the partition's watermark to ``watermark_us`` with an event of a tree of
        its own, then run the timer's step."""
        when = datetime.fromtimestamp(0, at(0).tzinfo) + timedelta(
            microseconds=watermark_us + LATENESS_S * US
        )
        self.events([declare(CustodyContext.new_root(f"clock-{watermark_us}"), when)])
        self.due()

    def due(self) -> dict[str, tuple[int, TreeState | None]]:
        wall = self._tick()
        sends, trees, chains = self.work.due({0}, set(), wall)
        self._sent(sends)
        self._store(trees)
        self.work.written(trees, chains, wall)
        return trees

    def _sent(self, sends: list) -> None:  # type: ignore[type-arg]
        self.alerts += [
            CODEC.decode_alert(s.value).alert_id for s in sends if s.topic == topics.ALERTS
        ]

    def _store(self, dirty: dict[str, tuple[int, TreeState | None]]) -> None:
        for key, (_, state) in dirty.items():
            if state is None:
                self.table.pop(key, None)
            else:
                self.table[key] = state.to_json()


def _latest_expiry_us(events: list[Envelope]) -> int:
    return max(to_micros(e.body.expires_at) for e in events if isinstance(e, CredentialIssuedEvent))


# ---- the rule ---------------------------------------------------------------------------


def test_a_tree_retires_once_its_last_event_and_deadlines_are_the_retention_behind() -> None:
    last_event = TreeState("acme", "r", last_event_us=100 * US)
    assert not tree_retirable(last_event, 159 * US, 60 * US)
    assert tree_retirable(last_event, 160 * US, 60 * US)

    late_deadline = TreeState("acme", "r", last_event_us=100 * US, horizon_us=500 * US)
    assert not tree_retirable(late_deadline, 559 * US, 60 * US)
    assert tree_retirable(late_deadline, 560 * US, 60 * US)

    pending = TreeState("acme", "r", last_event_us=100 * US)
    pending.schedule(50 * US, "orphaned", "tok")
    assert pending.horizon_us == 50 * US
    assert not tree_retirable(pending, 10**6 * US, 60 * US)


def test_the_worker_retires_a_tree_exactly_when_the_watermark_reaches_its_time() -> None:
    feed = Feed(_work())
    tree = mischievous(set(), "a-")
    feed.events(tree)
    key = tree_key("acme", "a-root")
    # Its latest deadline is its tokens' expiry, long after its last event.
    retire_at = _latest_expiry_us(tree) + RETENTION_S * US
    assert retire_at > max(to_micros(e.event_time) for e in tree) + RETENTION_S * US

    feed.clock(retire_at - 1)
    assert key in feed.table
    assert feed.work.trees_retired == 0
    live = feed.work.live_trees

    feed.clock(retire_at)
    assert key not in feed.table
    assert key not in feed.work.trees
    assert feed.work.trees_retired == 1
    assert feed.work.live_trees == live  # one retired, one clock tree more


def test_the_retired_tree_is_a_delete_of_its_key() -> None:
    feed = Feed(_work())
    tree = mischievous(set(), "a-")
    feed.events(tree)
    retire_at = _latest_expiry_us(tree) + RETENTION_S * US
    when = datetime.fromtimestamp(0, at(0).tzinfo) + timedelta(
        microseconds=retire_at + LATENESS_S * US
    )
    feed.events([declare(CustodyContext.new_root("clock"), when)])
    trees = feed.due()
    assert trees[tree_key("acme", "a-root")] == (0, None)


# ---- late events for retired trees ------------------------------------------------------


def test_events_of_a_retired_tree_are_counted_and_raise_no_alert() -> None:
    feed = Feed(_work())
    tree = mischievous(set(), "a-")
    feed.events(tree)
    feed.clock(_latest_expiry_us(tree) + RETENTION_S * US)
    assert feed.work.trees_retired == 1
    raised = len(feed.alerts)

    # Without its tree, these would be a child task without its parent, a token without
    # its decision and task, and an access no decision covers.
    code = CustodyContext.new_root("a-root").child("a-research").child("a-code")
    token = "a-tok-late"
    late: list[Envelope] = [
        declare(code, at(40)),
        issue(code, token, at(41)),
        use(code, token, at(42)),
    ]
    feed.events(late)
    feed.clock(_latest_expiry_us(tree) + 10 * RETENTION_S * US)
    assert feed.work.late_events[RETIRED_TREE] == len(late)
    assert feed.alerts[raised:] == []
    assert tree_key("acme", "a-root") not in feed.table


def test_an_event_more_than_the_retention_behind_the_watermark_is_not_judged() -> None:
    feed = Feed(_work())
    feed.clock(to_micros(at(10_000)))
    stale = CustodyContext.new_root("old-root").child("old-child")
    # A child without its parent: judged, it would be a BROKEN_CHAIN.
    feed.events([declare(stale, at(10_000 - RETENTION_S - LATENESS_S - 1))])
    feed.clock(to_micros(at(20_000)))
    assert feed.work.late_events[BEYOND_RETENTION] == 1
    assert feed.alerts == []

    within = CustodyContext.new_root("new-root").child("new-child")
    feed.events([declare(within, at(20_000 - RETENTION_S + 1))])
    feed.clock(to_micros(at(30_000)))
    assert feed.work.late_events[BEYOND_RETENTION] == 1
    assert len(feed.alerts) == 1  # judged: its parent never came


def test_retired_trees_are_remembered_across_a_restart() -> None:
    feed = Feed(_work())
    tree = mischievous(set(), "a-")
    feed.events(tree)
    feed.clock(_latest_expiry_us(tree) + RETENTION_S * US)
    # As the app stores them, and reads them back at recovery.
    stored = [stored_state(value) for _, _, value in feed.work.retired_records() if value]
    assert stored

    restarted = Feed(_work())
    restarted.work.recovered_retired(stored)
    restarted.clock(_latest_expiry_us(tree) + 2 * RETENTION_S * US)
    restarted.events([use(CustodyContext.new_root("a-root"), "a-tok-root", at(30))])
    assert restarted.work.late_events[RETIRED_TREE] == 1
    assert restarted.alerts == []


# ---- chains -----------------------------------------------------------------------------


def _link(seq: int, us: int) -> bytes:
    return links_to_json([ChainLink(f"e{seq}", "acme", "r", "p/1", seq, None, "h", us)])


def _mark(watermark_us: int) -> tuple[int, bytes, bytes]:
    value = json.dumps({"source_partition": 0, "watermark_us": watermark_us}).encode()
    return (0, WATERMARK_KEY, value)


def test_a_chain_retires_after_the_chain_retention_of_silence_and_its_links_are_late() -> None:
    work = _work(chain_retention_s=100)
    _, dirty = work.on_links([(0, b"p/1", _link(1, 5 * US)), _mark(0)], WALL)
    work.written({}, dirty, WALL)
    assert work.live_chains == 1

    work.on_links([_mark(105 * US - 1)], WALL)
    _, _, chains = work.due(set(), {0}, WALL)
    assert chains == {}
    assert work.live_chains == 1

    work.on_links([_mark(105 * US)], WALL)
    _, _, chains = work.due(set(), {0}, WALL)
    assert chains["p/1"][1].retired
    work.written({}, chains, WALL)
    assert work.live_chains == 0
    assert work.chains_retired == 1

    # Its next link, checked against an empty chain, would be a gap after seq 1.
    sends, dirty = work.on_links([(0, b"p/1", _link(2, 106 * US))], WALL)
    assert dirty == {}
    assert [s for s in sends if s.topic == topics.ALERTS] == []
    assert work.late_events[RETIRED_CHAIN] == 1
    assert {s.topic for s in sends} <= {CHAIN_LINKS}


def test_a_retired_chain_deletes_its_pending_links_too() -> None:
    chain = ChainState("p/1", verified_seq=1)
    for seq in (3, 4):
        chain.hold(ChainLink(f"e{seq}", "acme", "r", "p/1", seq, "x", "h", seq), 10)
    chain.added.discard(4)  # stored already
    chain.retire()
    assert chain.retired
    assert chain.removed == {3, 4}
    assert chain.added == set()


# ---- bounded sets -----------------------------------------------------------------------


def _job(accesses: int) -> tuple[list[Envelope], CustodyContext]:
    """A root task that issues one token and uses it ``accesses`` times, a second apart,
    naming no decision (each access an UNAUTHORIZED_ACCESS)."""
    root = CustodyContext.new_root("job-root")
    events: list[Envelope] = [declare(root, at(0)), issue(root, "job-tok", at(1))]
    events += [use(root, "job-tok", at(2 + i), decision_id=None) for i in range(accesses)]
    return events, root


def test_seen_ids_keep_only_the_accesses_within_the_grace_period_and_fired_alerts_all() -> None:
    events, _ = _job(500)
    state: TreeState | None = None
    fired: set[str] = set()
    for event in events:
        state, out = observe(state, event, CONFIG, DETECTED)
        state, more = expire(state, to_micros(event.event_time), CONFIG, DETECTED)
        fired |= {a.alert_id for a in out.alerts + more.alerts}
    assert state is not None
    accesses = [e for e in events if isinstance(e, AccessEvent)]
    kept = [e for e in accesses if to_micros(e.event_time) > to_micros(at(501)) - GRACE * US]
    assert state.seen_event_ids == {e.event_id for e in kept}
    assert len(state.seen_event_ids) <= GRACE + 1
    # Every alert the tree raised, once: they grow with what went wrong, not with traffic.
    assert state.fired_alert_ids == fired
    assert len(fired) > 400


def test_a_duplicate_access_repeats_no_alert_within_the_window_nor_after() -> None:
    events, _ = _job(3)
    state: TreeState | None = None
    first: list[str] = []
    for event in events:
        state, out = observe(state, event, CONFIG, DETECTED)
        first += [a.alert_id for a in out.alerts]
    assert state is not None
    access = events[-1]
    state, out = observe(state, access, CONFIG, DETECTED)
    assert out.alerts == []
    state, out = expire(state, to_micros(at(100)), CONFIG, DETECTED)
    first += [a.alert_id for a in out.alerts]
    assert access.event_id not in state.seen_event_ids  # forgotten with its access

    state, out = observe(state, access, CONFIG, DETECTED)
    state, more = expire(state, to_micros(at(200)), CONFIG, DETECTED)
    assert first
    assert out.alerts + more.alerts == []  # judged again, but its alert already fired


def test_a_non_access_duplicate_changes_nothing_without_its_id() -> None:
    events, _ = _job(1)
    state: TreeState | None = None
    for event in events:
        state, _ = observe(state, event, CONFIG, DETECTED)
    assert state is not None
    before = TreeState.from_json(state.to_json())
    for event in events[:2]:
        state, out = observe(state, event, CONFIG, DETECTED)
        assert out.alerts == []
        assert out.changes == []
    assert state == before


def test_gap_alert_ids_are_kept_only_while_their_seq_can_be_claimed_again() -> None:
    chain = ChainState("p/1", verified_seq=5000)
    chain.fired_alert_ids = {"old": 100, "recent": 4900}
    chain.recent = {100: "e100", 4900: "e4900"}
    chain.prune_behind()
    assert chain.fired_alert_ids == {"recent": 4900}
    assert chain.recent == {4900: "e4900"}


# ---- the structures ---------------------------------------------------------------------


def test_the_retire_queue_gives_each_key_once_at_its_latest_time() -> None:
    queue = RetireQueue()
    queue.set("a", 10)
    queue.set("b", 20)
    queue.set("a", 30)  # a later event moved it on
    assert queue.due(25) == ["b"]
    assert queue.due(29) == []
    assert queue.due(30) == ["a"]
    queue.set("c", 50)
    queue.set("c", 40)
    queue.discard("b")
    assert queue.due(45) == ["c"]
    assert len(queue) == 0


def test_retired_keys_are_remembered_for_the_periods_then_forgotten() -> None:
    keys = RetiredKeys(period_us=100)
    for index in range(CHUNK + 10):
        keys.add(f"k{index}", 150)
    keys.add("later", 250)
    assert "k0" in keys
    assert f"k{CHUNK + 9}" in keys
    assert "later" in keys
    assert "never" not in keys
    assert len(keys) == CHUNK + 11

    changes = keys.changes()
    assert sorted((bucket, chunk) for bucket, chunk, _ in changes) == [(1, 0), (1, 1), (2, 0)]
    assert keys.changes() == []

    keys.expire(100 * (1 + RETIRED_PERIODS) + 99)
    assert "k0" in keys
    keys.expire(100 * (2 + RETIRED_PERIODS))
    assert "k0" not in keys
    assert "later" in keys
    assert keys.changes() == [(1, 0, None), (1, 1, None)]


def test_retired_keys_restore_from_their_stored_chunks() -> None:
    keys = RetiredKeys(period_us=100)
    for index in range(CHUNK + 1):
        keys.add(f"k{index}", 150)
    stored = [
        chunk_from_json(chunk_to_json("tree", bucket, chunk, digests))
        for bucket, chunk, digests in keys.changes()
        if digests is not None
    ]
    assert {kind for kind, *_ in stored} == {"tree"}
    restored = RetiredKeys(period_us=100)
    restored.restore([(bucket, chunk, digests) for _, bucket, chunk, digests in stored])
    assert all(f"k{index}" in restored for index in range(CHUNK + 1))
    assert "k-other" not in restored
    restored.add("next", 150)
    assert restored.changes()[0][:2] == (1, 2)  # a new chunk, the stored ones untouched


# ---- the property -----------------------------------------------------------------------


def _alerts_of(stream: list[Envelope], retention_s: float, batch: int) -> list[str]:
    feed = Feed(_work(retention_s))
    for start in range(0, len(stream), batch):
        feed.events(stream[start : start + batch])
        feed.due()
    feed.clock(max(to_micros(e.event_time) for e in stream) + 10**6 * US)
    return sorted(feed.alerts)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    trees=st.integers(1, 6),
    spacing=st.floats(1, 200),
    retention_s=st.floats(40, 2_000),
    batch=st.integers(1, 60),
)
def test_retiring_never_changes_the_alerts_of_events_that_arrive_within_retention(
    trees: int, spacing: float, retention_s: float, batch: int
) -> None:
    stream: list[Envelope] = []
    for index in range(trees):
        stream += mischievous(in_turn(index), f"t{index}-", spacing * index)
    stream.sort(key=lambda e: (e.event_time, e.event_id))
    # Each tree's events span 32 s: with 40 s or more of retention, every event arrives
    # within the retention of its tree's previous one.
    retiring = _alerts_of(stream, retention_s, batch)
    assert retiring == _alerts_of(stream, 10**7, batch)
    assert retiring


# ---- partitions still being read --------------------------------------------------------


def test_a_partition_still_being_read_is_neither_idle_nor_taken_as_empty() -> None:
    work = Correlation(
        Settings(grace_seconds=3, allowed_lateness_seconds=LATENESS_S, event_partitions=2)
    )
    event = stamped(declare(CustodyContext.new_root("r"), at(0)), 1, "p/1")
    work.on_events([(0, 0, b"r", CODEC.encode_event(event))], lambda _: None, WALL)
    assert work.source_watermarks([1], WALL) == []  # partition 1: no event yet

    # Ten seconds later both have records not read yet (a backlog read unevenly).
    work.reading_behind([0, 1], WALL + 10 * US)
    assert work.source_watermarks([1], WALL + 10 * US) == []
    mark = work.event_marks[0]
    assert mark.current(WALL + 10 * US) == to_micros(at(0)) - LATENESS_S * US

    # Once read (no longer reported behind), the clocks run from then.
    assert work.source_watermarks([1], WALL + 13 * US)
    assert mark.current(WALL + 13 * US) == to_micros(at(3)) - LATENESS_S * US
