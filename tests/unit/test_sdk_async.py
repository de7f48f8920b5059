"""AsyncCustodyProducer's waits never block the event loop, with a real librdkafka client
and nothing listening (a full buffer, a broker that never answers); delivery against a
real broker is at the end of tests/integration/test_publish.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from producers import AsyncCustodyProducer, BackpressureTimeout, DeliveryError
from producers.settings import Settings
from tests.support.samples import one_of_each

T = TypeVar("T")
NOWHERE = "127.0.0.1:1"


async def ticking_while(work: Awaitable[T]) -> tuple[int, T | BaseException]:
    """Run ``work`` as a task and count how often this coroutine, a heartbeat, got the loop
    back while ``work`` was pending; with the work's result or exception."""
    pending = asyncio.ensure_future(work)
    ticks = 0
    while not pending.done():
        ticks += 1
        await asyncio.sleep(0)
    try:
        return ticks, pending.result()
    except Exception as error:
        return ticks, error


def test_a_full_buffer_raises_backpressure_while_the_loop_keeps_running() -> None:
    tight = Settings(
        kafka_bootstrap=NOWHERE,
        producer_buffer_messages=5,
        producer_buffer_timeout_seconds=0.5,
        producer_delivery_timeout_ms=1000,
    )

    async def main() -> tuple[int, object, list[str]]:
        producer = await AsyncCustodyProducer.start(tight, create_topics=False)
        accepted = [await producer.publish(event) for event in one_of_each()[:5]]
        ticks, outcome = await ticking_while(producer.publish(one_of_each()[5]))
        assert producer.published == 5
        with pytest.raises(DeliveryError) as caught:
            await producer.close(timeout=5)
        assert sorted(caught.value.failed_event_ids) == sorted(s.event_id for s in accepted)
        return ticks, outcome, [s.event_id for s in accepted]

    ticks, outcome, accepted = asyncio.run(main())
    assert isinstance(outcome, BackpressureTimeout)
    assert "buffer of 5 events" in str(outcome)
    # Waiting for room handed the loop back again and again instead of sleeping in it.
    assert ticks > 1
    assert len(accepted) == 5


def test_publish_sync_to_a_broker_that_never_answers_raises_without_blocking() -> None:
    dead = Settings(kafka_bootstrap=NOWHERE, producer_delivery_timeout_ms=1000)

    async def main() -> tuple[int, object, int]:
        producer = await AsyncCustodyProducer.start(dead, create_topics=False)
        ticks, outcome = await ticking_while(producer.publish_sync(one_of_each()[2]))
        await producer.close(timeout=1)
        return ticks, outcome, len(producer.failed_event_ids)

    ticks, outcome, kept = asyncio.run(main())
    assert isinstance(outcome, DeliveryError)
    assert outcome.failed_event_ids
    assert ticks > 1
    # publish_sync raised for it: close() did not report the same event again.
    assert kept == 0
