"""Task scopes against a real broker: a crash inside ``with`` / ``async with`` leaves on the
topic the declaration, what the task did, a revocation of every credential it still held
and a FAILED completion naming the exception's type."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from producers import (
    AgentRecorder,
    AsyncAgentRecorder,
    AsyncCredentialBrokerRecorder,
    AsyncCustodyProducer,
    AsyncPolicyEngineRecorder,
    CredentialBrokerRecorder,
    CustodyProducer,
    PolicyEngineRecorder,
)
from producers.settings import Settings
from schemas.codec import AvroCodec
from schemas.models import Envelope
from tests.support.broker import read_to_end
from tests.support.samples import AGENT, BROKER, POLICY

pytestmark = pytest.mark.integration

CODEC = AvroCodec()
EXPIRES = datetime.now(UTC) + timedelta(minutes=15)


class ExportFailed(Exception):
    """The task's work failed."""


def stored(settings: Settings, task_id: str) -> list[tuple[str, str | None, str | None]]:
    """The task's events as stored, in publish order: (type, token id or outcome, reason or
    detail)."""
    events: list[Envelope] = [CODEC.decode_event(m.value()) for m in read_to_end(settings)]
    events = sorted((e for e in events if e.task_id == task_id), key=lambda e: e.seq or 0)
    shape = []
    for event in events:
        body: Any = event.body  # type: ignore[attr-defined]
        token = getattr(body, "token_id", None)
        if event.event_type == "TASK_COMPLETED":
            shape.append((str(event.event_type), str(body.outcome), body.detail))
        elif event.event_type == "CREDENTIAL_REVOKED":
            shape.append((str(event.event_type), token, str(body.reason)))
        else:
            shape.append((str(event.event_type), token, None))
    return shape


EXPECTED_AFTER_THE_CRASH = [
    ("TASK_DECLARED", None, None),
    ("AUTHZ_DECISION", None, None),
    ("CREDENTIAL_ISSUED", "tok-1", None),
    ("CREDENTIAL_ISSUED", "tok-2", None),
    ("CREDENTIAL_ISSUED", "tok-3", None),
    ("CREDENTIAL_REVOKED", "tok-2", "MANUAL"),
    ("ACCESS", "tok-1", None),
    ("CREDENTIAL_REVOKED", "tok-1", "TASK_ENDED"),
    ("CREDENTIAL_REVOKED", "tok-3", "TASK_ENDED"),
    ("TASK_COMPLETED", "FAILED", f"{__name__}.ExportFailed"),
]

ACCESS = {
    "token_id": "tok-1",
    "tool": "warehouse.export",
    "resource": "warehouse://sales",
    "action": "read",
    "data_scope": ["warehouse:read"],
    "outcome": "FAILURE",
}


def test_a_crash_inside_a_task_scope_is_recorded_with_every_credential_revoked(
    settings: Settings,
) -> None:
    with CustodyProducer(settings, producer_instance="scope", create_topics=False) as producer:
        agent = AgentRecorder(producer, AGENT)
        broker = CredentialBrokerRecorder(producer, BROKER)
        policy = PolicyEngineRecorder(producer, POLICY)
        with (
            pytest.raises(ExportFailed),
            agent.task("nightly export", ["warehouse:read"], broker=broker) as task,
        ):
            decision_id = policy.decision(
                task.ctx,
                policy_id="exports",
                policy_version="3",
                decision="ALLOW",
                resource="warehouse://sales",
                action="read",
                data_scope=["warehouse:read"],
                reasons=["scheduled export"],
            )
            for token_id in ("tok-1", "tok-2", "tok-3"):
                task.issue(
                    token_id,
                    credential_kind="DB_CREDENTIAL",
                    audience="warehouse",
                    scopes=["warehouse:read"],
                    expires_at=EXPIRES,
                    decision_id=decision_id,
                )
            task.revoke("tok-2", "MANUAL")
            task.access(**ACCESS, decision_id=decision_id)
            raise ExportFailed("connection reset")
    assert stored(settings, task.ctx.task_id) == EXPECTED_AFTER_THE_CRASH


def test_a_crash_inside_an_async_task_scope_is_recorded_the_same_way(settings: Settings) -> None:
    async def main() -> str:
        async with await AsyncCustodyProducer.start(
            settings, producer_instance="async-scope", create_topics=False
        ) as producer:
            agent = AsyncAgentRecorder(producer, AGENT)
            broker = AsyncCredentialBrokerRecorder(producer, BROKER)
            policy = AsyncPolicyEngineRecorder(producer, POLICY)
            task_id = ""
            with pytest.raises(ExportFailed):
                async with agent.task("nightly export", ["warehouse:read"], broker=broker) as task:
                    task_id = task.ctx.task_id
                    decision_id = await policy.decision(
                        task.ctx,
                        policy_id="exports",
                        policy_version="3",
                        decision="ALLOW",
                        resource="warehouse://sales",
                        action="read",
                        data_scope=["warehouse:read"],
                        reasons=["scheduled export"],
                    )
                    for token_id in ("tok-1", "tok-2", "tok-3"):
                        await task.issue(
                            token_id,
                            credential_kind="DB_CREDENTIAL",
                            audience="warehouse",
                            scopes=["warehouse:read"],
                            expires_at=EXPIRES,
                            decision_id=decision_id,
                        )
                    await task.revoke("tok-2", "MANUAL")
                    await task.access(**ACCESS, decision_id=decision_id)
                    raise ExportFailed("connection reset")
            return task_id

    task_id = asyncio.run(main())
    assert stored(settings, task_id) == EXPECTED_AFTER_THE_CRASH
