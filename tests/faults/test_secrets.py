"""Secrets: no token value, key or password reaches logs, topics or ClickHouse.

Canary secrets of every kind Custody detects go through every way in: the SDK (refused
before sending), ``custody publish`` (refused, naming the line and field, not the value),
raw records written straight onto ``custody.events.v1`` (valid events with canaries in
their free-text fields, and garbage that merely contains one), and a ClickHouse password
in the URL. Then everything the stack wrote is scanned: every row of every ClickHouse
table, every log, the state, alert and dead-letter topics (values and headers) and the
CLI's own output. The raw input topic itself is excluded: it holds what the attacker wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from producers.producer import CustodyProducer
from producers.simulator import SimulationConfig, simulate
from schemas import topics
from schemas.models import Envelope
from schemas.secrets import SecretValueError
from tests.faults.conftest import Recorder
from tests.support.broker import free_port, header_list, read_to_end, run_custody
from tests.support.polling import until
from tests.support.samples import Chain, as_event
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CANARIES = {
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkwMSJ9.c2lnbmF0dXJlY2FuYXJ5",
    "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANcanary02\n-----END PRIVATE KEY-----",
    "aws_access_key": "AKIAQWERTYUIOPASDFGH",
    "google_api_key": "AIzaSyCanary03abcdefghijklmnopqrstuvwxy",
    "github_token": "ghp_Canary04abcdefghijklmnopqrstuvwxyz0123",
    "slack_token": "xoxb-canary05-1234567890",
    "azure_storage_key": "AccountKey=" + "Q2FuYXJ5MDY" * 8,
}
# The part of each canary that must never be seen again (the marker alone is harmless).
TELLTALES = {
    "jwt": "c2lnbmF0dXJlY2FuYXJ5",
    "private_key": "MIIEvQIBADANcanary02",
    "aws_access_key": "QWERTYUIOPASDFGH",
    "google_api_key": "SyCanary03abcdefghijklmnop",
    "github_token": "Canary04abcdefghijklmnop",
    "slack_token": "canary05-1234567890",
    "azure_storage_key": "Q2FuYXJ5MDYQ2FuYXJ5MDY",
}
PASSWORD = "PwCanary07-do-not-log"


def _with_canary(event: Envelope, kind: str) -> Envelope:
    """The event with the canary in its attributes and in a free-text body field."""
    secret = CANARIES[kind]
    update: dict[str, Any] = {"attributes": {**event.attributes, "note": f"key {secret}"}}
    body = as_event(event).body
    for name in ("purpose", "detail", "resource"):
        if getattr(body, name, None) is not None:
            update["body"] = body.model_copy(update={name: f"see {secret}"})
            break
    return event.model_copy(update=update)


def _raw_events(stream: list[Envelope], instance: str) -> tuple[list[bytes], int]:
    """The stream encoded with its hash chain as the SDK would, a canary in one event
    of each kind (the SDK itself would refuse those); how many carry one."""
    chain = Chain(instance)
    kinds = list(CANARIES)
    values, tainted = [], 0
    for index, event in enumerate(stream):
        if index % 5 == 2 and tainted < len(kinds):
            event = _with_canary(event, kinds[tainted])
            tainted += 1
        values.append(chain.encode(event))
    return values, tainted


def _leaks(text: str | bytes) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode()
    found = [kind for kind, telltale in TELLTALES.items() if telltale.encode() in data]
    return found + (["password"] if PASSWORD.encode() in data else [])


def test_no_secret_reaches_logs_topics_or_clickhouse(
    tmp_path: Path, record_fault: Recorder
) -> None:
    stack = Stack(tmp_path)
    stream = list(simulate(SimulationConfig(roots=4, seed=5, tenant="acme")))
    try:
        stack.up()
        settings = stack.settings()

        # 1. The SDK refuses every kind before anything is sent.
        refusals: list[str] = []
        with CustodyProducer(settings, producer_instance="faults/secrets/sdk") as producer:
            for kind in CANARIES:
                try:
                    producer.publish(_with_canary(stream[0], kind))
                except SecretValueError as exc:
                    refusals.append(str(exc))
        refused = len(refusals)
        assert not [message for message in refusals if _leaks(message)]

        # 2. custody publish refuses a JSON line, naming it and the field.
        line = json.loads(stream[0].model_dump_json())
        line["attributes"] = {"note": CANARIES["github_token"]}
        source = tmp_path / "events.jsonl"
        source.write_text(json.dumps(line) + "\n")
        cli = stack.custody("publish", str(source))
        cli_refused = cli.returncode != 0 and "line 1" in cli.stderr and "attributes" in cli.stderr

        # 3. Straight onto the topic: valid events carrying canaries, and garbage.
        values, tainted = _raw_events(stream, "faults/secrets/raw")
        garbage = [
            b"\x00\x01garbage " + CANARIES["aws_access_key"].encode(),
            json.dumps({"token": CANARIES["jwt"], "event_type": "ACCESS"}).encode(),
            values[0][:40] + CANARIES["slack_token"].encode(),
        ]
        raw = Producer(settings.kafka_common())
        for value in [*values, *garbage]:
            raw.produce(topics.EVENTS, value=value, key=stream[0].root_task_id.encode())
        # A secret in the key of a record that is dead-lettered.
        raw.produce(topics.EVENTS, value=b"garbage", key=CANARIES["github_token"].encode())
        assert raw.flush(30) == 0

        def stored() -> bool:
            return stack.count("SELECT count() AS n FROM events") >= len(values)

        until(stored, 120, "the raw events stored")
        until(
            lambda: stack.count("SELECT count() AS n FROM tasks") > 0,
            120,
            "the correlator's state stored",
        )

        # 4. A password in the ClickHouse URL.
        migrate = run_custody(
            stack.bootstrap,
            "migrate",
            cwd=tmp_path,
            env={
                **stack.env,
                "CUSTODY_CLICKHOUSE_URL": f"clickhouse://writer:{PASSWORD}@127.0.0.1:"
                f"{free_port()}/custody",
            },
        )
        assert migrate.returncode != 0

        # Scan what was written.
        leaks: dict[str, list[str]] = {}
        redacted = stack.count(
            "SELECT count() AS n FROM events WHERE mapContains(attributes, 'custody.redacted')"
        )
        for table in ("events", "tasks", "delegations", "credentials", "alerts", "task_roots"):
            dump = stack.custody("query", f"SELECT * FROM {table}", "--json").stdout
            leaks[f"clickhouse {table}"] = _leaks(dump)
        trace = stack.custody("trace", stream[0].root_task_id, "--json").stdout
        leaks["custody trace"] = _leaks(trace)
        leaks["custody publish output"] = _leaks(cli.stdout + cli.stderr)
        leaks["custody migrate output"] = _leaks(migrate.stdout + migrate.stderr)
        for log in sorted((tmp_path / ".custody" / "logs").glob("*.log")):
            leaks[f"log {log.name}"] = _leaks(log.read_bytes())
        dead_letters = 0
        for topic in (topics.STATE, topics.ALERTS, topics.DLQ):
            for message in read_to_end(settings, topic):
                dead_letters += topic == topics.DLQ
                headers = b"".join(value for _, value in header_list(message))
                found = _leaks((message.key() or b"") + (message.value() or b"") + headers)
                leaks.setdefault(f"topic {topic}", []).extend(found)
    finally:
        stack.custody("down")

    leaked = {where: sorted(set(kinds)) for where, kinds in leaks.items() if kinds}
    survived = (
        not leaked
        and refused == len(CANARIES)
        and cli_refused
        and redacted >= tainted
        and dead_letters >= len(garbage)
    )
    record_fault(
        "secrets",
        f"{len(CANARIES)} kinds of secret via the SDK, custody publish, raw valid events, "
        "raw garbage and a ClickHouse URL password; everything written scanned",
        survived,
        sdk_refused=refused,
        cli_refused=cli_refused,
        raw_events_redacted=redacted,
        dead_letters=dead_letters,
        places_scanned=len(leaks),
        leaked=leaked or "none",
    )
    assert not leaked, leaked
    assert refused == len(CANARIES), cli.stderr
    assert cli_refused, cli.stderr
    assert redacted >= tainted
    assert dead_letters >= len(garbage)
