"""Publishing against a real broker: the SDK and ``custody publish`` deliver every event
intact, one custody tree per partition in order, with an unbroken hash chain.

``AsyncCustodyProducer`` (at the end): many concurrent tasks publishing through one
producer form one unbroken hash chain, every event is stored, and ``publish_sync`` hands
the loop back while it waits for the broker's acknowledgement."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Message
from pydantic import ValidationError

from producers import AsyncAgentRecorder, AsyncCustodyProducer, CustodyContext
from producers.chain import body_hash
from producers.producer import (
    BackpressureTimeout,
    CustodyProducer,
    DeliveryError,
    DeliveryReport,
)
from producers.settings import Settings
from schemas.codec import AvroCodec, body_bytes
from schemas.models import Envelope, validate_event
from schemas.secrets import SecretValueError
from tests.support.broker import RunningBroker, read_to_end, run_custody
from tests.support.samples import AGENT, json_form, many_trees, one_of_each, stamped

pytestmark = pytest.mark.integration

CODEC = AvroCodec()


def value_of(message: Message) -> bytes:
    value = message.value()
    assert value is not None
    return value


def _decoded(messages: list[Message]) -> list[tuple[Message, Envelope]]:
    return [(m, CODEC.decode_event(value_of(m))) for m in messages]


def assert_tree_per_partition_in_order(pairs: list[tuple[Message, Envelope]]) -> None:
    """Every event of a root task on one partition, offsets rising in publish (seq) order."""
    by_root: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for message, event in pairs:
        partition, offset = message.partition(), message.offset()
        assert message.key() == event.root_task_id.encode()
        assert event.seq is not None
        assert partition is not None
        assert offset is not None
        by_root[event.root_task_id].append((event.seq, partition, offset))
    for root, placed in by_root.items():
        assert len({partition for _, partition, _ in placed}) == 1, root
        offsets = [offset for _, _, offset in sorted(placed)]
        assert offsets == sorted(offsets), root


def assert_chains_hold(pairs: list[tuple[Message, Envelope]]) -> dict[str, int]:
    """Per producer instance: seq 1..n without gaps, prev_hash = SHA-256 of the body before;
    returns each instance's length."""
    chains: dict[str, list[tuple[int, str | None, bytes]]] = defaultdict(list)
    for message, event in pairs:
        assert event.producer_instance is not None
        assert event.seq is not None
        chains[event.producer_instance].append(
            (event.seq, event.prev_hash, body_bytes(value_of(message)))
        )
    for links in chains.values():
        links.sort(key=lambda link: link[0])
        assert [seq for seq, _, _ in links] == list(range(1, len(links) + 1))
        assert links[0][1] is None
        for (_, _, before), (_, prev_hash, _) in itertools.pairwise(links):
            assert prev_hash == body_hash(before)
    return {instance: len(links) for instance, links in chains.items()}


def test_sdk_publishes_10000_events_intact(settings: Settings) -> None:
    events = many_trees(1112)[:10_000]
    with CustodyProducer(settings, producer_instance="sdk-test") as producer:
        stamps = [producer.publish(event) for event in events]
    pairs = _decoded(read_to_end(settings))
    assert len(pairs) == 10_000
    by_id = {event.event_id: event for _, event in pairs}
    assert [s.seq for s in stamps] == list(range(1, 10_001))
    for event, stamp in zip(events, stamps, strict=True):
        expected = event.model_copy(update=stamp._asdict())
        assert by_id[event.event_id] == expected  # every envelope and body field
        assert stamp.producer_instance == "sdk-test"
    assert_tree_per_partition_in_order(pairs)
    assert_chains_hold(pairs)


def test_custody_publish_sends_a_10000_line_file_intact(settings: Settings, tmp_path: Path) -> None:
    lines = [json_form(event) for event in many_trees(1112)[:10_000]]
    # Two lines arrive stamped by another instance (a replay): they pass through as given.
    first = stamped(validate_event(lines[0]), seq=1, instance="agent-7/pod-3")
    lines[0] = first.model_dump(mode="json")
    second = stamped(validate_event(lines[5]), seq=2, instance="agent-7/pod-3")
    prev = body_hash(body_bytes(CODEC.encode_event(first)))
    lines[5] = second.model_copy(update={"prev_hash": prev}).model_dump(mode="json")
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_custody(settings.kafka_bootstrap, "publish", str(source))
    assert result.returncode == 0, result.stderr
    assert "10000 events" in result.stdout
    pairs = _decoded(read_to_end(settings))
    assert len(pairs) == 10_000
    sent = {line["event_id"]: line for line in lines}
    for _, event in pairs:
        received = event.model_dump(mode="json")
        expected = dict(sent[event.event_id])
        if "seq" not in expected:
            for key in ("producer_instance", "seq", "prev_hash"):
                received.pop(key)
        assert received == expected
    instances = {e.event_id: e.producer_instance for _, e in pairs}
    assert instances[lines[0]["event_id"]] == instances[lines[5]["event_id"]] == "agent-7/pod-3"
    defaults = {instances[line["event_id"]] for line in lines[1:5] + lines[6:]}
    assert len(defaults) == 1
    assert defaults != {"agent-7/pod-3"}
    assert_tree_per_partition_in_order(pairs)
    assert_chains_hold(pairs)


def test_an_invalid_file_publishes_nothing(settings: Settings, tmp_path: Path) -> None:
    lines = [json.dumps(json_form(event)) for event in many_trees(20)]
    broken = json_form(one_of_each()[3])
    del broken["body"]["tool"]
    lines.insert(57, json.dumps(broken))
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = run_custody(settings.kafka_bootstrap, "publish", str(source))
    assert result.returncode == 1
    assert "line 58: body.tool: Field required" in result.stderr
    assert "nothing was published" in result.stderr
    assert read_to_end(settings) == []


def test_events_from_many_threads_keep_one_unbroken_chain(settings: Settings) -> None:
    events = many_trees(250)
    with CustodyProducer(settings, producer_instance="threads") as producer:
        workers = [
            threading.Thread(target=lambda part=part: [producer.publish(e) for e in part])
            for part in (events[i::4] for i in range(4))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    pairs = _decoded(read_to_end(settings))
    assert len(pairs) == len(events)
    assert_chains_hold(pairs)


def test_a_secret_is_refused_before_anything_is_sent(settings: Settings) -> None:
    clean, leaky = one_of_each()[3], one_of_each()[3]
    secret = "AKIA" + "Q3EGRZ7EXAMPLEAB"
    leaky = leaky.model_copy(update={"attributes": {"copied_from_env": secret}})
    with CustodyProducer(settings, producer_instance="secrets") as producer:
        with pytest.raises(SecretValueError, match=r"attributes\.copied_from_env"):
            producer.publish(leaky)
        producer.publish(clean)
    messages = read_to_end(settings)
    assert [CODEC.decode_event(value_of(m)).seq for m in messages] == [1]
    assert all(secret.encode() not in value_of(m) for m in messages)


def test_sync_publish_confirms_then_raises_within_its_timeout_when_the_broker_is_down(
    broker: RunningBroker, settings: Settings
) -> None:
    fast = settings.model_copy(update={"producer_delivery_timeout_ms": 2000})
    producer = CustodyProducer(fast, producer_instance="broker-x")
    report = producer.publish_sync(one_of_each()[2])
    assert report.ok
    assert report.offset is not None
    assert report.partition is not None
    broker.kill()
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        producer.publish_sync(one_of_each()[2])
    elapsed = time.monotonic() - started
    assert elapsed < 2.0 + 2.5  # librdkafka's verdict at its delivery timeout, not our margin
    assert caught.value.failed_event_ids
    assert producer.delivered == 1
    # publish_sync already raised for it: close() does not report the same event again.
    assert producer.failed_event_ids == []
    producer.close(timeout=1)


def test_sync_publish_to_an_unreachable_broker_raises() -> None:
    dead = Settings(kafka_bootstrap="127.0.0.1:1", producer_delivery_timeout_ms=1000)
    producer = CustodyProducer(dead, create_topics=False)
    with pytest.raises(DeliveryError, match=r"(?i)timed out|transport"):
        producer.publish_sync(one_of_each()[2])
    assert producer.delivered == 0
    # publish_sync already raised for it: close() does not report the same event again.
    assert producer.failed_event_ids == []
    producer.close(timeout=1)


def test_full_buffer_raises_backpressure_instead_of_dropping_or_blocking(
    broker: RunningBroker, settings: Settings
) -> None:
    tight = settings.model_copy(
        update={
            "producer_buffer_messages": 5,
            "producer_buffer_timeout_seconds": 1.0,
            "producer_delivery_timeout_ms": 3000,
        }
    )
    producer = CustodyProducer(tight, producer_instance="tight")
    broker.kill()
    accepted = [producer.publish(e) for e in one_of_each()[:5]]
    started = time.monotonic()
    with pytest.raises(BackpressureTimeout, match="buffer of 5 events"):
        producer.publish(one_of_each()[5])
    assert 1.0 <= time.monotonic() - started < 10
    # Nothing is lost silently: the five buffered events are reported as failed.
    with pytest.raises(DeliveryError) as caught:
        producer.close(timeout=10)
    assert sorted(caught.value.failed_event_ids) == sorted(e.event_id for e in accepted)
    assert producer.delivered == 0


def test_a_failing_delivery_callback_does_not_stop_other_reports(settings: Settings) -> None:
    def broken(report: DeliveryReport) -> None:
        raise RuntimeError("caller bug")

    with CustodyProducer(settings, producer_instance="callbacks") as producer:
        producer.publish(one_of_each()[0], on_delivery=broken)
        started = time.monotonic()
        assert producer.publish_sync(one_of_each()[1]).ok
        assert time.monotonic() - started < 5
    assert producer.delivered == 2


def test_invalid_dict_errors_never_echo_the_value(settings: Settings) -> None:
    secret = "AKIA" + "Q3EGRZ7EXAMPLEAB"
    with CustodyProducer(settings) as producer, pytest.raises(ValidationError) as caught:
        producer.publish({**json_form(one_of_each()[0]), "event_id": secret})
    assert "event_id" in str(caught.value)
    assert secret not in str(caught.value)


# ---- asyncio ----------------------------------------------------------------------------

TASKS = 200
EVENTS_PER_TASK = len(one_of_each())


async def suspended_then_done(
    producer: AsyncCustodyProducer, event: Envelope
) -> tuple[bool, DeliveryReport]:
    """Whether ``publish_sync`` gave the loop back before its report came, and the report.

    The task's first step runs before this coroutine resumes from ``sleep(0)``: a wait that
    blocked the loop would have ended the task within that step."""
    pending = asyncio.ensure_future(producer.publish_sync(event))
    await asyncio.sleep(0)
    suspended = not pending.done()
    return suspended, await pending


def test_200_concurrent_tasks_keep_one_unbroken_chain_without_blocking_the_loop(
    settings: Settings,
) -> None:
    async def one(producer: AsyncCustodyProducer, number: int) -> tuple[bool, DeliveryReport]:
        tree = one_of_each(CustodyContext.new_root(f"root-{number}"))
        for event in tree[:-1]:
            await producer.publish(event)
        return await suspended_then_done(producer, tree[-1])

    async def main() -> tuple[list[tuple[bool, DeliveryReport]], int]:
        async with await AsyncCustodyProducer.start(
            settings, producer_instance="async-200", create_topics=False
        ) as producer:
            outcomes = await asyncio.gather(*(one(producer, n) for n in range(TASKS)))
        return outcomes, producer.delivered

    outcomes, delivered = asyncio.run(main())
    assert all(suspended for suspended, _ in outcomes)
    assert all(report.ok and report.offset is not None for _, report in outcomes)
    assert delivered == TASKS * EVENTS_PER_TASK
    pairs = _decoded(read_to_end(settings))
    assert assert_chains_hold(pairs) == {"async-200": TASKS * EVENTS_PER_TASK}
    assert {event.root_task_id for _, event in pairs} == {f"root-{n}" for n in range(TASKS)}


def test_a_heartbeat_keeps_ticking_while_publish_sync_awaits(settings: Settings) -> None:
    async def main() -> tuple[int, DeliveryReport]:
        async with await AsyncCustodyProducer.start(settings, create_topics=False) as producer:
            agent = AsyncAgentRecorder(producer, AGENT)
            await agent.declare_task(CustodyContext.new_root(), "warm up", ["crm:read"])
            pending = asyncio.ensure_future(producer.publish_sync(one_of_each()[2]))
            ticks = 0
            while not pending.done():
                ticks += 1
                await asyncio.sleep(0)
            return ticks, await pending

    ticks, report = asyncio.run(main())
    assert report.ok
    # The first tick comes before the publish starts; a blocking wait allows no other.
    assert ticks > 1
    assert len(read_to_end(settings)) == 2
