"""One builder per event type, so a caller cannot forget a required field.

Each builder takes the :class:`Source` (who emits), the :class:`CustodyContext` (where in
the custody tree) and the body's fields as keyword arguments, and returns a validated,
not yet stamped event model; :class:`producers.producer.CustodyProducer` stamps the hash
chain when it publishes. ``event_time`` defaults to now (UTC).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from producers.context import CustodyContext
from schemas.models import (
    AccessEvent,
    AccessOutcome,
    Actor,
    ActorKind,
    ApprovalEvent,
    AuthzDecisionEvent,
    BreakGlassEvent,
    CredentialIssuedEvent,
    CredentialKind,
    CredentialRevokedEvent,
    Decision,
    DelegationEvent,
    Envelope,
    EventType,
    RevocationReason,
    TaskCompletedEvent,
    TaskDeclaredEvent,
    TaskOutcome,
)

E = TypeVar("E", bound=Envelope)


@dataclass(frozen=True, slots=True)
class Source:
    """Who emits: the tenant, the emitting service and the acting workload identity."""

    tenant: str
    producer: str
    actor: Actor

    @classmethod
    def of(
        cls,
        tenant: str,
        producer: str,
        workload_id: str,
        kind: ActorKind | str,
        instance_id: str,
        on_behalf_of: str | None = None,
    ) -> Source:
        actor = Actor(
            workload_id=workload_id,
            kind=ActorKind(kind),
            instance_id=instance_id,
            on_behalf_of=on_behalf_of,
        )
        return cls(tenant, producer, actor)


def _envelope(
    source: Source,
    ctx: CustodyContext,
    event_type: EventType,
    event_time: datetime | None,
    attributes: Mapping[str, str] | None,
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "event_time": event_time or datetime.now(UTC),
        "tenant": source.tenant,
        "producer": source.producer,
        "root_task_id": ctx.root_task_id,
        "task_id": ctx.task_id,
        "parent_task_id": ctx.parent_task_id,
        "depth": ctx.depth,
        "actor": source.actor,
        "attributes": dict(attributes or {}),
    }


def _build(model: type[E], envelope: dict[str, Any], body: dict[str, Any]) -> E:
    return model.model_validate({**envelope, "body": body})


def task_declared(
    source: Source,
    ctx: CustodyContext,
    *,
    purpose: str,
    requested_scopes: Sequence[str],
    deadline: datetime | None = None,
    event_time: datetime | None = None,
    attributes: Mapping[str, str] | None = None,
) -> TaskDeclaredEvent:
    """A task is declared with its purpose and the scopes it asks for."""
    envelope = _envelope(source, ctx, EventType.TASK_DECLARED, event_time, attributes)
    body = {"purpose": purpose, "requested_scopes": list(requested_scopes), "deadline": deadline}
    return _build(TaskDeclaredEvent, envelope, body)


def authz_decision(
    source: Source,
    ctx: CustodyContext,
    *,
    decision_id: str,
    policy_engine: str,
    policy_id: str,
    policy_version: str,
    decision: Decision | str,
    resource: str,
    action: str,
    data_scope: Sequence[str],
    reasons: Sequence[str],
    context: Mapping[str, str] | None = None,
    event_time: datetime | None = None,
    attributes: Mapping[str, str] | None = None,
) -> AuthzDecisionEvent:
    """A policy engine allowed or denied an action, with machine-readable reasons."""
    envelope = _envelope(source, ctx, EventType.AUTHZ_DECISION, event_time, attributes)
    body = {
        "decision_id": decision_id,
        "policy_engine": policy_engine,
        "policy_id": policy_id,
        "policy_version": policy_version,
        "decision": decision,
        "resource": resource,
        "action": action,
        "data_scope": list(data_scope),
        "reasons": list(reasons),
        "context": dict(context or {}),
    }
    return _build(AuthzDecisionEvent, envelope, body)


def credential_issued(
    source: Source,
    ctx: CustodyContext,
    *,
    token_id: str,
    token_subject: str,
    credential_kind: CredentialKind | str,
    audience: str,
    scopes: Sequence[str],
    issued_at: datetime,
    expires_at: datetime,
    decision_id: str,
    parent_token_id: str | None = None,
    event_time: datetime | None = None,
    attributes: Mapping[str, str] | None = None,
) -> CredentialIssuedEvent:
    """A short-lived credential was issued, named by ``token_id`` (never its value)."""
    envelope = _envelope(source, ctx, EventType.CREDENTIAL_ISSUED, event_time, attributes)
    body = {
        "token_id": token_id,
        "token_subject": token_subject,
        "credential_kind": credential_kind,
        "audience": audience,
        "scopes": list(scopes),
        "issued_at": issued_at,
        "expires_at": expires_at,
        "decision_id": decision_id,
        "parent_token_id": parent_token_id,
    }
    return _build(CredentialIssuedEvent, envelope, body)


def access(
    source: Source,
    ctx: CustodyContext,
    *,
    token_id: str,
    tool: str,
    resource: str,
    action: str,
    data_scope: Sequence[str],
    outcome: AccessOutcome | str,
    decision_id: str | None = None,
    detail: str | None = None,
    event_time: datetime | None = None,
    attributes: Mapping[str, str] | None = None,
) -> AccessEvent:
    """A workload used a credential through a tool on a resource."""
    envelope = _envelope(source, ctx, EventType.ACCESS, event_time, attributes)
    body = {
        "token_id": token_id,
        "tool": tool,
        "resource": resource,
        "action": action,
        "data_scope": list(data_scope),
        "decision_id": decision_id,
        "outcome": outcome,
        "detail": detail,
    }
    return _build(AccessEvent, envelope, body)


def delegation(
    source: Source,
    ctx: CustodyContext,
    *,
    child: CustodyContext,
    delegator: str,
    delegatee: str,
    scopes: Sequence[str],
    decision_id: str,
    event_time: datetime | None = None,
    attributes: Mapping[str, str] | None = None,
) -> DelegationEvent:
    """The task of ``ctx`` delegated work to ``child`` (made with ``ctx.child()``)."""
    if child.parent_task_id != ctx.task_id or child.root_task_id != ctx.root_task_id:
        raise ValueError("child context must be derived from ctx with ctx.child()")
    envelope = _envelope(source, ctx, EventType.DELEGATION, event_time, attributes)
    body = {
        "delegator": delegator,
        "delegatee": delegatee,
        "child_task_id": child.task_id,
        "scopes": list(scopes),
        "decision_id": decision_id,
    }
    return _build(DelegationEvent, envelope, body)


def approval(
    source: Source,
    ctx: CustodyContext,
    *,
    approval_id: str,
    approver: str,
    approves: str,
    scopes: Sequence[str],
    reason: str,
    expires_at: datetime | None = None,
    event_time: datetime | None = None,
    attributes: Mapping[str, str] | None = None,
) -> ApprovalEvent:
    """A human approved a task or a break-glass."""
    envelope = _envelope(source, ctx, EventType.APPROVAL, event_time, attributes)
    body = {
        "approval_id": approval_id,
        "approver": approver,
        "approves": approves,
        "scopes": list(scopes),
        "expires_at": expires_at,
        "reason": reason,
    }
    return _build(ApprovalEvent, envelope, body)


def break_glass(
    source: Source,
    ctx: CustodyContext,
    *,
    break_glass_id: str,
    reason: str,
    standing_access_unavailable: str,
    expires_at: datetime,
    approval_id: str | None = None,
    event_time: datetime | None = None,
    attributes: Mapping[str, str] | None = None,
) -> BreakGlassEvent:
    """Emergency access outside standing policy, and why standing access was not used."""
    envelope = _envelope(source, ctx, EventType.BREAK_GLASS, event_time, attributes)
    body = {
        "break_glass_id": break_glass_id,
        "reason": reason,
        "standing_access_unavailable": standing_access_unavailable,
        "approval_id": approval_id,
        "expires_at": expires_at,
    }
    return _build(BreakGlassEvent, envelope, body)


def credential_revoked(
    source: Source,
    ctx: CustodyContext,
    *,
    token_id: str,
    reason: RevocationReason | str,
    revoked_by: str,
    event_time: datetime | None = None,
    attributes: Mapping[str, str] | None = None,
) -> CredentialRevokedEvent:
    """A credential was revoked."""
    envelope = _envelope(source, ctx, EventType.CREDENTIAL_REVOKED, event_time, attributes)
    body = {"token_id": token_id, "reason": reason, "revoked_by": revoked_by}
    return _build(CredentialRevokedEvent, envelope, body)


def task_completed(
    source: Source,
    ctx: CustodyContext,
    *,
    outcome: TaskOutcome | str,
    detail: str | None = None,
    event_time: datetime | None = None,
    attributes: Mapping[str, str] | None = None,
) -> TaskCompletedEvent:
    """A task ended with an outcome."""
    envelope = _envelope(source, ctx, EventType.TASK_COMPLETED, event_time, attributes)
    body = {"outcome": outcome, "detail": detail}
    return _build(TaskCompletedEvent, envelope, body)
