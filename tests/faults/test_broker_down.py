"""Broker down at the producer: the SDK's bounded buffer, backpressure and synchronous
mode behave as documented, and nothing reported as published is missing.

The broker is frozen (SIGSTOP) rather than killed: the local Tansu keeps its topics in
memory, so a frozen broker is the outage a producer sees (connections that stop
answering) with the evidence still there to check once it thaws (SIGCONT).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from producers.producer import (
    BackpressureTimeout,
    CustodyProducer,
    DeliveryError,
    DeliveryReport,
)
from producers.settings import Settings
from producers.simulator import SimulationConfig, simulate
from schemas.codec import AvroCodec
from tests.faults.conftest import Recorder, scaled
from tests.support.broker import RunningBroker, payload, read_to_end

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CODEC = AvroCodec()


@contextmanager
def frozen(broker: RunningBroker) -> Iterator[None]:
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)


def test_buffered_events_survive_an_outage_and_backpressure_refuses_the_rest(
    broker: RunningBroker, settings: Settings, record_fault: Recorder
) -> None:
    outage = scaled(6, 30)
    buffer = 200
    config = settings.model_copy(
        update={
            "producer_buffer_messages": buffer,
            "producer_buffer_timeout_seconds": 1.0,
            # Longer than the outage: what is buffered waits for the broker to return.
            "producer_delivery_timeout_ms": (outage + 60) * 1000,
        }
    )
    stream = list(simulate(SimulationConfig(roots=scaled(10, 40), seed=3)))
    producer = CustodyProducer(config, producer_instance="faults/broker-down")
    reports: list[DeliveryReport] = []
    lock = threading.Lock()

    def on_delivery(report: DeliveryReport) -> None:
        with lock:
            reports.append(report)

    accepted, refused = [], []
    # Connected and warm before the outage.
    for event in stream[:50]:
        producer.publish(event, on_delivery=on_delivery)
        accepted.append(event.event_id)
    producer.flush(30)
    started = time.monotonic()
    with frozen(broker):
        for event in stream[50:]:
            try:
                producer.publish(event, on_delivery=on_delivery)
                accepted.append(event.event_id)
            except BackpressureTimeout:
                refused.append(event.event_id)
            if time.monotonic() - started > outage:
                break
        frozen_for = time.monotonic() - started
        # Stay frozen for the whole outage even if publishing stopped early.
        while time.monotonic() - started < outage:
            time.sleep(0.2)
    failed: list[str] = []
    try:
        producer.close(timeout=outage + 90)
    except DeliveryError as exc:
        failed = list(exc.failed_event_ids)
    delivered = {r.event_id for r in reports if r.ok}
    stored = read_to_end(settings)
    on_topic = [CODEC.decode_event(payload(m)) for m in stored]
    on_topic_ids = {e.event_id for e in on_topic if e.producer_instance == "faults/broker-down"}
    # An event without a seq counts as 0, which breaks the run 1..n checked below.
    seqs = sorted(e.seq or 0 for e in on_topic if e.producer_instance == "faults/broker-down")
    missing = delivered - on_topic_ids
    survived = (
        not missing
        and len(refused) > 0
        and set(accepted) == delivered | set(failed)
        and not (set(refused) & on_topic_ids)
        and seqs == list(range(1, len(seqs) + 1))
    )
    record_fault(
        "broker down (producer)",
        f"broker frozen {outage}s while publishing; buffer {buffer} events, buffer timeout 1s",
        survived,
        accepted=len(accepted),
        refused_with_backpressure=len(refused),
        delivered=len(delivered),
        reported_failed=len(failed),
        delivered_but_missing=len(missing),
        chain_unbroken=seqs == list(range(1, len(seqs) + 1)),
        publishing_blocked_s=round(frozen_for, 1),
    )
    assert not missing, f"{len(missing)} events reported delivered are not on the topic"
    # The buffer filled: later events were refused, none dropped silently.
    assert refused, "the buffer never filled"
    assert set(accepted) == delivered | set(failed)
    assert not set(refused) & on_topic_ids, "a refused event was sent after all"
    # A refused event leaves no hole in the chain.
    assert seqs == list(range(1, len(seqs) + 1))


def test_sync_publish_raises_during_an_outage_and_confirms_after(
    broker: RunningBroker, settings: Settings, record_fault: Recorder
) -> None:
    timeout_ms = 3000
    config = settings.model_copy(update={"producer_delivery_timeout_ms": timeout_ms})
    events = list(simulate(SimulationConfig(roots=1, seed=4)))
    producer = CustodyProducer(config, producer_instance="faults/broker-down-sync")
    assert producer.publish_sync(events[0]).ok
    with frozen(broker):
        started = time.monotonic()
        with pytest.raises(DeliveryError) as caught:
            producer.publish_sync(events[1])
        waited = time.monotonic() - started
    # The broker is back. The timed-out event made librdkafka bump the idempotent
    # producer's epoch, which the local Tansu refuses (PRODUCER_FENCED): the first event
    # after the outage may fail with that reason; the SDK then starts a new Kafka producer
    # and the next one is confirmed.
    fenced = []
    try:
        after = producer.publish_sync(events[2])
    except DeliveryError as exc:
        fenced.append(str(exc))
        after = producer.publish_sync(events[3])
    producer.close(timeout=30)
    on_topic = {
        CODEC.decode_event(payload(m)).event_id
        for m in read_to_end(settings)
        if CODEC.decode_event(payload(m)).producer_instance == "faults/broker-down-sync"
    }
    survived = (
        bool(caught.value.failed_event_ids)
        and after.ok
        and {events[0].event_id, after.event_id} <= on_topic
        and all("PRODUCER_FENCED" in reason for reason in fenced)
    )
    record_fault(
        "broker down (producer)",
        "publish_sync while the broker is frozen, then after it returns",
        survived,
        raised_after_s=round(waited, 1),
        delivery_timeout_s=timeout_ms / 1000,
        # In flight when the timeout struck: documented as possibly stored anyway.
        failed_event_stored_anyway=events[1].event_id in on_topic,
        first_after_outage_fenced=bool(fenced),
        confirmed_after=after.ok,
    )
    assert survived
    assert waited < timeout_ms / 1000 + 5
