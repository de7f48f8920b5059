"""Helpers for the three kinds of publishers: agent runtimes, policy engines and
credential brokers. Each binds a producer to a :class:`producers.events.Source` and speaks
in the publisher's own verbs.

Credential brokers publish synchronously ("evidence before access"): ``issued`` returns
only once the broker acknowledged the event and raises
:class:`producers.producer.DeliveryError` otherwise, so the caller can refuse to hand out
a token whose issuance was not recorded.

Each recorder builds its events and opens its scopes in one place (the ``*Events`` bases),
shared with the asyncio recorders of :mod:`producers.aio`; the recorders here publish the
events blocking. :meth:`AgentRecorder.task` opens a task scope (:mod:`producers.scopes`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar, Unpack

from producers import events
from producers.context import CustodyContext
from producers.events import (
    AccessFields,
    CredentialGrant,
    CredentialIssuedFields,
    DecisionFields,
    Delegated,
    ElevationFields,
    EnvelopeFields,
    Renewal,
    Revocation,
    Source,
    TaskCompletion,
    TaskDeclaration,
)
from producers.producer import DeliveryReport, Stamp
from producers.scopes import (
    Elevation,
    ElevationT,
    Rotation,
    RotationT,
    TaskScope,
    TaskT,
)
from schemas.models import Envelope, TaskOutcome


class Publisher(Protocol):
    """What a recorder needs of a producer: :class:`producers.CustodyProducer` is one."""

    def publish(self, event: Envelope) -> Stamp: ...

    def publish_sync(self, event: Envelope) -> DeliveryReport: ...


PublisherT = TypeVar("PublisherT")
BrokerT = TypeVar("BrokerT")


# ---- events and scopes, built once for the blocking and the asyncio recorders ---------


class _Recorder(Generic[PublisherT]):
    """A producer and the :class:`Source` of what it records."""

    def __init__(self, producer: PublisherT, source: Source) -> None:
        self.producer = producer
        self.source = source


class AgentEvents(_Recorder[PublisherT], Generic[PublisherT, BrokerT, TaskT, ElevationT]):
    """The events of an agent runtime, from its :class:`Source`, and the scopes it opens."""

    _task_scope: type[TaskT]
    _elevation: type[ElevationT]

    def task(
        self,
        purpose: str,
        requested_scopes: Sequence[str],
        *,
        ctx: CustodyContext | None = None,
        broker: BrokerT | None = None,
        **declaration: Unpack[TaskDeclaration],
    ) -> TaskT:
        """A task scope: ``with recorder.task(purpose, scopes) as task:`` declares the task
        (a new root unless ``ctx`` is given, e.g. a delegated task's context), completes it
        SUCCEEDED, or FAILED with the exception's type, and revokes every credential issued
        through ``task.issue`` (by ``broker``) and not revoked yet. ``declaration`` goes to
        the declaration (``deadline``, ``attributes``); ``async with`` for the asyncio
        recorder."""
        root = ctx or CustodyContext.new_root()
        return self._task_scope(self, broker, root, purpose, requested_scopes, declaration)

    def break_glass(
        self,
        ctx: CustodyContext,
        *,
        broker: BrokerT,
        break_glass_id: str | None = None,
        **fields: Unpack[ElevationFields],
    ) -> ElevationT:
        """A break-glass elevation: ``with recorder.break_glass(ctx, ...) as elevation:``
        records the break-glass and revokes, at exit, every credential issued through
        ``elevation.issue`` and not revoked yet (``async with`` for the asyncio recorder)."""
        return self._elevation(self, broker, ctx, break_glass_id, fields)

    def declared_event(
        self, ctx: CustodyContext, purpose: str, scopes: Sequence[str], extra: TaskDeclaration
    ) -> Envelope:
        """The declaration of the task of ``ctx``."""
        return events.task_declared(
            self.source, ctx, purpose=purpose, requested_scopes=scopes, **extra
        )

    def delegation_event(
        self, ctx: CustodyContext, child: CustodyContext, fields: Delegated
    ) -> Envelope:
        """The delegation that hands ``child`` (made by ``ctx.child()``) over."""
        delegator = self.source.actor.workload_id
        return events.delegation(self.source, ctx, child=child, delegator=delegator, **fields)

    def access_event(self, ctx: CustodyContext, fields: AccessFields) -> Envelope:
        """A tool access in the task of ``ctx``."""
        return events.access(self.source, ctx, **fields)

    def completed_event(
        self, ctx: CustodyContext, outcome: TaskOutcome | str, extra: TaskCompletion
    ) -> Envelope:
        """The completion of the task of ``ctx``."""
        return events.task_completed(self.source, ctx, outcome=outcome, **extra)

    def break_glass_event(
        self, ctx: CustodyContext, break_glass_id: str, fields: ElevationFields
    ) -> Envelope:
        """A break-glass in the task of ``ctx``."""
        return events.break_glass(self.source, ctx, break_glass_id=break_glass_id, **fields)


class PolicyEngineEvents(_Recorder[PublisherT]):
    """The events of a policy engine, from its :class:`Source`."""

    def decision_event(
        self, ctx: CustodyContext, decision_id: str | None, fields: DecisionFields
    ) -> tuple[str, Envelope]:
        """The decision's id (a new one unless given) and its event."""
        decision_id = decision_id or str(uuid.uuid4())
        engine = self.source.producer
        event = events.authz_decision(
            self.source, ctx, decision_id=decision_id, policy_engine=engine, **fields
        )
        return decision_id, event


class CredentialBrokerEvents(_Recorder[PublisherT], Generic[PublisherT, RotationT]):
    """The events of a credential broker, from its :class:`Source`, and its rotations."""

    _rotation: type[RotationT]

    def rotation(
        self, ctx: CustodyContext, *, token_subject: str, **grant: Unpack[CredentialGrant]
    ) -> RotationT:
        """A batch job's rotating credential: ``with broker.rotation(ctx, ...) as tokens:``
        then ``tokens.rotate(token_id, ...)`` issues each new one (naming the one before
        as its parent) and revokes the one before ``ROTATED``; at exit the last one is
        revoked ``TASK_ENDED`` (``async with`` for the asyncio recorder)."""
        return self._rotation(self, ctx, token_subject, grant)

    def issued_event(self, ctx: CustodyContext, fields: CredentialIssuedFields) -> Envelope:
        """An issuance by this broker."""
        return events.credential_issued(self.source, ctx, **fields)

    def revoked_event(self, ctx: CustodyContext, fields: Revocation) -> Envelope:
        """A revocation by this broker (its workload revokes)."""
        revoked_by = self.source.actor.workload_id
        return events.credential_revoked(self.source, ctx, revoked_by=revoked_by, **fields)

    def renewed_event(self, ctx: CustodyContext, fields: Renewal) -> Envelope:
        """A renewal by this broker (its workload renews)."""
        renewed_by = self.source.actor.workload_id
        return events.credential_renewed(self.source, ctx, renewed_by=renewed_by, **fields)


# ---- blocking recorders ---------------------------------------------------------------


class AgentRecorder(AgentEvents[Publisher, "CredentialBrokerRecorder", TaskScope, Elevation]):
    """What an agent runtime records: tasks, delegations, tool accesses, completion."""

    _task_scope = TaskScope
    _elevation = Elevation

    def declare_task(
        self,
        ctx: CustodyContext,
        purpose: str,
        requested_scopes: Sequence[str],
        **extra: Unpack[TaskDeclaration],
    ) -> None:
        """Record a task's declaration (a task scope does it at entry)."""
        self.producer.publish(self.declared_event(ctx, purpose, requested_scopes, extra))

    def delegate(
        self,
        ctx: CustodyContext,
        delegatee: str,
        scopes: Sequence[str],
        decision_id: str,
        child_task_id: str | None = None,
        **extra: Unpack[EnvelopeFields],
    ) -> CustodyContext:
        """Record a delegation and return the child's context to hand to the delegatee."""
        child = ctx.child(child_task_id)
        delegated = Delegated(delegatee=delegatee, scopes=scopes, decision_id=decision_id)
        self.producer.publish(self.delegation_event(ctx, child, {**delegated, **extra}))
        return child

    def access(self, ctx: CustodyContext, **fields: Unpack[AccessFields]) -> None:
        """Record a tool access."""
        self.producer.publish(self.access_event(ctx, fields))

    def complete(
        self, ctx: CustodyContext, outcome: TaskOutcome | str, **extra: Unpack[TaskCompletion]
    ) -> None:
        """Record a task's completion (a task scope does it at exit)."""
        self.producer.publish(self.completed_event(ctx, outcome, extra))


class PolicyEngineRecorder(PolicyEngineEvents[Publisher]):
    """What a policy engine records: each decision with its policy and reasons."""

    def decision(
        self,
        ctx: CustodyContext,
        *,
        decision_id: str | None = None,
        **fields: Unpack[DecisionFields],
    ) -> str:
        """Record a decision; returns its ``decision_id`` for the credential and access."""
        decision_id, event = self.decision_event(ctx, decision_id, fields)
        self.producer.publish(event)
        return decision_id


class CredentialBrokerRecorder(CredentialBrokerEvents[Publisher, Rotation]):
    """What a credential broker records, synchronously: issuance, renewal and revocation."""

    _rotation = Rotation

    def issued(
        self, ctx: CustodyContext, **fields: Unpack[CredentialIssuedFields]
    ) -> DeliveryReport:
        """Record an issuance; hand the token out only if this returns."""
        return self.producer.publish_sync(self.issued_event(ctx, fields))

    def revoked(self, ctx: CustodyContext, **fields: Unpack[Revocation]) -> DeliveryReport:
        """Record a revocation, acknowledged by the broker when this returns."""
        return self.producer.publish_sync(self.revoked_event(ctx, fields))

    def renewed(self, ctx: CustodyContext, **fields: Unpack[Renewal]) -> DeliveryReport:
        """Record a renewal (the token's new ``expires_at``); extend the token only if this
        returns."""
        return self.producer.publish_sync(self.renewed_event(ctx, fields))
