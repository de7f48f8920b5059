"""Task scopes, break-glass elevations and rotating credentials, blocking and asyncio,
recorded into an in-memory publisher (no broker): which events, in which order, with which
outcome, and that every credential a scope issued is revoked when it ends.

The broker-backed version of the crash case is tests/integration/test_sdk_scopes.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from producers import (
    AgentRecorder,
    AsyncAgentRecorder,
    AsyncCredentialBrokerRecorder,
    CredentialBrokerRecorder,
    CustodyContext,
    DeliveryError,
    DeliveryReport,
    PolicyEngineRecorder,
    ScopeError,
    Stamp,
)
from producers import events as builders
from producers.events import CredentialIssuedFields
from producers.scopes import exception_name
from schemas.codec import AvroCodec
from schemas.models import Envelope, EventType
from tests.support.samples import AGENT, BROKER, HELPER, POLICY
from tests.support.sdk import EXPORT_ACCESS, EXPORT_DECISION, Shape, expires, shape

CODEC = AvroCodec()


class MemoryPublisher:
    """Keeps what is published, in order; ``refuse`` names tokens whose issuance or
    revocation the broker does not acknowledge (DeliveryError, as publish_sync raises)."""

    def __init__(self) -> None:
        self.events: list[Envelope] = []
        self.refuse: set[str] = set()

    def keep(self, event: Envelope) -> Stamp:
        # Every event must be one the wire accepts.
        stamped = event.model_copy(update={"producer_instance": "memory", "seq": 1})
        CODEC.encode_event(stamped)
        self.events.append(event)
        return Stamp(event.event_id, "memory", len(self.events), None)

    def confirm(self, event: Envelope) -> DeliveryReport:
        token_id = getattr(event.body, "token_id", None)  # type: ignore[attr-defined]
        if token_id in self.refuse:
            raise DeliveryError(f"event {event.event_id}: refused", [event.event_id])
        self.keep(event)
        return DeliveryReport(event.event_id, "custody.events.v1", 0, len(self.events), None)

    def publish(self, event: Envelope) -> Stamp:
        return self.keep(event)

    def publish_sync(self, event: Envelope) -> DeliveryReport:
        return self.confirm(event)


class AsyncMemoryPublisher(MemoryPublisher):
    """:class:`MemoryPublisher` with awaited verbs; each one lets other tasks run."""

    async def publish(self, event: Envelope) -> Stamp:  # type: ignore[override]
        await asyncio.sleep(0)
        return self.keep(event)

    async def publish_sync(self, event: Envelope) -> DeliveryReport:  # type: ignore[override]
        await asyncio.sleep(0)
        return self.confirm(event)


class ToolError(Exception):
    """A failure inside the task's work."""


DECLARED: Shape = ("TASK_DECLARED", None, None)
BREAK_GLASS: Shape = ("BREAK_GLASS", None, None)


def issued(token_id: str) -> Shape:
    return ("CREDENTIAL_ISSUED", token_id, None)


def revoked(token_id: str, reason: str = "TASK_ENDED") -> Shape:
    return ("CREDENTIAL_REVOKED", token_id, reason)


def completed(outcome: str = "SUCCEEDED", detail: str | None = None) -> Shape:
    return ("TASK_COMPLETED", outcome, detail)


def recorders() -> tuple[MemoryPublisher, AgentRecorder, CredentialBrokerRecorder]:
    publisher = MemoryPublisher()
    return publisher, AgentRecorder(publisher, AGENT), CredentialBrokerRecorder(publisher, BROKER)


def issue(task: Any, token_id: str) -> Any:
    return task.issue(
        token_id,
        credential_kind="JWT",
        audience="crm",
        scopes=["crm:read"],
        expires_at=expires(),
        decision_id="dec-1",
    )


def test_a_crash_inside_the_scope_completes_failed_and_revokes_every_live_credential() -> None:
    publisher, agent, broker = recorders()
    task = agent.task("export the report", ["crm:read"], broker=broker)

    def crash() -> None:
        with task:
            for token_id in ("tok-1", "tok-2", "tok-3"):
                issue(task, token_id)
            task.revoke("tok-2", "MANUAL")
            task.access(**EXPORT_ACCESS)
            raise ToolError("the tool broke with a value that must not be recorded")

    with pytest.raises(ToolError):
        crash()
    assert shape(publisher.events) == [
        DECLARED,
        *map(issued, ("tok-1", "tok-2", "tok-3")),
        revoked("tok-2", "MANUAL"),
        ("ACCESS", "tok-1", None),
        revoked("tok-1"),
        revoked("tok-3"),
        completed("FAILED", f"{__name__}.ToolError"),
    ]
    assert all(event.task_id == task.ctx.task_id for event in publisher.events)
    assert not any("must not be recorded" in event.model_dump_json() for event in publisher.events)
    assert task.live_tokens == []


def test_a_task_that_ends_normally_succeeds_and_revokes_what_is_left() -> None:
    publisher, agent, broker = recorders()
    with agent.task("triage", ["crm:read"], broker=broker, attributes={"env": "prod"}) as task:
        issue(task, "tok-1")
        assert task.live_tokens == ["tok-1"]
    assert shape(publisher.events) == [DECLARED, issued("tok-1"), revoked("tok-1"), completed()]
    declared = publisher.events[0]
    assert declared.depth == 0
    assert declared.attributes == {"env": "prod"}
    issuance: Any = publisher.events[1].body  # type: ignore[attr-defined]
    assert issuance.token_subject == AGENT.actor.workload_id
    assert publisher.events[2].producer == BROKER.producer  # the broker revokes


def test_an_outcome_set_inside_the_block_is_recorded() -> None:
    publisher, agent, _ = recorders()
    with agent.task("maybe", ["crm:read"]) as task:
        task.set_outcome("CANCELLED", "the user withdrew the request")
    assert shape(publisher.events)[-1] == completed("CANCELLED", "the user withdrew the request")


def test_a_delegated_task_runs_in_its_own_scope_under_the_child_context() -> None:
    publisher, agent, _ = recorders()
    helper = AgentRecorder(publisher, HELPER)
    with agent.task("plan", ["crm:read"]) as parent:
        child = parent.delegate(HELPER.actor.workload_id, ["crm:read"], "dec-1")
        with helper.task("look it up", ["crm:read"], ctx=child) as task:
            assert task.ctx == child
    types = [str(e.event_type) for e in publisher.events]
    assert types == [
        "TASK_DECLARED",
        "DELEGATION",
        "TASK_DECLARED",
        "TASK_COMPLETED",
        "TASK_COMPLETED",
    ]
    assert [e.task_id for e in publisher.events] == [
        parent.ctx.task_id,
        parent.ctx.task_id,
        child.task_id,
        child.task_id,
        parent.ctx.task_id,
    ]
    declared = publisher.events[2]
    assert declared.depth == 1
    assert declared.parent_task_id == parent.ctx.task_id


def test_issuing_without_a_broker_fails_the_task_with_the_error_type() -> None:
    publisher, agent, _ = recorders()

    def issue_without_a_broker() -> None:
        with agent.task("x", ["crm:read"]) as task:
            issue(task, "tok-1")

    with pytest.raises(ScopeError, match="broker"):
        issue_without_a_broker()
    assert shape(publisher.events) == [DECLARED, completed("FAILED", "producers.scopes.ScopeError")]


def test_a_revocation_the_broker_refuses_is_raised_after_the_task_completed() -> None:
    publisher, agent, broker = recorders()
    task = agent.task("x", ["crm:read"], broker=broker)

    def refused_at_exit() -> None:
        with task:
            issue(task, "tok-1")
            issue(task, "tok-2")
            publisher.refuse = {"tok-1", "tok-2"}

    with pytest.raises(DeliveryError) as caught:
        refused_at_exit()
    # Both revocations were tried, the task completed; the second failure is a note.
    assert shape(publisher.events)[-1] == completed()
    assert any("also failed" in note for note in caught.value.__notes__)
    assert task.live_tokens == ["tok-1", "tok-2"]


def test_an_exit_failure_never_masks_the_exception_from_the_block(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher, agent, broker = recorders()

    def refused_after_a_crash() -> None:
        with agent.task("x", ["crm:read"], broker=broker) as task:
            issue(task, "tok-1")
            publisher.refuse = {"tok-1"}
            raise ToolError

    with pytest.raises(ToolError):
        refused_after_a_crash()
    assert shape(publisher.events)[-1] == completed("FAILED", f"{__name__}.ToolError")
    assert "refused" in caplog.text


def test_break_glass_revokes_the_elevated_credentials_when_the_elevation_ends() -> None:
    publisher, agent, broker = recorders()
    with agent.task("restore checkout", ["prod:restart"], broker=broker) as task:
        issue(task, "tok-standing")
        with task.break_glass(
            reason="sev1", standing_access_unavailable="not in the role", expires_at=expires()
        ) as elevation:
            issue(elevation, "tok-glass")
        assert task.live_tokens == ["tok-standing"]
    assert shape(publisher.events) == [
        DECLARED,
        issued("tok-standing"),
        BREAK_GLASS,
        issued("tok-glass"),
        revoked("tok-glass"),
        revoked("tok-standing"),
        completed(),
    ]
    glass: Any = publisher.events[2].body  # type: ignore[attr-defined]
    assert glass.break_glass_id == elevation.break_glass_id


def test_a_rotation_chains_each_credential_to_the_one_before_and_revokes_the_last() -> None:
    publisher, agent, broker = recorders()
    with agent.task("nightly export", ["warehouse:read"], broker=broker) as task:
        with task.rotation(
            credential_kind="DB_CREDENTIAL", audience="warehouse", scopes=["warehouse:read"]
        ) as tokens:
            for number in (1, 2, 3):
                tokens.rotate(f"tok-{number}", expires_at=expires(), decision_id="dec-1")
            assert tokens.current == "tok-3"
        assert task.live_tokens == []
    assert shape(publisher.events) == [
        DECLARED,
        issued("tok-1"),
        issued("tok-2"),
        revoked("tok-1", "ROTATED"),
        issued("tok-3"),
        revoked("tok-2", "ROTATED"),
        revoked("tok-3"),
        completed(),
    ]
    parents = [
        e.body.parent_token_id  # type: ignore[attr-defined]
        for e in publisher.events
        if e.event_type == EventType.CREDENTIAL_ISSUED
    ]
    assert parents == [None, "tok-1", "tok-2"]


def test_a_rotation_on_its_own_revokes_its_current_credential_at_exit() -> None:
    publisher, _, broker = recorders()
    rotation = broker.rotation(
        CustodyContext.new_root(),
        token_subject=AGENT.actor.workload_id,
        credential_kind="DB_CREDENTIAL",
        audience="warehouse",
        scopes=["warehouse:read"],
    )

    def rotate_then_crash() -> None:
        with rotation as tokens:
            tokens.rotate("tok-1", expires_at=expires(), decision_id="dec-1")
            raise ToolError

    with pytest.raises(ToolError):
        rotate_then_crash()
    assert shape(publisher.events) == [issued("tok-1"), revoked("tok-1")]


def test_the_recorders_publish_what_the_builders_build() -> None:
    publisher, agent, broker = recorders()
    policy = PolicyEngineRecorder(publisher, POLICY)
    ctx = CustodyContext.new_root()
    agent.declare_task(ctx, "report", ["crm:read"])
    decision_id = policy.decision(ctx, **EXPORT_DECISION)
    issuance = CredentialIssuedFields(
        token_id="tok-1",
        token_subject=AGENT.actor.workload_id,
        credential_kind="JWT",
        audience="crm",
        scopes=["crm:read"],
        issued_at=datetime.now(UTC),
        expires_at=expires(),
        decision_id=decision_id,
    )
    broker.issued(ctx, **issuance)
    engine = POLICY.producer
    expected: list[Envelope] = [
        builders.task_declared(AGENT, ctx, purpose="report", requested_scopes=["crm:read"]),
        builders.authz_decision(
            POLICY, ctx, decision_id=decision_id, policy_engine=engine, **EXPORT_DECISION
        ),
        builders.credential_issued(BROKER, ctx, **issuance),
    ]
    ignored = {"event_id", "event_time"}
    assert [e.model_dump(exclude=ignored) for e in publisher.events] == [
        e.model_dump(exclude=ignored) for e in expected
    ]


def test_exception_names() -> None:
    assert exception_name(ValueError) == "ValueError"
    assert exception_name(asyncio.CancelledError) == "asyncio.exceptions.CancelledError"
    assert exception_name(ToolError) == f"{__name__}.ToolError"


# ---- asyncio ----------------------------------------------------------------------------


def async_recorders() -> tuple[
    AsyncMemoryPublisher, AsyncAgentRecorder, AsyncCredentialBrokerRecorder
]:
    publisher = AsyncMemoryPublisher()
    return (
        publisher,
        AsyncAgentRecorder(publisher, AGENT),
        AsyncCredentialBrokerRecorder(publisher, BROKER),
    )


def test_async_crash_inside_the_scope_completes_failed_and_revokes() -> None:
    publisher, agent, broker = async_recorders()

    async def work() -> None:
        async with agent.task("export", ["crm:read"], broker=broker) as task:
            await issue(task, "tok-1")
            await issue(task, "tok-2")
            await task.revoke("tok-1", "MANUAL")
            async with task.rotation(
                credential_kind="DB_CREDENTIAL", audience="dw", scopes=["dw:read"]
            ) as tokens:
                await tokens.rotate("tok-r1", expires_at=expires(), decision_id="dec-1")
                await tokens.rotate("tok-r2", expires_at=expires(), decision_id="dec-1")
                raise KeyError("tok-r2")

    with pytest.raises(KeyError):
        asyncio.run(work())
    assert shape(publisher.events) == [
        DECLARED,
        issued("tok-1"),
        issued("tok-2"),
        revoked("tok-1", "MANUAL"),
        issued("tok-r1"),
        issued("tok-r2"),
        revoked("tok-r1", "ROTATED"),
        revoked("tok-r2"),
        revoked("tok-2"),
        completed("FAILED", "KeyError"),
    ]


def test_a_cancelled_async_task_completes_cancelled() -> None:
    publisher, agent, broker = async_recorders()
    entered = asyncio.Event()

    async def work() -> None:
        async with agent.task("long job", ["crm:read"], broker=broker) as task:
            await issue(task, "tok-1")
            entered.set()
            await asyncio.Event().wait()  # until cancelled

    async def main() -> None:
        running = asyncio.create_task(work())
        await entered.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(main())
    assert shape(publisher.events)[-2:] == [
        revoked("tok-1"),
        completed("CANCELLED", "asyncio.exceptions.CancelledError"),
    ]


def test_async_break_glass_and_many_concurrent_scopes() -> None:
    publisher, agent, broker = async_recorders()

    async def one(number: int) -> str:
        async with agent.task(f"job {number}", ["prod:restart"], broker=broker) as task:
            async with task.break_glass(
                reason="sev1", standing_access_unavailable="no role", expires_at=expires()
            ) as elevation:
                await issue(elevation, f"tok-{number}")
            return task.ctx.task_id

    async def main() -> list[str]:
        return await asyncio.gather(*(one(n) for n in range(50)))

    task_ids = asyncio.run(main())
    for number, task_id in enumerate(task_ids):
        mine = [e for e in publisher.events if e.task_id == task_id]
        token_id = f"tok-{number}"
        assert shape(mine) == [
            DECLARED,
            BREAK_GLASS,
            issued(token_id),
            revoked(token_id),
            completed(),
        ]
