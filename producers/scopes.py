"""Scopes: a task, a break-glass elevation and a rotating credential as context managers,
so that completing a task and revoking its credentials is the default, not a discipline.

``with agent.task(purpose, scopes, broker=broker) as task:`` (``async with`` for the
asyncio recorders of :mod:`producers.aio`):

- at entry, records TASK_DECLARED (a new root task unless a context is given);
- inside, ``task.ctx`` is the task's context; ``task.delegate``, ``task.access``,
  ``task.issue`` and ``task.revoke`` record under it, and the scope remembers every
  credential it issued and has not revoked;
- at exit, revokes each of those (``TASK_ENDED``), then records TASK_COMPLETED: SUCCEEDED
  (or what ``task.set_outcome`` said), FAILED when an exception left the block, CANCELLED
  when it was asyncio's cancellation. The completion's ``detail`` names the exception's
  type, never its message, which may hold a secret value.

Revoking comes before completing, as a broker does when a task ends: no reader ever sees
a completed task whose credentials are still live. Every exit step is tried even when one
fails; the exception from the block is never masked: a failed exit step is then logged,
and raised only when the block itself succeeded.

:class:`Elevation` (``agent.break_glass(...)`` or ``task.break_glass(...)``) records
BREAK_GLASS at entry and revokes the credentials issued under it at exit.
:class:`Rotation` (``broker.rotation(...)`` or ``task.rotation(...)``) is a batch job's
credential: each ``rotate`` issues the next one, naming the one before as its parent, and
revokes the one before ``ROTATED``; at exit the last one is revoked ``TASK_ENDED``. Made
from a task scope, both share its memory of live credentials, so the task's exit revokes
what they could not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from producers.context import CustodyContext
from producers.producer import DeliveryReport
from schemas.models import CredentialKind, RevocationReason, TaskOutcome

if TYPE_CHECKING:
    from producers.aio import AsyncAgentRecorder, AsyncCredentialBrokerRecorder
    from producers.roles import AgentRecorder, CredentialBrokerRecorder

_log = logging.getLogger(__name__)

Live = dict[str, None]
"""Token ids issued and not revoked yet, in issue order (a dict keeps the order)."""


class ScopeError(RuntimeError):
    """A scope was used in a way it cannot honour (no broker to issue with)."""


def exception_name(kind: type[BaseException]) -> str:
    """``ValueError`` for a builtin, ``package.module.Error`` for any other type."""
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def completion(
    error: BaseException | None, outcome: TaskOutcome, detail: str | None
) -> tuple[TaskOutcome, str | None]:
    """The outcome and detail a task scope records at exit."""
    if error is None:
        return outcome, detail
    if isinstance(error, asyncio.CancelledError):
        return TaskOutcome.CANCELLED, exception_name(type(error))
    return TaskOutcome.FAILED, exception_name(type(error))


def end_of_scope(what: str, errors: list[Exception], error: BaseException | None) -> None:
    """Raise the first failed exit step (with the others as notes) when the block itself
    succeeded; when it raised, log them and let its exception go on."""
    if not errors:
        return
    if error is None:
        first = errors[0]
        for other in errors[1:]:
            first.add_note(f"also failed at the end of {what}: {other!r}")
        raise first
    for other in errors:
        _log.error("end of %s (left by %s): %r", what, exception_name(type(error)), other)


def _issue_fields(
    token_id: str,
    token_subject: str,
    credential_kind: CredentialKind | str,
    audience: str,
    scopes: Sequence[str],
    expires_at: datetime,
    decision_id: str,
    issued_at: datetime | None,
    parent_token_id: str | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "token_id": token_id,
        "token_subject": token_subject,
        "credential_kind": credential_kind,
        "audience": audience,
        "scopes": scopes,
        "issued_at": issued_at or datetime.now(UTC),
        "expires_at": expires_at,
        "decision_id": decision_id,
        "parent_token_id": parent_token_id,
        **extra,
    }


def _broker_of(broker: Any) -> Any:
    if broker is None:
        raise ScopeError("this scope was opened without a credential broker (broker=...)")
    return broker


# ---- blocking scopes ------------------------------------------------------------------


class _Credentials:
    """Issues and revokes through one broker under one context, remembering what is live."""

    def __init__(
        self, broker: CredentialBrokerRecorder | None, ctx: CustodyContext, live: Live
    ) -> None:
        self.broker = broker
        self.ctx = ctx
        self.live = live

    def issue(self, fields: dict[str, Any]) -> DeliveryReport:
        report: DeliveryReport = _broker_of(self.broker).issued(self.ctx, **fields)
        self.live[fields["token_id"]] = None
        return report

    def revoke(
        self, token_id: str, reason: RevocationReason | str, extra: dict[str, Any]
    ) -> DeliveryReport:
        report: DeliveryReport = _broker_of(self.broker).revoked(
            self.ctx, token_id=token_id, reason=reason, **extra
        )
        self.live.pop(token_id, None)
        return report

    def end(self, token_ids: Sequence[str]) -> list[Exception]:
        """Revoke each of ``token_ids`` still live (``TASK_ENDED``); the errors met."""
        errors: list[Exception] = []
        for token_id in token_ids:
            if token_id in self.live:
                try:
                    self.revoke(token_id, RevocationReason.TASK_ENDED, {})
                except Exception as error:
                    errors.append(error)
        return errors


class TaskScope:
    """One task from declaration to completion; made by :meth:`AgentRecorder.task`."""

    def __init__(
        self,
        agent: AgentRecorder,
        broker: CredentialBrokerRecorder | None,
        ctx: CustodyContext,
        purpose: str,
        requested_scopes: Sequence[str],
        declaration: dict[str, Any],
    ) -> None:
        self.ctx = ctx
        self._agent = agent
        self._purpose = purpose
        self._requested_scopes = list(requested_scopes)
        self._declaration = declaration
        self._credentials = _Credentials(broker, ctx, {})
        self._outcome = TaskOutcome.SUCCEEDED
        self._detail: str | None = None

    def __enter__(self) -> TaskScope:
        self._agent.declare_task(
            self.ctx, self._purpose, self._requested_scopes, **self._declaration
        )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        errors = self._credentials.end(self.live_tokens)
        outcome, detail = completion(error, self._outcome, self._detail)
        try:
            self._agent.complete(self.ctx, outcome, detail=detail)
        except Exception as failed:
            errors.append(failed)
        end_of_scope(f"task {self.ctx.task_id}", errors, error)

    @property
    def live_tokens(self) -> list[str]:
        """Credentials issued through this scope and not revoked yet, oldest first."""
        return list(self._credentials.live)

    def set_outcome(self, outcome: TaskOutcome | str, detail: str | None = None) -> None:
        """What the completion records if the block ends without an exception."""
        self._outcome, self._detail = TaskOutcome(outcome), detail

    def delegate(
        self,
        delegatee: str,
        scopes: Sequence[str],
        decision_id: str,
        child_task_id: str | None = None,
        **extra: Any,
    ) -> CustodyContext:
        """Record a delegation; returns the child's context to hand to the delegatee."""
        return self._agent.delegate(
            self.ctx, delegatee, scopes, decision_id, child_task_id, **extra
        )

    def access(self, **fields: Any) -> None:
        """Record a tool access (the fields of :meth:`AgentRecorder.access`)."""
        self._agent.access(self.ctx, **fields)

    def issue(
        self,
        token_id: str,
        *,
        credential_kind: CredentialKind | str,
        audience: str,
        scopes: Sequence[str],
        expires_at: datetime,
        decision_id: str,
        token_subject: str | None = None,
        issued_at: datetime | None = None,
        parent_token_id: str | None = None,
        **extra: Any,
    ) -> DeliveryReport:
        """Record an issuance (synchronously, by the broker; for the agent's own workload
        unless ``token_subject`` says otherwise); hand the token out only if this returns.
        The scope revokes it at exit unless :meth:`revoke` did."""
        subject = token_subject or self._agent.source.actor.workload_id
        return self._credentials.issue(
            _issue_fields(
                token_id,
                subject,
                credential_kind,
                audience,
                scopes,
                expires_at,
                decision_id,
                issued_at,
                parent_token_id,
                extra,
            )
        )

    def revoke(
        self, token_id: str, reason: RevocationReason | str = RevocationReason.MANUAL, **extra: Any
    ) -> DeliveryReport:
        """Record a revocation before the task ends."""
        return self._credentials.revoke(token_id, reason, extra)

    def break_glass(
        self,
        *,
        reason: str,
        standing_access_unavailable: str,
        expires_at: datetime,
        approval_id: str | None = None,
        break_glass_id: str | None = None,
    ) -> Elevation:
        """A break-glass elevation inside this task (see :meth:`AgentRecorder.break_glass`)."""
        elevation = self._agent.break_glass(
            self.ctx,
            broker=_broker_of(self._credentials.broker),
            reason=reason,
            standing_access_unavailable=standing_access_unavailable,
            expires_at=expires_at,
            approval_id=approval_id,
            break_glass_id=break_glass_id,
        )
        elevation.share(self._credentials.live)
        return elevation

    def rotation(
        self,
        *,
        credential_kind: CredentialKind | str,
        audience: str,
        scopes: Sequence[str],
        token_subject: str | None = None,
    ) -> Rotation:
        """A rotating credential inside this task (see
        :meth:`CredentialBrokerRecorder.rotation`)."""
        broker: CredentialBrokerRecorder = _broker_of(self._credentials.broker)
        rotation = broker.rotation(
            self.ctx,
            token_subject=token_subject or self._agent.source.actor.workload_id,
            credential_kind=credential_kind,
            audience=audience,
            scopes=scopes,
        )
        rotation.share(self._credentials.live)
        return rotation


class Elevation:
    """A break-glass elevation; made by :meth:`AgentRecorder.break_glass`."""

    def __init__(
        self,
        agent: AgentRecorder,
        broker: CredentialBrokerRecorder,
        ctx: CustodyContext,
        fields: dict[str, Any],
    ) -> None:
        self.ctx = ctx
        self.break_glass_id: str = fields["break_glass_id"]
        self._agent = agent
        self._fields = fields
        self._credentials = _Credentials(broker, ctx, {})
        self._issued: list[str] = []

    def share(self, live: Live) -> None:
        """Keep live credentials in ``live`` (a task scope's), before entry."""
        self._credentials.live = live

    def __enter__(self) -> Elevation:
        self._agent.producer.publish(self._agent.break_glass_event(self.ctx, **self._fields))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        errors = self._credentials.end(self._issued)
        end_of_scope(f"break-glass {self.break_glass_id}", errors, error)

    def issue(
        self,
        token_id: str,
        *,
        credential_kind: CredentialKind | str,
        audience: str,
        scopes: Sequence[str],
        expires_at: datetime,
        decision_id: str,
        token_subject: str | None = None,
        issued_at: datetime | None = None,
        **extra: Any,
    ) -> DeliveryReport:
        """Record an issuance under the elevation (see :meth:`TaskScope.issue`)."""
        subject = token_subject or self._agent.source.actor.workload_id
        report = self._credentials.issue(
            _issue_fields(
                token_id,
                subject,
                credential_kind,
                audience,
                scopes,
                expires_at,
                decision_id,
                issued_at,
                None,
                extra,
            )
        )
        self._issued.append(token_id)
        return report

    def revoke(
        self, token_id: str, reason: RevocationReason | str = RevocationReason.MANUAL, **extra: Any
    ) -> DeliveryReport:
        """Record a revocation before the elevation ends."""
        return self._credentials.revoke(token_id, reason, extra)


class Rotation:
    """A rotating credential; made by :meth:`CredentialBrokerRecorder.rotation`."""

    def __init__(
        self,
        broker: CredentialBrokerRecorder,
        ctx: CustodyContext,
        token_subject: str,
        credential_kind: CredentialKind | str,
        audience: str,
        scopes: Sequence[str],
    ) -> None:
        self.ctx = ctx
        self.current: str | None = None
        self._template = (token_subject, credential_kind, audience, list(scopes))
        self._credentials = _Credentials(broker, ctx, {})

    def share(self, live: Live) -> None:
        """Keep live credentials in ``live`` (a task scope's), before entry."""
        self._credentials.live = live

    def __enter__(self) -> Rotation:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        current = [self.current] if self.current is not None else []
        end_of_scope(f"rotation in task {self.ctx.task_id}", self._credentials.end(current), error)

    def rotate(
        self,
        token_id: str,
        *,
        expires_at: datetime,
        decision_id: str,
        issued_at: datetime | None = None,
        **extra: Any,
    ) -> DeliveryReport:
        """Issue the next credential, then revoke the one before it ``ROTATED``."""
        subject, kind, audience, scopes = self._template
        previous = self.current
        report = self._credentials.issue(
            _issue_fields(
                token_id,
                subject,
                kind,
                audience,
                scopes,
                expires_at,
                decision_id,
                issued_at,
                previous,
                extra,
            )
        )
        self.current = token_id
        if previous is not None:
            self._credentials.revoke(previous, RevocationReason.ROTATED, {})
        return report


# ---- asyncio scopes -------------------------------------------------------------------


class _AsyncCredentials:
    """:class:`_Credentials` for the asyncio recorders."""

    def __init__(
        self, broker: AsyncCredentialBrokerRecorder | None, ctx: CustodyContext, live: Live
    ) -> None:
        self.broker = broker
        self.ctx = ctx
        self.live = live

    async def issue(self, fields: dict[str, Any]) -> DeliveryReport:
        report: DeliveryReport = await _broker_of(self.broker).issued(self.ctx, **fields)
        self.live[fields["token_id"]] = None
        return report

    async def revoke(
        self, token_id: str, reason: RevocationReason | str, extra: dict[str, Any]
    ) -> DeliveryReport:
        report: DeliveryReport = await _broker_of(self.broker).revoked(
            self.ctx, token_id=token_id, reason=reason, **extra
        )
        self.live.pop(token_id, None)
        return report

    async def end(self, token_ids: Sequence[str]) -> list[Exception]:
        errors: list[Exception] = []
        for token_id in token_ids:
            if token_id in self.live:
                try:
                    await self.revoke(token_id, RevocationReason.TASK_ENDED, {})
                except Exception as error:
                    errors.append(error)
        return errors


class AsyncTaskScope:
    """:class:`TaskScope` for ``async with``; made by :meth:`AsyncAgentRecorder.task`."""

    def __init__(
        self,
        agent: AsyncAgentRecorder,
        broker: AsyncCredentialBrokerRecorder | None,
        ctx: CustodyContext,
        purpose: str,
        requested_scopes: Sequence[str],
        declaration: dict[str, Any],
    ) -> None:
        self.ctx = ctx
        self._agent = agent
        self._purpose = purpose
        self._requested_scopes = list(requested_scopes)
        self._declaration = declaration
        self._credentials = _AsyncCredentials(broker, ctx, {})
        self._outcome = TaskOutcome.SUCCEEDED
        self._detail: str | None = None

    async def __aenter__(self) -> AsyncTaskScope:
        await self._agent.declare_task(
            self.ctx, self._purpose, self._requested_scopes, **self._declaration
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        errors = await self._credentials.end(self.live_tokens)
        outcome, detail = completion(error, self._outcome, self._detail)
        try:
            await self._agent.complete(self.ctx, outcome, detail=detail)
        except Exception as failed:
            errors.append(failed)
        end_of_scope(f"task {self.ctx.task_id}", errors, error)

    @property
    def live_tokens(self) -> list[str]:
        """Credentials issued through this scope and not revoked yet, oldest first."""
        return list(self._credentials.live)

    def set_outcome(self, outcome: TaskOutcome | str, detail: str | None = None) -> None:
        """What the completion records if the block ends without an exception."""
        self._outcome, self._detail = TaskOutcome(outcome), detail

    async def delegate(
        self,
        delegatee: str,
        scopes: Sequence[str],
        decision_id: str,
        child_task_id: str | None = None,
        **extra: Any,
    ) -> CustodyContext:
        """Record a delegation; returns the child's context to hand to the delegatee."""
        return await self._agent.delegate(
            self.ctx, delegatee, scopes, decision_id, child_task_id, **extra
        )

    async def access(self, **fields: Any) -> None:
        """Record a tool access (the fields of :meth:`AgentRecorder.access`)."""
        await self._agent.access(self.ctx, **fields)

    async def issue(
        self,
        token_id: str,
        *,
        credential_kind: CredentialKind | str,
        audience: str,
        scopes: Sequence[str],
        expires_at: datetime,
        decision_id: str,
        token_subject: str | None = None,
        issued_at: datetime | None = None,
        parent_token_id: str | None = None,
        **extra: Any,
    ) -> DeliveryReport:
        """:meth:`TaskScope.issue`, awaited."""
        subject = token_subject or self._agent.source.actor.workload_id
        return await self._credentials.issue(
            _issue_fields(
                token_id,
                subject,
                credential_kind,
                audience,
                scopes,
                expires_at,
                decision_id,
                issued_at,
                parent_token_id,
                extra,
            )
        )

    async def revoke(
        self, token_id: str, reason: RevocationReason | str = RevocationReason.MANUAL, **extra: Any
    ) -> DeliveryReport:
        """Record a revocation before the task ends."""
        return await self._credentials.revoke(token_id, reason, extra)

    def break_glass(
        self,
        *,
        reason: str,
        standing_access_unavailable: str,
        expires_at: datetime,
        approval_id: str | None = None,
        break_glass_id: str | None = None,
    ) -> AsyncElevation:
        """A break-glass elevation inside this task, for ``async with``."""
        elevation = self._agent.break_glass(
            self.ctx,
            broker=_broker_of(self._credentials.broker),
            reason=reason,
            standing_access_unavailable=standing_access_unavailable,
            expires_at=expires_at,
            approval_id=approval_id,
            break_glass_id=break_glass_id,
        )
        elevation.share(self._credentials.live)
        return elevation

    def rotation(
        self,
        *,
        credential_kind: CredentialKind | str,
        audience: str,
        scopes: Sequence[str],
        token_subject: str | None = None,
    ) -> AsyncRotation:
        """A rotating credential inside this task, for ``async with``."""
        broker: AsyncCredentialBrokerRecorder = _broker_of(self._credentials.broker)
        rotation = broker.rotation(
            self.ctx,
            token_subject=token_subject or self._agent.source.actor.workload_id,
            credential_kind=credential_kind,
            audience=audience,
            scopes=scopes,
        )
        rotation.share(self._credentials.live)
        return rotation


class AsyncElevation:
    """:class:`Elevation` for ``async with``; made by :meth:`AsyncAgentRecorder.break_glass`."""

    def __init__(
        self,
        agent: AsyncAgentRecorder,
        broker: AsyncCredentialBrokerRecorder,
        ctx: CustodyContext,
        fields: dict[str, Any],
    ) -> None:
        self.ctx = ctx
        self.break_glass_id: str = fields["break_glass_id"]
        self._agent = agent
        self._fields = fields
        self._credentials = _AsyncCredentials(broker, ctx, {})
        self._issued: list[str] = []

    def share(self, live: Live) -> None:
        """Keep live credentials in ``live`` (a task scope's), before entry."""
        self._credentials.live = live

    async def __aenter__(self) -> AsyncElevation:
        await self._agent.producer.publish(self._agent.break_glass_event(self.ctx, **self._fields))
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        errors = await self._credentials.end(self._issued)
        end_of_scope(f"break-glass {self.break_glass_id}", errors, error)

    async def issue(
        self,
        token_id: str,
        *,
        credential_kind: CredentialKind | str,
        audience: str,
        scopes: Sequence[str],
        expires_at: datetime,
        decision_id: str,
        token_subject: str | None = None,
        issued_at: datetime | None = None,
        **extra: Any,
    ) -> DeliveryReport:
        """:meth:`Elevation.issue`, awaited."""
        subject = token_subject or self._agent.source.actor.workload_id
        report = await self._credentials.issue(
            _issue_fields(
                token_id,
                subject,
                credential_kind,
                audience,
                scopes,
                expires_at,
                decision_id,
                issued_at,
                None,
                extra,
            )
        )
        self._issued.append(token_id)
        return report

    async def revoke(
        self, token_id: str, reason: RevocationReason | str = RevocationReason.MANUAL, **extra: Any
    ) -> DeliveryReport:
        """Record a revocation before the elevation ends."""
        return await self._credentials.revoke(token_id, reason, extra)


class AsyncRotation:
    """:class:`Rotation` for ``async with``; made by
    :meth:`AsyncCredentialBrokerRecorder.rotation`."""

    def __init__(
        self,
        broker: AsyncCredentialBrokerRecorder,
        ctx: CustodyContext,
        token_subject: str,
        credential_kind: CredentialKind | str,
        audience: str,
        scopes: Sequence[str],
    ) -> None:
        self.ctx = ctx
        self.current: str | None = None
        self._template = (token_subject, credential_kind, audience, list(scopes))
        self._credentials = _AsyncCredentials(broker, ctx, {})

    def share(self, live: Live) -> None:
        """Keep live credentials in ``live`` (a task scope's), before entry."""
        self._credentials.live = live

    async def __aenter__(self) -> AsyncRotation:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        current = [self.current] if self.current is not None else []
        errors = await self._credentials.end(current)
        end_of_scope(f"rotation in task {self.ctx.task_id}", errors, error)

    async def rotate(
        self,
        token_id: str,
        *,
        expires_at: datetime,
        decision_id: str,
        issued_at: datetime | None = None,
        **extra: Any,
    ) -> DeliveryReport:
        """:meth:`Rotation.rotate`, awaited."""
        subject, kind, audience, scopes = self._template
        previous = self.current
        report = await self._credentials.issue(
            _issue_fields(
                token_id,
                subject,
                kind,
                audience,
                scopes,
                expires_at,
                decision_id,
                issued_at,
                previous,
                extra,
            )
        )
        self.current = token_id
        if previous is not None:
            await self._credentials.revoke(previous, RevocationReason.ROTATED, {})
        return report
