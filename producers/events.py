"""One builder per event type, so a caller cannot forget a required field.

Each builder takes the :class:`Source` (who emits), the :class:`CustodyContext` (where in
the custody tree) and the body's fields as keyword arguments, and returns a validated,
not yet stamped event model; :class:`producers.producer.CustodyProducer` stamps the hash
chain when it publishes. ``event_time`` defaults to now (UTC).

The keyword arguments of each event type are named once, as a ``TypedDict`` here (PEP 692):
the builders, the recorders of :mod:`producers.roles` and :mod:`producers.aio` and the
scopes of :mod:`producers.scopes` all take them from these, so a type checker holds every
call to the contract's fields. Where a recorder fills a field itself (the delegator, the
revoking broker, a new decision id), its arguments are the part without that field.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NotRequired, TypedDict, TypeVar, Unpack

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
    CredentialRenewedEvent,
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


# ---- the keyword arguments of each event type ------------------------------------------


class EnvelopeFields(TypedDict, total=False):
    """What every event may take besides its body: when it happened (default: now) and
    free-form string attributes."""

    event_time: datetime | None
    attributes: Mapping[str, str] | None


class TaskDeclaration(EnvelopeFields, total=False):
    """A declaration's optional part, beside its purpose and requested scopes."""

    deadline: datetime | None


class TaskDeclaredFields(TaskDeclaration):
    """A TASK_DECLARED body."""

    purpose: str
    requested_scopes: Sequence[str]


class DecisionFields(EnvelopeFields):
    """What a policy engine decided; the engine and the decision's id come from it."""

    policy_id: str
    policy_version: str
    decision: Decision | str
    resource: str
    action: str
    data_scope: Sequence[str]
    reasons: Sequence[str]
    context: NotRequired[Mapping[str, str] | None]


class AuthzDecisionFields(DecisionFields):
    """An AUTHZ_DECISION body."""

    decision_id: str
    policy_engine: str


class CredentialGrant(TypedDict):
    """What a credential grants: its kind, audience and scopes (a rotation's every one)."""

    credential_kind: CredentialKind | str
    audience: str
    scopes: Sequence[str]


class CredentialIssuedFields(CredentialGrant, EnvelopeFields):
    """A CREDENTIAL_ISSUED body."""

    token_id: str
    token_subject: str
    issued_at: datetime
    expires_at: datetime
    decision_id: str
    parent_token_id: NotRequired[str | None]


class AccessFields(EnvelopeFields):
    """An ACCESS body."""

    token_id: str
    tool: str
    resource: str
    action: str
    data_scope: Sequence[str]
    outcome: AccessOutcome | str
    decision_id: NotRequired[str | None]
    detail: NotRequired[str | None]


class Delegated(EnvelopeFields):
    """What a task hands over and on which decision; the delegator is the recorder's."""

    delegatee: str
    scopes: Sequence[str]
    decision_id: str


class DelegationFields(Delegated):
    """A DELEGATION body: ``child`` is the delegated task's context, made by ``ctx.child()``."""

    child: CustodyContext
    delegator: str


class ApprovalFields(EnvelopeFields):
    """An APPROVAL body."""

    approval_id: str
    approver: str
    approves: str
    scopes: Sequence[str]
    reason: str
    expires_at: NotRequired[datetime | None]


class ElevationFields(EnvelopeFields):
    """Why a break-glass is needed and until when; a recorder names it unless told."""

    reason: str
    standing_access_unavailable: str
    expires_at: datetime
    approval_id: NotRequired[str | None]


class BreakGlassFields(ElevationFields):
    """A BREAK_GLASS body."""

    break_glass_id: str


class Revocation(EnvelopeFields):
    """What a broker revokes and why; the revoking workload is the broker's."""

    token_id: str
    reason: RevocationReason | str


class CredentialRevokedFields(Revocation):
    """A CREDENTIAL_REVOKED body."""

    revoked_by: str


class Renewal(EnvelopeFields):
    """What a broker renews and until when; the renewing workload is the broker's."""

    token_id: str
    expires_at: datetime


class CredentialRenewedFields(Renewal):
    """A CREDENTIAL_RENEWED body."""

    renewed_by: str


class TaskCompletion(EnvelopeFields, total=False):
    """A completion's optional part, beside its outcome."""

    detail: str | None


class TaskCompletedFields(TaskCompletion):
    """A TASK_COMPLETED body."""

    outcome: TaskOutcome | str


# ---- builders -------------------------------------------------------------------------


def _build(
    model: type[E],
    event_type: EventType,
    source: Source,
    ctx: CustodyContext,
    fields: Mapping[str, Any],
) -> E:
    # The envelope's two optional fields travel with the body's; the rest is the body,
    # which the model checks (a field it does not know is rejected there).
    body = dict(fields)
    event_time = body.pop("event_time", None)
    attributes = body.pop("attributes", None)
    envelope = {
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
        "body": body,
    }
    return model.model_validate(envelope)


def task_declared(
    source: Source, ctx: CustodyContext, **fields: Unpack[TaskDeclaredFields]
) -> TaskDeclaredEvent:
    """A task is declared with its purpose and the scopes it asks for."""
    return _build(TaskDeclaredEvent, EventType.TASK_DECLARED, source, ctx, fields)


def authz_decision(
    source: Source, ctx: CustodyContext, **fields: Unpack[AuthzDecisionFields]
) -> AuthzDecisionEvent:
    """A policy engine allowed or denied an action, with machine-readable reasons."""
    body = {**fields, "context": fields.get("context") or {}}
    return _build(AuthzDecisionEvent, EventType.AUTHZ_DECISION, source, ctx, body)


def credential_issued(
    source: Source, ctx: CustodyContext, **fields: Unpack[CredentialIssuedFields]
) -> CredentialIssuedEvent:
    """A short-lived credential was issued, named by ``token_id`` (never its value)."""
    return _build(CredentialIssuedEvent, EventType.CREDENTIAL_ISSUED, source, ctx, fields)


def access(source: Source, ctx: CustodyContext, **fields: Unpack[AccessFields]) -> AccessEvent:
    """A workload used a credential through a tool on a resource."""
    return _build(AccessEvent, EventType.ACCESS, source, ctx, fields)


def delegation(
    source: Source, ctx: CustodyContext, **fields: Unpack[DelegationFields]
) -> DelegationEvent:
    """The task of ``ctx`` delegated work to ``child`` (made with ``ctx.child()``)."""
    body: dict[str, Any] = dict(fields)
    child: CustodyContext = body.pop("child")
    if child.parent_task_id != ctx.task_id or child.root_task_id != ctx.root_task_id:
        raise ValueError("child context must be derived from ctx with ctx.child()")
    body["child_task_id"] = child.task_id
    return _build(DelegationEvent, EventType.DELEGATION, source, ctx, body)


def approval(
    source: Source, ctx: CustodyContext, **fields: Unpack[ApprovalFields]
) -> ApprovalEvent:
    """A human approved a task or a break-glass."""
    return _build(ApprovalEvent, EventType.APPROVAL, source, ctx, fields)


def break_glass(
    source: Source, ctx: CustodyContext, **fields: Unpack[BreakGlassFields]
) -> BreakGlassEvent:
    """Emergency access outside standing policy, and why standing access was not used."""
    return _build(BreakGlassEvent, EventType.BREAK_GLASS, source, ctx, fields)


def credential_revoked(
    source: Source, ctx: CustodyContext, **fields: Unpack[CredentialRevokedFields]
) -> CredentialRevokedEvent:
    """A credential was revoked."""
    return _build(CredentialRevokedEvent, EventType.CREDENTIAL_REVOKED, source, ctx, fields)


def credential_renewed(
    source: Source, ctx: CustodyContext, **fields: Unpack[CredentialRenewedFields]
) -> CredentialRenewedEvent:
    """A credential was renewed: its expiry moved to ``expires_at``."""
    return _build(CredentialRenewedEvent, EventType.CREDENTIAL_RENEWED, source, ctx, fields)


def task_completed(
    source: Source, ctx: CustodyContext, **fields: Unpack[TaskCompletedFields]
) -> TaskCompletedEvent:
    """A task ended with an outcome."""
    return _build(TaskCompletedEvent, EventType.TASK_COMPLETED, source, ctx, fields)
