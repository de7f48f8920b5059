"""``custody correlate`` against a real broker: the alerts on custody.alerts.v1 are
exactly the pure correlator's verdict on the same traffic, also across a kill -9."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer

from producers.producer import CustodyProducer
from producers.settings import Settings
from schemas import topics
from schemas.models import Envelope
from tests.support.broker import RunningBroker, header_list, read_to_end
from tests.support.correlator import AlertReader, Worker
from tests.support.stack import CONFIG, GRACE, LATENESS
from tests.support.trees import traffic

pytestmark = pytest.mark.integration


@pytest.fixture
def worker_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "CUSTODY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CUSTODY_KAFKA_PROFILE": "development",
        "CUSTODY_KAFKA_SESSION_TIMEOUT_MS": "2000",
        "CUSTODY_EVENT_PARTITIONS": str(settings.event_partitions),
        "CUSTODY_GRACE_SECONDS": str(GRACE),
        "CUSTODY_ALLOWED_LATENESS_SECONDS": str(LATENESS),
        # A free port: other workers (other tests) may run on this host.
        "CUSTODY_CORRELATOR_METRICS_ADDRESS": "127.0.0.1:0",
    }


@pytest.fixture
def worker(worker_env: dict[str, str], tmp_path: object) -> Iterator[Worker]:
    running = Worker(worker_env, f"{tmp_path}/correlate.log")
    yield running
    running.kill()


def publish(settings: Settings, stream: list[Envelope]) -> None:
    with CustodyProducer(settings, producer_instance="traffic") as producer:
        for event in stream:
            producer.publish(event)


def test_alerts_are_exactly_the_correlators_verdict_and_bad_records_go_to_the_dlq(
    broker: RunningBroker, settings: Settings, worker: Worker
) -> None:
    stream, expected = traffic(24, CONFIG)
    assert len(expected) >= 15  # every kind of misbehaviour is in the traffic
    raw = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    raw.produce(topics.EVENTS, b"not avro at all", key=b"garbage")
    raw.flush(10)
    publish(settings, stream)
    worker.start()
    reader = AlertReader(settings.kafka_bootstrap)
    reader.until(lambda: expected <= set(reader.ids), 90, worker)
    reader.keep_reading(GRACE + LATENESS + 2)
    assert set(reader.ids) == expected
    dead = read_to_end(settings, topics.DLQ)
    assert [m.value() for m in dead] == [b"not avro at all"]
    headers = dict(header_list(dead[0]))
    assert headers["custody-dlq-reason"] == b"unknown_wire_format"
    assert headers["custody-source-topic"] == topics.EVENTS.encode()
    assert worker.alive()


def test_kill_9_mid_stream_loses_no_alert_and_invents_none(
    broker: RunningBroker, settings: Settings, worker: Worker
) -> None:
    stream, expected = traffic(160, CONFIG)
    publish(settings, stream)
    worker.start()
    reader = AlertReader(settings.kafka_bootstrap)
    reader.until(lambda: len(reader.ids) >= 5, 90, worker)
    worker.kill()  # mid-stream: most of the traffic is not processed yet
    assert not expected <= set(reader.ids)
    worker.start()
    reader.until(lambda: expected <= set(reader.ids), 180, worker)
    reader.keep_reading(GRACE + LATENESS + 2)
    assert set(reader.ids) == expected
