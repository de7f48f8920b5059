"""EVIDENCE_GAP over producer-instance chains, and watermarks."""

from __future__ import annotations

import hashlib
import random

from processors.correlation.chains import (
    ChainLink,
    ChainState,
    expire_chain,
    observe_link,
    pending_from_json,
)
from processors.correlation.watermark import Watermark
from schemas.models import Alert
from tests.support.trees import CONFIG, DETECTED, GRACE

US = 1_000_000


def _chain(count: int, instance: str = "agent/1") -> list[ChainLink]:
    links, previous = [], None
    for seq in range(1, count + 1):
        body = f"{instance}-{seq}".encode()
        links.append(
            ChainLink(
                f"e{seq}",
                "acme",
                f"root-{seq % 3}",
                instance,
                seq,
                previous,
                hashlib.sha256(body).hexdigest(),
                seq * US,
            )
        )
        previous = links[-1].body_hash
    return links


def _run(links: list[ChainLink], until_us: int = 10**12) -> tuple[ChainState, list[Alert]]:
    state: ChainState | None = None
    alerts: list[Alert] = []
    for link in links:
        state, out = observe_link(state, link, CONFIG, DETECTED)
        alerts += out.alerts
    assert state is not None
    state, out = expire_chain(state, until_us, CONFIG, DETECTED)
    return state, alerts + out.alerts


def test_an_intact_chain_in_any_order_raises_nothing() -> None:
    links = _chain(50)
    random.Random(4).shuffle(links)
    state, alerts = _run(links)
    assert alerts == []
    assert state.verified_seq == 50
    assert not state.pending


def test_a_missing_event_is_a_gap_after_the_grace_period_only() -> None:
    links = _chain(10)
    del links[4]  # seq 5
    state, alerts = _run(links, until_us=6 * US + GRACE * US - 1)
    assert alerts == []
    assert state.verified_seq == 4
    _, alerts = _run(links)
    assert [a.alert_type for a in alerts] == ["EVIDENCE_GAP"]
    assert "seq 5 never arrived" in alerts[0].detail
    assert set(alerts[0].evidence_event_ids) == {"e4", "e6"}


def test_gap_near_miss_missing_event_arrives_late_but_within_grace() -> None:
    links = _chain(10)
    late = links.pop(4)
    assert _run([*links, late])[1] == []


def test_an_altered_event_breaks_the_next_link() -> None:
    links = _chain(6)
    altered = links[2]
    links[2] = ChainLink(
        altered.event_id,
        "acme",
        "root-x",
        altered.producer_instance,
        3,
        altered.prev_hash,
        hashlib.sha256(b"altered").hexdigest(),
        altered.us,
    )
    _, alerts = _run(links)
    assert [a.alert_type for a in alerts] == ["EVIDENCE_GAP"]
    assert "prev_hash of seq 4" in alerts[0].detail


def test_a_first_event_must_have_no_prev_hash() -> None:
    links = _chain(2)
    first = links[0]
    links[0] = ChainLink(
        first.event_id, "acme", "r", first.producer_instance, 1, "0" * 64, first.body_hash, first.us
    )
    assert "prev_hash of seq 1" in _run(links)[1][0].detail


def test_two_events_claiming_one_seq_are_reported_and_a_replay_is_not() -> None:
    links = _chain(3)
    impostor = ChainLink("other", "acme", "r", "agent/1", 2, links[0].body_hash, "f" * 64, 2 * US)
    _, alerts = _run([*links, links[1], impostor])
    assert len(alerts) == 1
    assert "two different events claim seq 2" in alerts[0].detail


def test_chain_state_survives_its_stored_form() -> None:
    links = _chain(8)
    del links[3]
    state, _ = _run(links, until_us=0)
    assert state.added == {5, 6, 7, 8}
    assert not state.removed
    stored = [pending_from_json(state.pending_json(seq)) for seq in state.added]
    restored = ChainState.from_json(state.to_json(), stored, CONFIG)
    assert restored.to_json() == state.to_json()
    assert sorted(restored.deadlines) == sorted(state.deadlines)
    expected = _run(links)[1][0].alert_id
    assert expire_chain(restored, 10**12, CONFIG, DETECTED)[1].alerts[0].alert_id == expected


def test_a_backfill_behind_the_watermark_waits_a_grace_period_from_its_arrival() -> None:
    # Was: a replayed instance's links, arriving from two partitions read at different
    # paces, were judged by their hours-old event times: the hole between the two reads
    # was an EVIDENCE_GAP at once, although its links were a moment away.
    links = _chain(6)
    watermark = 10_000 * US  # live traffic moved the watermark hours past the backfill
    state: ChainState | None = None
    for link in links[3:]:  # one partition's links first
        state, out = observe_link(state, link, CONFIG, DETECTED, watermark)
        assert out.alerts == []
    assert state is not None
    state, out = expire_chain(state, watermark + GRACE * US - 1, CONFIG, DETECTED)
    assert out.alerts == []
    assert state.verified_seq == 0
    stored = [pending_from_json(state.pending_json(seq)) for seq in state.added]
    state = ChainState.from_json(state.to_json(), stored, CONFIG)  # a restart keeps the wait
    for link in links[:3]:  # the other partition's
        state, out = observe_link(state, link, CONFIG, DETECTED, watermark)
        assert out.alerts == []
    assert state.verified_seq == 6
    assert not state.pending
    assert not state.due
    # A hole in a backfill is still a gap, a grace period after the links behind it came.
    held, _ = _run(links[:2], until_us=0)
    for link in links[3:]:
        held, _ = observe_link(held, link, CONFIG, DETECTED, watermark)
    _, out = expire_chain(held, watermark + GRACE * US, CONFIG, DETECTED)
    assert [a.detail for a in out.alerts] == [
        "producer_instance agent/1: seq 3 never arrived: evidence is missing"
    ]


def test_links_verified_in_one_go_leave_nothing_to_store_or_delete() -> None:
    links = _chain(5)
    state, _ = _run([links[1], links[2], links[0], links[4], links[3]], until_us=0)
    assert state.verified_seq == 5
    assert not state.pending
    assert not state.added
    assert not state.removed


def test_watermark_trails_by_the_lateness_and_advances_when_idle() -> None:
    mark = Watermark(lateness_us=30 * US, idle_advance=True)
    assert mark.current(0) is None
    mark.observe(event_us=1000 * US, wall_us=1000 * US)
    assert mark.current(1000 * US) == 970 * US
    assert mark.current(1010 * US) == 980 * US  # idle for 10 s
    frozen = Watermark(lateness_us=30 * US, idle_advance=False)
    frozen.observe(1000 * US, 1000 * US)
    assert frozen.current(4600 * US) == 970 * US


def test_a_backfill_after_idling_is_judged_by_its_own_event_times() -> None:
    mark = Watermark(lateness_us=1 * US, idle_advance=True)
    mark.observe(event_us=100 * US, wall_us=5000 * US)
    assert mark.current(9000 * US) == 4099 * US  # idle for an hour
    mark.observe(event_us=50 * US, wall_us=9000 * US)  # old events arrive
    assert mark.current(9000 * US) == 99 * US


def test_a_clock_in_the_future_cannot_rush_every_deadline() -> None:
    mark = Watermark(lateness_us=30 * US, idle_advance=False)
    mark.observe(event_us=10**9 * US, wall_us=1000 * US)
    assert mark.current(1000 * US) == 1000 * US
