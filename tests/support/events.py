"""Event builders for tests: one per event type, with the defaults of a custody tree in
which a coder reads ``db://x`` through ``sql`` with a token the vault issued on an ALLOW
decision named ``dec-<token>``. A test names only what its case is about.

Times are absolute; :func:`at` gives ``T0`` plus some seconds. Each call makes a new
event id, as the SDK does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Literal

from producers import events
from producers.context import CustodyContext
from producers.events import Source
from schemas.models import (
    AccessEvent,
    ApprovalEvent,
    AuthzDecisionEvent,
    BreakGlassEvent,
    CredentialIssuedEvent,
    CredentialRenewedEvent,
    CredentialRevokedEvent,
    DelegationEvent,
    TaskCompletedEvent,
    TaskDeclaredEvent,
)

T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)

ALICE = "alice@acme"
PLANNER = Source.of("acme", "runtime", "spiffe://acme/planner", "AGENT", "planner-1", ALICE)
RESEARCHER = Source.of("acme", "runtime", "spiffe://acme/researcher", "AGENT", "res-1", ALICE)
CODER = Source.of("acme", "runtime", "spiffe://acme/coder", "AGENT", "coder-1", ALICE)
POLICY = Source.of("acme", "opa", "spiffe://acme/opa", "POLICY_ENGINE", "opa-0")
VAULT = Source.of("acme", "vault", "spiffe://acme/vault", "BROKER", "vault-0")
BOB = Source.of("acme", "approvals", "user:bob", "HUMAN", "portal-1")

DB_READ = ("db:read",)
CREDENTIAL_LIFETIME = timedelta(minutes=15)


class _ByToken(Enum):
    """The decision an access names by default: ``dec-<token>``, as a tree grants it."""

    DECISION = "dec-<token>"


BY_TOKEN = _ByToken.DECISION


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def declare(
    ctx: CustodyContext,
    when: datetime,
    *,
    source: Source = PLANNER,
    purpose: str = "p",
    scopes: Sequence[str] = DB_READ,
) -> TaskDeclaredEvent:
    """The task of ``ctx`` declared, asking for ``scopes``."""
    return events.task_declared(
        source, ctx, purpose=purpose, requested_scopes=scopes, event_time=when
    )


def allow(
    ctx: CustodyContext,
    decision_id: str,
    when: datetime,
    *,
    source: Source = POLICY,
    scopes: Sequence[str] = DB_READ,
    resource: str = "db://x",
    policy_version: str = "1",
    reasons: Sequence[str] = ("ok",),
    context: Mapping[str, str] | None = None,
) -> AuthzDecisionEvent:
    """An OPA ALLOW of reading ``resource`` with ``scopes``, decided in ``ctx``'s task."""
    return events.authz_decision(
        source,
        ctx,
        decision_id=decision_id,
        policy_engine="opa",
        policy_id="p",
        policy_version=policy_version,
        decision="ALLOW",
        resource=resource,
        action="read",
        data_scope=scopes,
        reasons=reasons,
        context=context,
        event_time=when,
    )


def issue(
    ctx: CustodyContext,
    token: str,
    when: datetime,
    *,
    subject: str = CODER.actor.workload_id,
    source: Source = VAULT,
    scopes: Sequence[str] = DB_READ,
    audience: str = "db",
    expires: datetime | None = None,
    decision_id: str | None = None,
) -> CredentialIssuedEvent:
    """A JWT ``token`` issued to ``subject`` at ``when``, for 15 minutes unless ``expires``
    says otherwise, on the decision ``dec-<token>`` unless ``decision_id`` names another."""
    return events.credential_issued(
        source,
        ctx,
        token_id=token,
        token_subject=subject,
        credential_kind="JWT",
        audience=audience,
        scopes=scopes,
        issued_at=when,
        expires_at=expires or when + CREDENTIAL_LIFETIME,
        decision_id=decision_id or f"dec-{token}",
        event_time=when,
    )


def use(
    ctx: CustodyContext,
    token: str,
    when: datetime,
    *,
    source: Source = CODER,
    scopes: Sequence[str] = DB_READ,
    resource: str = "db://x",
    tool: str = "sql",
    outcome: str = "SUCCESS",
    decision_id: str | Literal[_ByToken.DECISION] | None = BY_TOKEN,
    detail: str | None = None,
) -> AccessEvent:
    """``source`` reading ``resource`` with ``token``; the access names the decision
    ``dec-<token>`` unless ``decision_id`` is given (None: it names none)."""
    return events.access(
        source,
        ctx,
        token_id=token,
        tool=tool,
        resource=resource,
        action="read",
        data_scope=scopes,
        outcome=outcome,
        decision_id=f"dec-{token}" if decision_id is BY_TOKEN else decision_id,
        detail=detail,
        event_time=when,
    )


def revoke(
    ctx: CustodyContext,
    token: str,
    when: datetime,
    *,
    source: Source = VAULT,
    reason: str = "TASK_ENDED",
) -> CredentialRevokedEvent:
    """``token`` revoked by ``source`` (the vault by default)."""
    return events.credential_revoked(
        source,
        ctx,
        token_id=token,
        reason=reason,
        revoked_by=source.actor.workload_id,
        event_time=when,
    )


def renew(
    ctx: CustodyContext,
    token: str,
    when: datetime,
    *,
    expires: datetime | None = None,
    source: Source = VAULT,
) -> CredentialRenewedEvent:
    """``token`` renewed by ``source`` (the vault by default) at ``when``, until ``expires``
    (15 minutes after ``when`` unless given)."""
    return events.credential_renewed(
        source,
        ctx,
        token_id=token,
        expires_at=expires or when + CREDENTIAL_LIFETIME,
        renewed_by=source.actor.workload_id,
        event_time=when,
    )


def delegate(
    ctx: CustodyContext,
    child: CustodyContext,
    when: datetime,
    *,
    delegatee: str,
    decision_id: str,
    source: Source = PLANNER,
    delegator: str | None = None,
    scopes: Sequence[str] = DB_READ,
) -> DelegationEvent:
    """The task of ``ctx`` delegating ``child`` to ``delegatee``; the delegator is the
    emitting workload unless ``delegator`` names another."""
    return events.delegation(
        source,
        ctx,
        child=child,
        delegator=delegator or source.actor.workload_id,
        delegatee=delegatee,
        scopes=scopes,
        decision_id=decision_id,
        event_time=when,
    )


def approve(
    ctx: CustodyContext,
    approval_id: str,
    approves: str,
    when: datetime,
    *,
    source: Source = BOB,
    approver: str = "bob",
    scopes: Sequence[str] = DB_READ,
    reason: str = "incident",
    expires: datetime | None = None,
) -> ApprovalEvent:
    """``approver`` (through ``source``, a human by default) approving a task or a
    break-glass named ``approves``."""
    return events.approval(
        source,
        ctx,
        approval_id=approval_id,
        approver=approver,
        approves=approves,
        scopes=scopes,
        reason=reason,
        expires_at=expires,
        event_time=when,
    )


def break_glass(
    ctx: CustodyContext,
    break_glass_id: str,
    when: datetime,
    *,
    expires: datetime,
    source: Source = CODER,
    reason: str = "incident",
    standing: str = "on-call role missing",
    approval_id: str | None = None,
) -> BreakGlassEvent:
    """Emergency access until ``expires``, approved by ``approval_id`` if given."""
    return events.break_glass(
        source,
        ctx,
        break_glass_id=break_glass_id,
        reason=reason,
        standing_access_unavailable=standing,
        approval_id=approval_id,
        expires_at=expires,
        event_time=when,
    )


def complete(
    ctx: CustodyContext,
    when: datetime,
    *,
    source: Source = PLANNER,
    outcome: str = "SUCCEEDED",
    detail: str | None = None,
) -> TaskCompletedEvent:
    """The task of ``ctx`` ended with ``outcome``."""
    return events.task_completed(source, ctx, outcome=outcome, detail=detail, event_time=when)
