"""Task scopes against a real broker: a crash inside ``with`` / ``async with`` leaves on the
topic the declaration, what the task did, a revocation of every credential it still held
and a FAILED completion naming the exception's type."""

from __future__ import annotations

import asyncio

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
from producers.scopes import AsyncTaskScope, TaskScope
from producers.settings import Settings
from schemas.codec import AvroCodec
from tests.support.broker import read_to_end
from tests.support.samples import AGENT, BROKER, POLICY
from tests.support.sdk import (
    EXPORT_ACCESS,
    EXPORT_DECISION,
    EXPORT_GRANT,
    Shape,
    expires,
    shape,
)

pytestmark = pytest.mark.integration

CODEC = AvroCodec()


class ExportFailed(Exception):
    """The task's work failed."""


def stored(settings: Settings, task_id: str) -> list[Shape]:
    """The task's events as stored, in publish order: (type, token id or outcome, reason or
    detail)."""
    events = [CODEC.decode_event(value) for m in read_to_end(settings) if (value := m.value())]
    return shape(sorted((e for e in events if e.task_id == task_id), key=lambda e: e.seq or 0))


EXPECTED_AFTER_THE_CRASH: list[Shape] = [
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

# What the task does before it crashes, the same blocking and awaited.
TOKENS = ("tok-1", "tok-2", "tok-3")


def export_then_crash(task: TaskScope, policy: PolicyEngineRecorder) -> None:
    with task:
        decision_id = policy.decision(task.ctx, **EXPORT_DECISION)
        for token_id in TOKENS:
            task.issue(token_id, **EXPORT_GRANT, expires_at=expires(), decision_id=decision_id)
        task.revoke("tok-2", "MANUAL")
        task.access(**EXPORT_ACCESS | {"decision_id": decision_id})
        raise ExportFailed("connection reset")


async def export_then_crash_awaited(
    task: AsyncTaskScope, policy: AsyncPolicyEngineRecorder
) -> None:
    async with task:
        decision_id = await policy.decision(task.ctx, **EXPORT_DECISION)
        for token_id in TOKENS:
            await task.issue(
                token_id, **EXPORT_GRANT, expires_at=expires(), decision_id=decision_id
            )
        await task.revoke("tok-2", "MANUAL")
        await task.access(**EXPORT_ACCESS | {"decision_id": decision_id})
        raise ExportFailed("connection reset")


def test_a_crash_inside_a_task_scope_is_recorded_with_every_credential_revoked(
    settings: Settings,
) -> None:
    with CustodyProducer(settings, producer_instance="scope", create_topics=False) as producer:
        agent = AgentRecorder(producer, AGENT)
        broker = CredentialBrokerRecorder(producer, BROKER)
        task = agent.task("nightly export", ["warehouse:read"], broker=broker)
        with pytest.raises(ExportFailed):
            export_then_crash(task, PolicyEngineRecorder(producer, POLICY))
    assert stored(settings, task.ctx.task_id) == EXPECTED_AFTER_THE_CRASH


def test_a_crash_inside_an_async_task_scope_is_recorded_the_same_way(settings: Settings) -> None:
    async def main() -> str:
        async with await AsyncCustodyProducer.start(
            settings, producer_instance="async-scope", create_topics=False
        ) as producer:
            agent = AsyncAgentRecorder(producer, AGENT)
            broker = AsyncCredentialBrokerRecorder(producer, BROKER)
            task = agent.task("nightly export", ["warehouse:read"], broker=broker)
            with pytest.raises(ExportFailed):
                await export_then_crash_awaited(task, AsyncPolicyEngineRecorder(producer, POLICY))
            return task.ctx.task_id

    task_id = asyncio.run(main())
    assert stored(settings, task_id) == EXPECTED_AFTER_THE_CRASH
