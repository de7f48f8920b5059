"""The worker's steps without faust: dead letters, outputs, and the chain watermark."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from typing import Any

from processors.correlation.chains import links_from_json, links_to_json
from processors.correlation.engine import CorrelationConfig, to_micros
from processors.correlator.codec import stored_form, stored_state, tree_key
from processors.correlator.step import CHAIN_LINKS, WATERMARK_KEY, Correlation, Outbound
from processors.redaction import redacted
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec
from schemas.models import AccessEvent, Alert, Envelope
from tests.support.samples import stamped
from tests.support.trees import mischievous, run

CODEC = AvroCodec()
CONFIG_3S = CorrelationConfig.of(3, Settings().max_credential_ttl_seconds)  # as _work's
WALL = 1_900_000_000 * 1_000_000


def _records(events: list[Envelope], partition: int = 0) -> list[tuple[int, int, bytes, bytes]]:
    return [
        (partition, seq - 1, e.root_task_id.encode(), CODEC.encode_event(stamped(e, seq, "p/1")))
        for seq, e in enumerate(events, start=1)
    ]


def _alert(send: Outbound) -> Alert:
    """The alert ``send`` carries (an alert record is never a deletion)."""
    assert send.value is not None
    return CODEC.decode_alert(send.value)


def _work(partitions: int = 2) -> Correlation:
    return Correlation(
        Settings(grace_seconds=3, allowed_lateness_seconds=1, event_partitions=partitions)
    )


def test_undecodable_records_become_dead_letters_with_their_origin() -> None:
    work = _work()
    sends, dirty = work.on_events([(1, 41, b"k", b"\x00\x01garbage")], lambda _: None, WALL)
    assert dirty == {}
    [letter] = [send for send in sends if send.topic == topics.DLQ]
    headers = dict(letter.headers or [])
    assert (letter.topic, letter.key, letter.value) == (topics.DLQ, b"k", b"\x00\x01garbage")
    assert headers["custody-source-partition"] == b"1"
    assert headers["custody-source-offset"] == b"41"
    assert headers["custody-dlq-reason"] in {b"unknown_schema", b"malformed_avro"}


def test_events_give_alerts_state_changes_and_one_chain_link_each() -> None:
    work = _work()
    events = mischievous({"shared"}, name="a-")
    sends, dirty = work.on_events(_records(events), lambda _: None, WALL)
    by_topic: dict[str, list[Outbound]] = {}
    for send in sends:
        by_topic.setdefault(send.topic, []).append(send)
    links = [
        link
        for send in by_topic[CHAIN_LINKS]
        if send.key != WATERMARK_KEY
        for link in links_from_json(send.value or b"")
    ]
    assert [link.event_id for link in links] == [e.event_id for e in events]
    assert any(send.key == WATERMARK_KEY for send in by_topic[CHAIN_LINKS])
    alerts = [_alert(s) for s in by_topic[topics.ALERTS]]
    assert "SHARED_CREDENTIAL" in {a.alert_type for a in alerts}
    assert all(
        s.key == a.alert_id.encode() for s, a in zip(by_topic[topics.ALERTS], alerts, strict=True)
    )
    assert set(dirty) == {tree_key("acme", "a-root")}


def test_chain_checks_wait_for_every_source_partition() -> None:
    work = _work(partitions=2)
    work.on_events(_records(mischievous(set(), name="b-")), lambda _: None, WALL)
    marks = work.source_watermarks([0], WALL)
    assert {m.partition for m in marks} == {0, 1}
    assert all(m.key == WATERMARK_KEY for m in marks)
    work.on_links([(0, m.key, m.value) for m in marks if m.partition == 0], WALL)
    assert work.chain_watermark(0) is None  # source partition 1 not heard from yet
    other = json.dumps({"source_partition": 1, "watermark_us": 5}).encode()
    work.on_links([(0, WATERMARK_KEY, other)], WALL)
    assert work.chain_watermark(0) == 5


def test_stored_form_keeps_the_partition() -> None:
    assert stored_state(stored_form(4, b'{"a":1}')) == (4, b'{"a":1}')


def test_secret_looking_values_are_redacted_and_flagged_before_state() -> None:
    secret = "AKIA" + "Q3EGRZ7EXAMPLEAB"
    event = mischievous(set(), name="s-")[3]
    assert isinstance(event, AccessEvent)
    leaky = event.model_copy(
        update={"body": event.body.model_copy(update={"detail": f"key {secret}"})}
    )
    clean = redacted(leaky)
    assert secret not in clean.model_dump_json()
    assert clean.attributes["custody.redacted"] == "body.detail"
    assert redacted(event) is event
    work = _work()
    work.on_events(_records([leaky]), lambda _: None, WALL)
    [state] = work.trees.values()
    assert state.root_task_id == "s-root"
    assert secret.encode() not in state.to_json()


def test_a_source_partition_silent_for_a_grace_period_stops_holding_chains_back() -> None:
    work = _work(partitions=2)
    assert work.source_watermarks([0, 1], WALL) == []  # maybe just not read yet
    later = WALL + 3_000_000  # the grace period
    marks = work.source_watermarks([0, 1], later)
    work.on_links([(0, m.key, m.value) for m in marks if m.partition == 0], later)
    assert work.chain_watermark(0) == later - 1_000_000


def test_an_event_that_cannot_carry_the_redaction_flag_goes_to_the_dlq() -> None:
    secret = "AKIA" + "Q3EGRZ7EXAMPLEAB"
    event = mischievous(set(), name="f-")[0]
    crowded = event.model_copy(
        update={"attributes": {**{f"k{i}": "v" for i in range(255)}, "leak": secret}}
    )
    sends, dirty = _work().on_events(_records([crowded]), lambda _: None, WALL)
    [letter] = [send for send in sends if send.topic == topics.DLQ]
    assert dict(letter.headers or [])["custody-dlq-reason"] == b"contract_violation"
    assert dirty == {}


def test_two_tenants_reusing_a_root_task_id_keep_separate_trees() -> None:
    """Each tenant's copy of the same tree raises its own alerts; a table written before
    trees were keyed by tenant is read under the root task id for its own tenant only."""
    acme = mischievous({"self_approval"}, name="t-")
    globex = [e.model_copy(update={"tenant": "globex"}) for e in acme]
    work = _work()
    sends, dirty = work.on_events(_records(acme + globex), lambda _: None, WALL)
    alerts = [_alert(s) for s in sends if s.topic == topics.ALERTS]
    assert sorted(a.tenant for a in alerts if a.alert_type == "SELF_APPROVAL") == [
        "acme",
        "globex",
    ]
    assert set(dirty) == {tree_key("acme", "t-root"), tree_key("globex", "t-root")}
    state = dirty[tree_key("acme", "t-root")][1]
    assert state is not None  # stored, not retired
    legacy = state.to_json()
    fresh = _work()
    fresh.on_events(_records(acme[:1]), {"t-root": legacy}.get, WALL)
    # The legacy state was found: its tasks are there, not just the one event's.
    assert len(fresh.trees[tree_key("acme", "t-root")].tasks) > 1
    other = _work()
    other.on_events(_records(globex[:1]), {"t-root": legacy}.get, WALL)
    assert len(other.trees[tree_key("globex", "t-root")].tasks) == 1


def test_long_states_are_stored_compressed_and_read_back() -> None:
    """A deep tree's state is compressed in the table, so it stays far below the Kafka
    client's 1 MB record limit; short states stay plain JSON."""
    state_json = b'{"tasks": ' + b'"' + b"x" * 2_000_000 + b'"}'
    value = stored_form(3, state_json)
    assert len(value) < 100_000
    assert stored_state(value) == (3, state_json)
    assert stored_state(stored_form(1, b'{"a": 1}')) == (1, b'{"a": 1}')
    assert stored_form(1, b'{"a": 1}') == b'1\n{"a": 1}'


def test_a_backfilled_instance_read_from_two_partitions_unevenly_has_no_gap() -> None:
    # Was: with the watermarks hours past a replayed instance's events, links that arrived
    # from one partition before the other's were judged by their own old times, and the
    # hole between the two reads was an EVIDENCE_GAP at once.
    work = _work(partitions=2)
    sends, _ = work.on_events(_records(mischievous(set(), name="old-")), lambda _: None, WALL)
    [unlinked] = [
        links_from_json(s.value or b"")
        for s in sends
        if s.topic == CHAIN_LINKS and s.key != WATERMARK_KEY
    ]
    links = [unlinked[0]] + [
        replace(link, prev_hash=before.body_hash) for before, link in itertools.pairwise(unlinked)
    ]
    live = [
        (0, WATERMARK_KEY, json.dumps({"source_partition": p, "watermark_us": WALL}).encode())
        for p in (0, 1)
    ]
    half = len(links) // 2
    outputs = [
        work.on_links([*live, (0, b"p/1", links_to_json(links[half:]))], WALL)[0],
        work.due(set(), {0}, WALL + 1_000_000)[0],
        work.on_links([(0, b"p/1", links_to_json(links[:half]))], WALL + 2_000_000)[0],
    ]
    assert not [s for sends in outputs for s in sends if s.topic == topics.ALERTS]
    assert work.chains["p/1"].verified_seq == len(links)
    assert not work.chains["p/1"].pending


def test_a_slow_step_does_not_use_up_a_backfills_hold_or_its_partitions_idle_time() -> None:
    # Was: both counted from the step's start. A step slow to deliver (5 s here) let the
    # timer, running right after it, judge a backfilled tree without its second half,
    # already read and queued behind that step: false alerts on a loaded machine.
    work = _work(partitions=1)
    now = mischievous(set(), name="now-", offset=3600)
    old = mischievous({"leak"}, name="old-")  # an hour older than "now": a backfill
    expected_old = run(old, CONFIG_3S).ids()
    wall = to_micros(now[-1].event_time)
    fired: set[str] = set()

    def step(ended: int, sends: list[Outbound], dirty: dict[str, Any]) -> None:
        fired.update(
            CODEC.decode_alert(s.value or b"").alert_id for s in sends if s.topic == topics.ALERTS
        )
        work.written(dirty, {}, ended)

    step(wall, *work.on_events(_records(now), lambda _: None, wall))
    half = len(old) // 2
    slow = wall + 5_000_000
    step(slow, *work.on_events(_records(old[:half]), lambda _: None, wall))
    assert work.event_marks[0].current(slow + 500_000) == to_micros(now[-1].event_time) - 500_000
    step(slow + 500_000, *work.due({0}, set(), slow + 500_000)[:2])
    assert fired == set()  # "now" is clean; nothing of the backfill is decided yet
    second = slow + 600_000
    step(second, *work.on_events(_records(old[half:]), lambda _: None, second))
    step(second + 1_100_000, *work.due({0}, set(), second + 1_100_000)[:2])
    assert fired == expected_old
