"""``POST /v1/traces`` on a real broker, answering as the OTLP specification has a
receiver answer: protobuf and JSON, gzip or not; partial success naming rejected spans
(dead-lettered with their reason); google.rpc.Status on bad input; observe-only sources;
503 while Kafka cannot take the events."""

from __future__ import annotations

import copy
import gzip
import json
from typing import Any

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from processors.collect.otlp_route import JSON, PROTOBUF, TRACES
from producers.admin import ensure_topics
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec
from schemas.models import OBSERVE_ONLY_ATTRIBUTE, AccessEvent, CustodyEvent, EventType
from tests.support.broker import RunningBroker, header_list, payload, read_to_end
from tests.support.collect import RunningCollector, protobuf_of, sample_json

pytestmark = pytest.mark.integration

TENANT = "acme"


def export(
    collector: RunningCollector,
    body: bytes,
    token: str | None,
    content_type: str = PROTOBUF,
    *,
    gzipped: bool = False,
) -> tuple[int, bytes, dict[str, str]]:
    """POST an export as an OTLP/HTTP exporter does; the status, body and headers."""
    sent = gzip.compress(body) if gzipped else body
    return collector.post(TRACES, sent, token, content_type, gzipped=gzipped)


def stored(settings: Settings) -> list[CustodyEvent]:
    codec = AvroCodec()
    values = [payload(m) for m in read_to_end(settings)]
    return [codec.decode_event(v) for v in values if not v.startswith(b"end-marker-")]


def multi_agent() -> dict[str, Any]:
    document: dict[str, Any] = sample_json("otlp/multi_agent.json")
    return document


def test_a_protobuf_export_of_a_multi_agent_run_becomes_its_custody_events(
    collector: RunningCollector, settings: Settings
) -> None:
    token = collector.token(TENANT, "agents")
    status, body, headers = export(collector, protobuf_of(multi_agent()), token, gzipped=True)
    assert status == 200, body
    assert headers["Content-Type"].startswith(PROTOBUF)
    answer = ExportTraceServiceResponse.FromString(body)
    assert answer.partial_success.rejected_spans == 0
    events = stored(settings)
    kinds = sorted(str(e.event_type) for e in events)
    assert kinds.count(EventType.TASK_DECLARED) == 2
    assert kinds.count(EventType.DELEGATION) == 1
    accesses = [e for e in events if isinstance(e, AccessEvent)]
    assert {a.body.tool for a in accesses} == {"web_search", "read_file"}
    assert {e.tenant for e in events} == {TENANT}
    assert all(OBSERVE_ONLY_ATTRIBUTE not in a.attributes for a in accesses)


def test_a_json_export_is_answered_in_json_and_rejected_spans_are_named(
    collector: RunningCollector, settings: Settings
) -> None:
    token = collector.token(TENANT, "agents", observe_only=True)
    document = multi_agent()
    # The tool span loses its tool name: rejected, the rest still published.
    for resource_spans in document["resourceSpans"]:
        for span in resource_spans["scopeSpans"][0]["spans"]:
            if span["name"] == "execute_tool web_search":
                span["name"] = "execute_tool"
                span["attributes"] = [
                    a for a in span["attributes"] if a["key"] != "gen_ai.tool.name"
                ]
    status, body, headers = export(collector, json.dumps(document).encode(), token, JSON)
    assert status == 200, body
    assert headers["Content-Type"].startswith(JSON)
    partial = json.loads(body)["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1
    assert "otlp_missing_attribute" in partial["errorMessage"]
    [dead] = [m for m in read_to_end(settings, topics.DLQ) if not payload(m).startswith(b"end-")]
    assert dict(header_list(dead))["custody-dlq-reason"] == b"otlp_missing_attribute"
    accesses = [e for e in stored(settings) if isinstance(e, AccessEvent)]
    assert [a.body.tool for a in accesses] == ["read_file"]
    # An observe-only source's accesses say so; the correlator never judges them
    # unauthorized.
    assert accesses[0].attributes[OBSERVE_ONLY_ATTRIBUTE] == "true"


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"\x0a\xff\xff\xff\xff\x0f", PROTOBUF, 400),
        (b'{"resourceSpans": [', JSON, 400),
        (b'{"resourceSpans": "no"}', JSON, 400),
        (b"{}", "text/plain", 415),
    ],
)
def test_bad_exports_get_the_otlp_error_answer(
    collector: RunningCollector, settings: Settings, body: bytes, content_type: str, status: int
) -> None:
    token = collector.token(TENANT, "agents")
    got, answer, _ = export(collector, body, token, content_type)
    assert got == status
    if content_type == JSON:
        assert json.loads(answer)["message"]
    elif content_type == PROTOBUF:
        assert status_pb2.Status.FromString(answer).message
    assert stored(settings) == []


def test_without_a_token_or_over_the_limit_nothing_is_published(
    collector: RunningCollector, settings: Settings
) -> None:
    body = protobuf_of(multi_agent())
    status, answer, headers = export(collector, body, None)
    assert status == 401
    assert status_pb2.Status.FromString(answer).code == 16  # UNAUTHENTICATED
    assert headers["WWW-Authenticate"].startswith("Bearer")
    token = collector.token(TENANT, "agents")
    big = copy.deepcopy(multi_agent())
    spans = big["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans[0]["attributes"].append({"key": "padding", "value": {"stringValue": "x" * 300_000}})
    status, _, _ = export(collector, protobuf_of(big), token, gzipped=True)
    assert status == 413
    assert stored(settings) == []


def test_kafka_unavailable_is_a_retryable_503(
    collector: RunningCollector, broker: RunningBroker
) -> None:
    token = collector.token(TENANT, "agents")
    broker.kill()
    status, answer, headers = export(collector, protobuf_of(multi_agent()), token)
    assert status == 503
    assert status_pb2.Status.FromString(answer).code == 14  # UNAVAILABLE
    assert int(headers["Retry-After"]) > 0


def test_an_export_retried_after_a_503_is_published_once_kafka_is_back(
    collector: RunningCollector, broker: RunningBroker, settings: Settings
) -> None:
    token = collector.token(TENANT, "agents")
    body = protobuf_of(multi_agent())
    broker.kill()
    status, _, _ = export(collector, body, token)
    assert status == 503
    broker.start()
    ensure_topics(settings.kafka_admin(), settings.event_topic_partitions())
    # The exporter sends the same request again: its spans were mapped the first time,
    # and are published now rather than skipped as seen.
    status, answer, _ = export(collector, body, token)
    assert status == 200, answer
    kinds = sorted(str(e.event_type) for e in stored(settings))
    assert kinds.count(EventType.TASK_DECLARED) == 2
    assert kinds.count(EventType.ACCESS) == 2
