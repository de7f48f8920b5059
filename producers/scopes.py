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

What a scope remembers and decides (what it issued, what its exit revokes, the outcome it
records) is written once, in the bases here; the blocking and the asyncio scopes add only
the calls to their recorders, made or awaited.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, NotRequired, Protocol, TypeVar, Unpack

from producers.context import CustodyContext
from producers.events import (
    AccessFields,
    CredentialGrant,
    CredentialIssuedFields,
    ElevationFields,
    EnvelopeFields,
    Source,
    TaskDeclaration,
)
from producers.producer import DeliveryReport
from schemas.models import RevocationReason, TaskOutcome

if TYPE_CHECKING:
    # Named as strings in the scopes' type arguments (the recorders import this module),
    # where ruff does not look for them.
    from producers.aio import AsyncAgentRecorder, AsyncCredentialBrokerRecorder  # noqa: F401
    from producers.roles import AgentRecorder, CredentialBrokerRecorder  # noqa: F401

_log = logging.getLogger(__name__)

Live = dict[str, None]
"""Token ids issued and not revoked yet, in issue order (a dict keeps the order)."""


class ScopeError(RuntimeError):
    """A scope was used in a way it cannot honour (no broker to issue with)."""


class CredentialTerms(EnvelopeFields):
    """What each credential of a rotation has of its own, beside its token id; it is issued
    now unless ``issued_at`` says otherwise."""

    expires_at: datetime
    decision_id: str
    issued_at: NotRequired[datetime | None]


class IssueRequest(CredentialGrant, CredentialTerms):
    """What a scope's ``issue`` takes besides the token id: the credential is the agent's
    own workload's unless ``token_subject`` names another, and renews ``parent_token_id``
    if given."""

    token_subject: NotRequired[str | None]
    parent_token_id: NotRequired[str | None]


class RotationRequest(CredentialGrant):
    """What every credential of a task's rotation grants; its subject is the agent's own
    workload unless ``token_subject`` names another."""

    token_subject: NotRequired[str | None]


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


def _attempts(steps: Iterable[Callable[[], object]]) -> list[Exception]:
    """Take every step, even after one failed; the errors met."""
    errors: list[Exception] = []
    for step in steps:
        try:
            step()
        except Exception as failed:
            errors.append(failed)
    return errors


async def _awaited_attempts(steps: Iterable[Callable[[], Awaitable[object]]]) -> list[Exception]:
    """:func:`_attempts` with every step awaited."""
    errors: list[Exception] = []
    for step in steps:
        try:
            await step()
        except Exception as failed:
            errors.append(failed)
    return errors


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


# ---- what every scope keeps, blocking or asyncio ----------------------------------------


class _Agent(Protocol):
    """What a scope reads of its agent recorder."""

    @property
    def source(self) -> Source: ...


AgentT = TypeVar("AgentT", bound=_Agent)
BrokerT = TypeVar("BrokerT")


class _Scope(Generic[BrokerT]):
    """A scope's context, the broker it issues with, whose credentials it issues unless
    told otherwise, and the credentials issued through it and not revoked yet (a task's,
    when shared)."""

    def __init__(self, broker: BrokerT | None, ctx: CustodyContext, subject: str) -> None:
        self.ctx = ctx
        self._broker_or_none = broker
        self._subject = subject
        self._live: Live = {}

    def share(self, live: Live) -> None:
        """Keep live credentials in ``live`` (a task scope's), before entry."""
        self._live = live

    @property
    def _broker(self) -> BrokerT:
        if self._broker_or_none is None:
            raise ScopeError("this scope was opened without a credential broker (broker=...)")
        return self._broker_or_none

    def _issuance(self, token_id: str, request: IssueRequest) -> CredentialIssuedFields:
        """The CREDENTIAL_ISSUED fields of a request, issued now unless it says when."""
        return {
            **request,
            "token_id": token_id,
            "token_subject": request.get("token_subject") or self._subject,
            "issued_at": request.get("issued_at") or datetime.now(UTC),
            "parent_token_id": request.get("parent_token_id"),
        }

    def _left(self) -> list[str]:
        """The credentials the exit ends: every live one."""
        return list(self._live)

    def _still_live(self) -> list[str]:
        """What the exit revokes: those of the credentials it ends that are still live."""
        return [token_id for token_id in self._left() if token_id in self._live]

    def _name(self) -> str:
        return f"task {self.ctx.task_id}"


class _Elevation(_Scope[BrokerT], Generic[AgentT, BrokerT]):
    """A break-glass elevation's bookkeeping: what it records at entry and what it issued."""

    def __init__(
        self,
        agent: AgentT,
        broker: BrokerT,
        ctx: CustodyContext,
        break_glass_id: str | None,
        fields: ElevationFields,
    ) -> None:
        super().__init__(broker, ctx, agent.source.actor.workload_id)
        self.break_glass_id = break_glass_id or str(uuid.uuid4())
        self._agent = agent
        self._fields = fields
        self._issued: list[str] = []

    def _issuance(self, token_id: str, request: IssueRequest) -> CredentialIssuedFields:
        # Remembered before the issuance is tried: one that fails never becomes live, and
        # the exit revokes only live credentials.
        self._issued.append(token_id)
        return super()._issuance(token_id, request)

    def _left(self) -> list[str]:
        return self._issued

    def _name(self) -> str:
        return f"break-glass {self.break_glass_id}"


class _Rotation(_Scope[BrokerT]):
    """A rotating credential's bookkeeping: its grant, and the credential now current."""

    def __init__(
        self, broker: BrokerT, ctx: CustodyContext, token_subject: str, grant: CredentialGrant
    ) -> None:
        super().__init__(broker, ctx, token_subject)
        self.current: str | None = None
        self._grant = CredentialGrant(
            credential_kind=grant["credential_kind"],
            audience=grant["audience"],
            scopes=list(grant["scopes"]),
        )

    def _next(self, token_id: str, terms: CredentialTerms) -> CredentialIssuedFields:
        """The next credential, renewing the current one."""
        request: IssueRequest = {
            **self._grant,
            **terms,
            "token_subject": self._subject,
            "parent_token_id": self.current,
        }
        return self._issuance(token_id, request)

    def _left(self) -> list[str]:
        return [self.current] if self.current is not None else []

    def _name(self) -> str:
        return f"rotation in task {self.ctx.task_id}"


ElevationT = TypeVar("ElevationT", bound=_Elevation[Any, Any])
"""An elevation class, blocking or asyncio."""
RotationT = TypeVar("RotationT", bound=_Rotation[Any])
"""A rotation class, blocking or asyncio."""


class _Task(_Scope[BrokerT], Generic[AgentT, BrokerT, ElevationT, RotationT]):
    """A task scope's bookkeeping: what it declares, the outcome it records, and the
    elevations and rotations opened inside it, which share its live credentials."""

    _elevation: type[ElevationT]
    _rotation: type[RotationT]

    def __init__(
        self,
        agent: AgentT,
        broker: BrokerT | None,
        ctx: CustodyContext,
        purpose: str,
        requested_scopes: Sequence[str],
        declaration: TaskDeclaration,
    ) -> None:
        super().__init__(broker, ctx, agent.source.actor.workload_id)
        self._agent = agent
        self._purpose = purpose
        self._requested_scopes = list(requested_scopes)
        self._declaration = declaration
        self._outcome = TaskOutcome.SUCCEEDED
        self._detail: str | None = None

    @property
    def live_tokens(self) -> list[str]:
        """Credentials issued through this scope and not revoked yet, oldest first."""
        return list(self._live)

    def set_outcome(self, outcome: TaskOutcome | str, detail: str | None = None) -> None:
        """What the completion records if the block ends without an exception."""
        self._outcome, self._detail = TaskOutcome(outcome), detail

    def break_glass(
        self, *, break_glass_id: str | None = None, **fields: Unpack[ElevationFields]
    ) -> ElevationT:
        """A break-glass elevation inside this task (see :meth:`AgentRecorder.break_glass`)."""
        elevation = self._elevation(self._agent, self._broker, self.ctx, break_glass_id, fields)
        elevation.share(self._live)
        return elevation

    def rotation(self, **request: Unpack[RotationRequest]) -> RotationT:
        """A rotating credential inside this task (see
        :meth:`CredentialBrokerRecorder.rotation`)."""
        subject = request.pop("token_subject", None) or self._subject
        rotation = self._rotation(self._broker, self.ctx, subject, request)
        rotation.share(self._live)
        return rotation

    def _completion(self, error: BaseException | None) -> tuple[TaskOutcome, str | None]:
        return completion(error, self._outcome, self._detail)


TaskT = TypeVar("TaskT", bound=_Task[Any, Any, Any, Any])
"""A task scope class, blocking or asyncio (what an agent recorder opens)."""


# ---- blocking scopes ------------------------------------------------------------------


class _Blocking(_Scope["CredentialBrokerRecorder"]):
    """Issues and revokes through a blocking broker; the exit revokes what is left."""

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        errors = _attempts(self._exit_steps(error))
        end_of_scope(self._name(), errors, error)

    def _exit_steps(self, error: BaseException | None) -> list[Callable[[], object]]:
        ended = RevocationReason.TASK_ENDED
        revocations = [partial(self._revoke, token, ended, {}) for token in self._still_live()]
        return [*revocations, partial(self._close, error)]

    def _close(self, error: BaseException | None) -> None:
        """The last exit step, after the revocations: a task's completion."""

    def _issue(self, fields: CredentialIssuedFields) -> DeliveryReport:
        report = self._broker.issued(self.ctx, **fields)
        self._live[fields["token_id"]] = None
        return report

    def _revoke(
        self, token_id: str, reason: RevocationReason | str, extra: EnvelopeFields
    ) -> DeliveryReport:
        report = self._broker.revoked(self.ctx, token_id=token_id, reason=reason, **extra)
        self._live.pop(token_id, None)
        return report


class _BlockingCredentials(_Blocking):
    """The issuing and revoking verbs of a task scope and an elevation."""

    def issue(self, token_id: str, **request: Unpack[IssueRequest]) -> DeliveryReport:
        """Record an issuance (synchronously, by the broker; for the agent's own workload
        unless ``token_subject`` says otherwise); hand the token out only if this returns.
        The scope revokes it at exit unless :meth:`revoke` did."""
        return self._issue(self._issuance(token_id, request))

    def revoke(
        self,
        token_id: str,
        reason: RevocationReason | str = RevocationReason.MANUAL,
        **extra: Unpack[EnvelopeFields],
    ) -> DeliveryReport:
        """Record a revocation before the scope ends."""
        return self._revoke(token_id, reason, extra)


class Elevation(_Elevation["AgentRecorder", "CredentialBrokerRecorder"], _BlockingCredentials):
    """A break-glass elevation; made by :meth:`AgentRecorder.break_glass`."""

    def __enter__(self) -> Elevation:
        event = self._agent.break_glass_event(self.ctx, self.break_glass_id, self._fields)
        self._agent.producer.publish(event)
        return self


class Rotation(_Rotation["CredentialBrokerRecorder"], _Blocking):
    """A rotating credential; made by :meth:`CredentialBrokerRecorder.rotation`."""

    def __enter__(self) -> Rotation:
        return self

    def rotate(self, token_id: str, **terms: Unpack[CredentialTerms]) -> DeliveryReport:
        """Issue the next credential, then revoke the one before it ``ROTATED``."""
        previous = self.current
        report = self._issue(self._next(token_id, terms))
        self.current = token_id
        if previous is not None:
            self._revoke(previous, RevocationReason.ROTATED, {})
        return report


class TaskScope(
    _Task["AgentRecorder", "CredentialBrokerRecorder", Elevation, Rotation], _BlockingCredentials
):
    """One task from declaration to completion; made by :meth:`AgentRecorder.task`."""

    _elevation = Elevation
    _rotation = Rotation

    def __enter__(self) -> TaskScope:
        self._agent.declare_task(
            self.ctx, self._purpose, self._requested_scopes, **self._declaration
        )
        return self

    def _close(self, error: BaseException | None) -> None:
        outcome, detail = self._completion(error)
        self._agent.complete(self.ctx, outcome, detail=detail)

    def delegate(
        self,
        delegatee: str,
        scopes: Sequence[str],
        decision_id: str,
        child_task_id: str | None = None,
        **extra: Unpack[EnvelopeFields],
    ) -> CustodyContext:
        """Record a delegation; returns the child's context to hand to the delegatee."""
        return self._agent.delegate(
            self.ctx, delegatee, scopes, decision_id, child_task_id, **extra
        )

    def access(self, **fields: Unpack[AccessFields]) -> None:
        """Record a tool access (the fields of :meth:`AgentRecorder.access`)."""
        self._agent.access(self.ctx, **fields)


# ---- asyncio scopes -------------------------------------------------------------------


class _Awaited(_Scope["AsyncCredentialBrokerRecorder"]):
    """:class:`_Blocking` for the asyncio recorders: every call to them awaited."""

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        errors = await _awaited_attempts(self._exit_steps(error))
        end_of_scope(self._name(), errors, error)

    def _exit_steps(self, error: BaseException | None) -> list[Callable[[], Awaitable[object]]]:
        ended = RevocationReason.TASK_ENDED
        revocations = [partial(self._revoke, token, ended, {}) for token in self._still_live()]
        return [*revocations, partial(self._close, error)]

    async def _close(self, error: BaseException | None) -> None:
        """The last exit step, after the revocations: a task's completion."""

    async def _issue(self, fields: CredentialIssuedFields) -> DeliveryReport:
        report = await self._broker.issued(self.ctx, **fields)
        self._live[fields["token_id"]] = None
        return report

    async def _revoke(
        self, token_id: str, reason: RevocationReason | str, extra: EnvelopeFields
    ) -> DeliveryReport:
        report = await self._broker.revoked(self.ctx, token_id=token_id, reason=reason, **extra)
        self._live.pop(token_id, None)
        return report


class _AwaitedCredentials(_Awaited):
    """:class:`_BlockingCredentials`, awaited."""

    async def issue(self, token_id: str, **request: Unpack[IssueRequest]) -> DeliveryReport:
        """:meth:`TaskScope.issue`, awaited."""
        return await self._issue(self._issuance(token_id, request))

    async def revoke(
        self,
        token_id: str,
        reason: RevocationReason | str = RevocationReason.MANUAL,
        **extra: Unpack[EnvelopeFields],
    ) -> DeliveryReport:
        """:meth:`TaskScope.revoke`, awaited."""
        return await self._revoke(token_id, reason, extra)


class AsyncElevation(
    _Elevation["AsyncAgentRecorder", "AsyncCredentialBrokerRecorder"], _AwaitedCredentials
):
    """:class:`Elevation` for ``async with``; made by :meth:`AsyncAgentRecorder.break_glass`."""

    async def __aenter__(self) -> AsyncElevation:
        event = self._agent.break_glass_event(self.ctx, self.break_glass_id, self._fields)
        await self._agent.producer.publish(event)
        return self


class AsyncRotation(_Rotation["AsyncCredentialBrokerRecorder"], _Awaited):
    """:class:`Rotation` for ``async with``; made by
    :meth:`AsyncCredentialBrokerRecorder.rotation`."""

    async def __aenter__(self) -> AsyncRotation:
        return self

    async def rotate(self, token_id: str, **terms: Unpack[CredentialTerms]) -> DeliveryReport:
        """:meth:`Rotation.rotate`, awaited."""
        previous = self.current
        report = await self._issue(self._next(token_id, terms))
        self.current = token_id
        if previous is not None:
            await self._revoke(previous, RevocationReason.ROTATED, {})
        return report


class AsyncTaskScope(
    _Task["AsyncAgentRecorder", "AsyncCredentialBrokerRecorder", AsyncElevation, AsyncRotation],
    _AwaitedCredentials,
):
    """:class:`TaskScope` for ``async with``; made by :meth:`AsyncAgentRecorder.task`."""

    _elevation = AsyncElevation
    _rotation = AsyncRotation

    async def __aenter__(self) -> AsyncTaskScope:
        await self._agent.declare_task(
            self.ctx, self._purpose, self._requested_scopes, **self._declaration
        )
        return self

    async def _close(self, error: BaseException | None) -> None:
        outcome, detail = self._completion(error)
        await self._agent.complete(self.ctx, outcome, detail=detail)

    async def delegate(
        self,
        delegatee: str,
        scopes: Sequence[str],
        decision_id: str,
        child_task_id: str | None = None,
        **extra: Unpack[EnvelopeFields],
    ) -> CustodyContext:
        """:meth:`TaskScope.delegate`, awaited."""
        return await self._agent.delegate(
            self.ctx, delegatee, scopes, decision_id, child_task_id, **extra
        )

    async def access(self, **fields: Unpack[AccessFields]) -> None:
        """:meth:`TaskScope.access`, awaited."""
        await self._agent.access(self.ctx, **fields)
