"""AsyncCustodyProducer against a real broker: many concurrent tasks publishing through one
producer form one unbroken hash chain, every event is stored, and ``publish_sync`` hands
the loop back while it waits for the broker's acknowledgement."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict

import pytest
from confluent_kafka import Message

from producers import AsyncAgentRecorder, AsyncCustodyProducer, CustodyContext, DeliveryReport
from producers.chain import body_hash
from producers.settings import Settings
from schemas.codec import AvroCodec, body_bytes
from schemas.models import Envelope
from tests.support.broker import read_to_end
from tests.support.samples import AGENT, one_of_each

pytestmark = pytest.mark.integration

CODEC = AvroCodec()
TASKS = 200
EVENTS_PER_TASK = 9


def chains_hold(messages: list[Message]) -> dict[str, int]:
    """Per producer instance: seq 1..n without a gap, each prev_hash the SHA-256 of the body
    before; returns each instance's length."""
    chains: dict[str, list[tuple[int, str | None, bytes]]] = defaultdict(list)
    for message in messages:
        event = CODEC.decode_event(message.value())
        assert event.producer_instance is not None and event.seq is not None
        chains[event.producer_instance].append(
            (event.seq, event.prev_hash, body_bytes(message.value()))
        )
    for links in chains.values():
        links.sort(key=lambda link: link[0])
        assert [seq for seq, _, _ in links] == list(range(1, len(links) + 1))
        assert links[0][1] is None
        for (_, _, before), (_, prev_hash, _) in itertools.pairwise(links):
            assert prev_hash == body_hash(before)
    return {instance: len(links) for instance, links in chains.items()}


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
    messages = read_to_end(settings)
    assert chains_hold(messages) == {"async-200": TASKS * EVENTS_PER_TASK}
    roots = {CODEC.decode_event(m.value()).root_task_id for m in messages}
    assert roots == {f"root-{n}" for n in range(TASKS)}


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
