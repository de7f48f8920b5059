"""Helpers for the three kinds of publishers: agent runtimes, policy engines and
credential brokers. Each binds a producer to a :class:`producers.events.Source` and speaks
in the publisher's own verbs.

Credential brokers publish synchronously ("evidence before access"): ``issued`` returns
only once the broker acknowledged the event and raises
:class:`producers.producer.DeliveryError` otherwise, so the caller can refuse to hand out
a token whose issuance was not recorded.

Each recorder builds its events in one place (the ``*Events`` bases), shared with the
asyncio recorders of :mod:`producers.aio`; the recorders here publish them blocking.
:meth:`AgentRecorder.task` opens a task scope (:mod:`producers.scopes`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from producers import events
from producers.context import CustodyContext
from producers.events import Source
from producers.producer import DeliveryReport, Stamp
from producers.scopes import Elevation, Rotation, TaskScope
from schemas.models import (
    AccessOutcome,
    CredentialKind,
    Decision,
    Envelope,
    RevocationReason,
    TaskOutcome,
)


class Publisher(Protocol):
    """What a recorder needs of a producer: :class:`producers.CustodyProducer` is one."""

    def publish(self, event: Envelope) -> Stamp: ...

    def publish_sync(self, event: Envelope) -> DeliveryReport: ...


# ---- events, built once for the blocking and the asyncio recorders --------------------


class AgentEvents:
    """The events of an agent runtime, from its :class:`Source`."""

    source: Source

    def declared_event(
        self, ctx: CustodyContext, purpose: str, requested_scopes: Sequence[str], **extra: Any
    ) -> Envelope:
        return events.task_declared(
            self.source, ctx, purpose=purpose, requested_scopes=requested_scopes, **extra
        )

    def delegation_event(
        self,
        ctx: CustodyContext,
        delegatee: str,
        scopes: Sequence[str],
        decision_id: str,
        child_task_id: str | None = None,
        **extra: Any,
    ) -> tuple[CustodyContext, Envelope]:
        """The child's context and the delegation that hands it over."""
        child = ctx.child(child_task_id)
        event = events.delegation(
            self.source,
            ctx,
            child=child,
            delegator=self.source.actor.workload_id,
            delegatee=delegatee,
            scopes=scopes,
            decision_id=decision_id,
            **extra,
        )
        return child, event

    def access_event(self, ctx: CustodyContext, **fields: Any) -> Envelope:
        return events.access(self.source, ctx, **fields)

    def completed_event(
        self, ctx: CustodyContext, outcome: TaskOutcome | str, **extra: Any
    ) -> Envelope:
        return events.task_completed(self.source, ctx, outcome=outcome, **extra)

    def break_glass_event(self, ctx: CustodyContext, **fields: Any) -> Envelope:
        return events.break_glass(self.source, ctx, **fields)


class PolicyEngineEvents:
    """The events of a policy engine, from its :class:`Source`."""

    source: Source

    def decision_event(
        self, ctx: CustodyContext, decision_id: str | None, **fields: Any
    ) -> tuple[str, Envelope]:
        """The decision's id (a new one unless given) and its event."""
        decision_id = decision_id or str(uuid.uuid4())
        event = events.authz_decision(
            self.source, ctx, decision_id=decision_id, policy_engine=self.source.producer, **fields
        )
        return decision_id, event


class CredentialBrokerEvents:
    """The events of a credential broker, from its :class:`Source`."""

    source: Source

    def issued_event(
        self, ctx: CustodyContext, issued_at: datetime | None = None, **fields: Any
    ) -> Envelope:
        return events.credential_issued(
            self.source, ctx, issued_at=issued_at or datetime.now(UTC), **fields
        )

    def revoked_event(
        self, ctx: CustodyContext, token_id: str, reason: RevocationReason | str, **extra: Any
    ) -> Envelope:
        return events.credential_revoked(
            self.source,
            ctx,
            token_id=token_id,
            reason=reason,
            revoked_by=self.source.actor.workload_id,
            **extra,
        )


# ---- blocking recorders ---------------------------------------------------------------


class AgentRecorder(AgentEvents):
    """What an agent runtime records: tasks, delegations, tool accesses, completion."""

    def __init__(self, producer: Publisher, source: Source) -> None:
        self.producer = producer
        self.source = source

    def task(
        self,
        purpose: str,
        requested_scopes: Sequence[str],
        *,
        ctx: CustodyContext | None = None,
        broker: CredentialBrokerRecorder | None = None,
        **extra: Any,
    ) -> TaskScope:
        """A task scope: ``with recorder.task(purpose, scopes) as task:`` declares the task
        (a new root unless ``ctx`` is given, e.g. a delegated task's context), completes it
        SUCCEEDED, or FAILED with the exception's type, and revokes every credential issued
        through ``task.issue`` (by ``broker``) and not revoked yet. ``extra`` goes to the
        declaration (``deadline``, ``attributes``)."""
        return TaskScope(
            self, broker, ctx or CustodyContext.new_root(), purpose, requested_scopes, extra
        )

    def break_glass(
        self,
        ctx: CustodyContext,
        *,
        broker: CredentialBrokerRecorder,
        reason: str,
        standing_access_unavailable: str,
        expires_at: datetime,
        approval_id: str | None = None,
        break_glass_id: str | None = None,
    ) -> Elevation:
        """A break-glass elevation: ``with recorder.break_glass(ctx, ...) as elevation:``
        records the break-glass and revokes, at exit, every credential issued through
        ``elevation.issue`` and not revoked yet."""
        return Elevation(
            self,
            broker,
            ctx,
            dict(
                reason=reason,
                standing_access_unavailable=standing_access_unavailable,
                expires_at=expires_at,
                approval_id=approval_id,
                break_glass_id=break_glass_id or str(uuid.uuid4()),
            ),
        )

    def declare_task(
        self, ctx: CustodyContext, purpose: str, requested_scopes: Sequence[str], **extra: Any
    ) -> None:
        self.producer.publish(self.declared_event(ctx, purpose, requested_scopes, **extra))

    def delegate(
        self,
        ctx: CustodyContext,
        delegatee: str,
        scopes: Sequence[str],
        decision_id: str,
        child_task_id: str | None = None,
        **extra: Any,
    ) -> CustodyContext:
        """Record a delegation and return the child's context to hand to the delegatee."""
        child, event = self.delegation_event(
            ctx, delegatee, scopes, decision_id, child_task_id, **extra
        )
        self.producer.publish(event)
        return child

    def access(
        self,
        ctx: CustodyContext,
        *,
        token_id: str,
        tool: str,
        resource: str,
        action: str,
        data_scope: Sequence[str],
        outcome: AccessOutcome | str,
        decision_id: str | None = None,
        **extra: Any,
    ) -> None:
        self.producer.publish(
            self.access_event(
                ctx,
                token_id=token_id,
                tool=tool,
                resource=resource,
                action=action,
                data_scope=data_scope,
                outcome=outcome,
                decision_id=decision_id,
                **extra,
            )
        )

    def complete(self, ctx: CustodyContext, outcome: TaskOutcome | str, **extra: Any) -> None:
        self.producer.publish(self.completed_event(ctx, outcome, **extra))


class PolicyEngineRecorder(PolicyEngineEvents):
    """What a policy engine records: each decision with its policy and reasons."""

    def __init__(self, producer: Publisher, source: Source) -> None:
        self.producer = producer
        self.source = source

    def decision(
        self,
        ctx: CustodyContext,
        *,
        policy_id: str,
        policy_version: str,
        decision: Decision | str,
        resource: str,
        action: str,
        data_scope: Sequence[str],
        reasons: Sequence[str],
        context: Mapping[str, str] | None = None,
        decision_id: str | None = None,
        **extra: Any,
    ) -> str:
        """Record a decision; returns its ``decision_id`` for the credential and access."""
        decision_id, event = self.decision_event(
            ctx,
            decision_id,
            policy_id=policy_id,
            policy_version=policy_version,
            decision=decision,
            resource=resource,
            action=action,
            data_scope=data_scope,
            reasons=reasons,
            context=context,
            **extra,
        )
        self.producer.publish(event)
        return decision_id


class CredentialBrokerRecorder(CredentialBrokerEvents):
    """What a credential broker records, synchronously: issuance and revocation."""

    def __init__(self, producer: Publisher, source: Source) -> None:
        self.producer = producer
        self.source = source

    def rotation(
        self,
        ctx: CustodyContext,
        *,
        token_subject: str,
        credential_kind: CredentialKind | str,
        audience: str,
        scopes: Sequence[str],
    ) -> Rotation:
        """A batch job's rotating credential: ``with broker.rotation(ctx, ...) as tokens:``
        then ``tokens.rotate(token_id, ...)`` issues each new one (naming the one before
        as its parent) and revokes the one before ``ROTATED``; at exit the last one is
        revoked ``TASK_ENDED``."""
        return Rotation(self, ctx, token_subject, credential_kind, audience, scopes)

    def issued(
        self,
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
        **extra: Any,
    ) -> DeliveryReport:
        """Record an issuance; hand the token out only if this returns."""
        return self.producer.publish_sync(
            self.issued_event(
                ctx,
                issued_at,
                token_id=token_id,
                token_subject=token_subject,
                credential_kind=credential_kind,
                audience=audience,
                scopes=scopes,
                expires_at=expires_at,
                decision_id=decision_id,
                parent_token_id=parent_token_id,
                **extra,
            )
        )

    def revoked(
        self,
        ctx: CustodyContext,
        *,
        token_id: str,
        reason: RevocationReason | str,
        **extra: Any,
    ) -> DeliveryReport:
        return self.producer.publish_sync(self.revoked_event(ctx, token_id, reason, **extra))
