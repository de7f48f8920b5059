"""``custody collect``'s OPA upload route and Vault socket listener on a real broker: what
OPA's decision_logs plugin sends, authenticated by collect tokens; every record published
or dead-lettered; the 4xx answers naming the problem and publishing nothing; 503 while
Kafka cannot take the records."""

from __future__ import annotations

import copy
import gzip
import json
from typing import Any

import pytest
from confluent_kafka import Message

from processors.collect.opa import OpaMapping, map_decision
from processors.collect.records import REDACTED_ATTRIBUTE, Mapped, Origin
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec
from schemas.models import AuthzDecisionEvent, CustodyEvent, EventType
from tests.support.broker import RunningBroker, header_list, payload, read_to_end
from tests.support.collect import RunningCollector, sample_json, vault_story
from tests.support.polling import until

pytestmark = pytest.mark.integration

TENANT = "acme"


@pytest.fixture
def token(collector: RunningCollector) -> str:
    """A collect token of the tenant's OPA source, opa-prod."""
    return collector.token(TENANT, "opa-prod")


def stored_events(settings: Settings) -> list[CustodyEvent]:
    codec = AvroCodec()
    # Earlier reads' end markers stay on the topic.
    values = [payload(m) for m in read_to_end(settings)]
    return [codec.decode_event(v) for v in values if not v.startswith(b"end-marker-")]


def error_of(answered: tuple[int, dict[str, Any], dict[str, str]]) -> tuple[int, str]:
    """The status and the error code of an upload's answer."""
    status, answer, _ = answered
    return status, answer["error"]


def dead_letters(settings: Settings) -> list[Message]:
    return [
        m for m in read_to_end(settings, topics.DLQ) if not payload(m).startswith(b"end-marker-")
    ]


def documented_decisions() -> list[dict[str, Any]]:
    """OPA's documented decision events, each with a decision id of its own (two of the
    documentation's examples share one)."""
    decisions: list[dict[str, Any]] = sample_json("opa/upload.json")
    for index, decision in enumerate(decisions):
        decision["decision_id"] = f"{decision['decision_id'][:-4]}{index:04d}"
    return decisions


def test_an_opa_upload_is_published_once_every_event_is_acked(
    collector: RunningCollector, settings: Settings, token: str
) -> None:
    decisions = documented_decisions()
    # What the adapter (unit-tested on its own) makes of each: the service must publish
    # exactly the mapped ones and dead-letter the others.
    origin = Origin(TENANT, "opa-prod")
    mapped = [d for d in decisions if isinstance(map_decision(d, origin, OpaMapping()), Mapped)]
    assert mapped, "the documented samples map to decisions"
    status, answer = collector.upload_decisions(decisions, token)
    assert status == 200, answer
    assert answer["records"] == len(decisions)
    assert answer["published"] == len(mapped)
    assert sum(answer["dead_lettered"].values()) == len(decisions) - len(mapped)
    events = [e for e in stored_events(settings) if e.producer == "opa-prod"]
    assert sorted(
        e.body.decision_id for e in events if isinstance(e, AuthzDecisionEvent)
    ) == sorted(d["decision_id"] for d in mapped)
    assert {e.tenant for e in events} == {TENANT}
    assert len(dead_letters(settings)) == len(decisions) - len(mapped)
    # OPA uploads a batch again when it saw no 2xx: the same records, the same event ids.
    status, again = collector.upload_decisions(decisions, token)
    assert status == 200, again
    ids = [e.event_id for e in stored_events(settings) if e.producer == "opa-prod"]
    assert len(ids) == 2 * len(mapped)
    assert len(set(ids)) == len(mapped)


def test_without_a_known_token_nothing_is_published(
    collector: RunningCollector, settings: Settings, token: str
) -> None:
    body = gzip.compress(json.dumps(documented_decisions()).encode())
    status, answer, headers = collector.upload(body, None)
    assert (status, answer["error"]) == (401, "unauthenticated")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert error_of(collector.upload(body, forged)) == (401, "unauthenticated")
    assert stored_events(settings) == []


def test_a_record_of_another_tenant_forbids_the_whole_upload(
    collector: RunningCollector, settings: Settings, token: str
) -> None:
    decisions = documented_decisions()
    decisions[1]["input"]["custody"] = {"tenant": "other-tenant"}
    status, answer = collector.upload_decisions(decisions, token)
    assert (status, answer["error"]) == (403, "forbidden")
    assert "other-tenant" in answer["detail"]
    assert stored_events(settings) == []


def test_bad_bodies_get_a_4xx_naming_the_problem(
    collector: RunningCollector, settings: Settings, token: str
) -> None:
    truncated = gzip.compress(b'[{"decision_id": ')
    assert error_of(collector.upload(truncated, token)) == (400, "malformed_json")
    status, answer, _ = collector.upload(gzip.compress(b'{"decision_id": "x"}'), token)
    assert (status, answer["error"]) == (400, "malformed_json")
    assert "array" in answer["detail"]
    broken = gzip.compress(json.dumps(documented_decisions()).encode())[:-12] + b"garbage!!!!!"
    status, answer, _ = collector.upload(broken, token)
    assert (status, answer["error"]) == (400, "bad_gzip"), answer
    status, answer, _ = collector.upload(b"not gzip at all", token)
    assert (status, answer["error"]) == (400, "bad_gzip"), answer
    # Over the limit uncompressed, though small compressed: a gzip bomb is refused too.
    bomb = gzip.compress(b"[" + b" " * (512 * 1024) + b"]")
    assert error_of(collector.upload(bomb, token)) == (413, "too_large")
    assert stored_events(settings) == []


def test_invalid_records_are_dead_lettered_with_their_reason_and_the_rest_published(
    collector: RunningCollector, settings: Settings, token: str
) -> None:
    first, second, *_ = documented_decisions()
    no_id = copy.deepcopy(first)
    del no_id["decision_id"]
    bad_time = copy.deepcopy(second)
    bad_time["decision_id"] = "5d1e4f0a-0000-4000-8000-000000000001"
    bad_time["timestamp"] = "yesterday"
    status, answer = collector.upload_decisions([first, no_id, bad_time, "not a decision"], token)
    assert status == 200, answer
    assert answer["published"] == 1
    assert sum(answer["dead_lettered"].values()) == 3
    dead = dead_letters(settings)
    assert len(dead) == 3
    reasons = sorted(dict(header_list(m))["custody-dlq-reason"].decode() for m in dead)
    assert reasons == sorted(
        reason for reason, count in answer["dead_lettered"].items() for _ in range(count)
    )
    assert all(dict(header_list(m))["custody-dlq-stage"] == b"collect" for m in dead)


def test_a_raw_jwt_in_an_input_is_redacted_and_named(
    collector: RunningCollector, settings: Settings, token: str
) -> None:
    decision = documented_decisions()[0]
    # Assembled here so no fixture holds a token-shaped value.
    jwt = ".".join(["eyJhbGciOiJIUzI1NiJ9", "eyJzdWIiOiJhZ2VudC03In0", "c2lnbmF0dXJlLXBhcnQ"])
    decision["input"]["subject"] = f"Bearer {jwt}"
    status, answer = collector.upload_decisions([decision], token)
    assert status == 200, answer
    [event] = stored_events(settings)
    assert jwt not in event.model_dump_json()
    assert "jwt" in event.attributes[REDACTED_ATTRIBUTE]


def test_kafka_unavailable_answers_503_so_opa_keeps_the_batch(
    collector: RunningCollector, broker: RunningBroker, token: str
) -> None:
    broker.kill()
    status, answer, headers = collector.upload(
        gzip.compress(json.dumps(documented_decisions()).encode()), token
    )
    assert (status, answer["error"]) == (503, "unavailable")
    assert int(headers["Retry-After"]) > 0


def test_vault_socket_lines_with_a_token_prefix_are_published(
    collector: RunningCollector, settings: Settings
) -> None:
    token = collector.token(TENANT, "vault-prod")
    connection = collector.send_vault_lines(token, vault_story())
    try:
        until(
            lambda: any(e.producer == "vault-prod" for e in stored_events(settings)),
            timeout=60,
            what="the Vault socket lines' events",
        )
    finally:
        connection.close()
    events = [e for e in stored_events(settings) if e.producer == "vault-prod"]
    kinds = {e.event_type for e in events}
    assert EventType.CREDENTIAL_ISSUED in kinds
    assert EventType.ACCESS in kinds
    assert {e.tenant for e in events} == {TENANT}


def test_a_vault_socket_without_a_known_token_is_closed_and_nothing_published(
    collector: RunningCollector, settings: Settings
) -> None:
    collector.token(TENANT, "vault-prod")
    connection = collector.send_vault_lines("cct_" + "x" * 43, vault_story())
    try:
        connection.settimeout(30)
        # The collector closes the connection: the read ends (or the peer resets it).
        try:
            closed = connection.recv(1) == b""
        except ConnectionResetError:
            closed = True
        assert closed
    finally:
        connection.close()
    assert stored_events(settings) == []
