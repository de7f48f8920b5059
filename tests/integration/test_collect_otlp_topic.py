"""``custody collect --otlp-topic``: OTLP traces from a Kafka topic as the OpenTelemetry
Collector's Kafka exporter writes them (``otlp_proto``: one TracesData per record), on a
real broker: the spans become events, a record that is no OTLP message is dead-lettered
with its reason, and offsets are committed only after the events were acked."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from processors.collect.otlp import OtlpMapping
from processors.collect.otlp_state import Assemblers
from processors.collect.otlp_topic import MALFORMED, OtlpTopicReader
from processors.collect.publisher import CollectPublisher
from processors.collect.records import Origin
from producers.admin import ensure_topics
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec
from schemas.models import EventType
from tests.support.broker import header_list, payload, read_to_end
from tests.support.collect import protobuf_of, sample_json
from tests.support.polling import until

pytestmark = pytest.mark.integration

TOPIC = "otlp_spans"
ORIGIN = Origin("acme", "otel-collector")


@pytest.fixture
def reader(settings: Settings) -> Iterator[OtlpTopicReader]:
    ensure_topics(settings.kafka_admin(), {TOPIC: 1})
    publisher = CollectPublisher(settings)
    running = OtlpTopicReader(settings, TOPIC, ORIGIN, Assemblers(OtlpMapping()), publisher)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield running
    running.stop.set()
    thread.join(30)
    publisher.close()


def test_the_collector_s_kafka_export_becomes_events_and_a_bad_record_a_dead_letter(
    settings: Settings, reader: OtlpTopicReader
) -> None:
    producer = Producer(settings.kafka_common())
    producer.produce(TOPIC, protobuf_of(sample_json("otlp/multi_agent.json"), TracesData()))
    producer.produce(TOPIC, b"\x0a\xff\xff\xff\xff\x0f not protobuf")
    assert producer.flush(30) == 0
    codec = AvroCodec()

    def published() -> list[EventType]:
        values = [payload(m) for m in read_to_end(settings)]
        return [codec.decode_event(v).event_type for v in values if not v.startswith(b"end-")]

    until(lambda: EventType.DELEGATION in published(), timeout=60, what="the spans' events")
    assert published().count(EventType.TASK_DECLARED) == 2
    assert published().count(EventType.ACCESS) == 2
    dead = [m for m in read_to_end(settings, topics.DLQ) if not payload(m).startswith(b"end-")]
    assert [dict(header_list(m))["custody-dlq-reason"] for m in dead] == [MALFORMED.encode()]
    # Both records' offsets are committed once their work is acked.
    consumer = Consumer(settings.kafka_consumer(f"custody-collect-otlp-{ORIGIN.source}"))
    try:
        until(
            lambda: consumer.committed([TopicPartition(TOPIC, 0)], timeout=10)[0].offset == 2,
            timeout=30,
            what="the committed offset after both records",
        )
    finally:
        consumer.close()
