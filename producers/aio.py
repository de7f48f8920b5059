"""The SDK for asyncio services: ``AsyncCustodyProducer`` and the asyncio recorders.

It is a :class:`producers.producer.CustodyProducer` seen from an event loop, not a second
producer: the same Kafka client, hash chain, bounded buffer and delivery reports, with
every wait turned into an ``await``:

- :meth:`AsyncCustodyProducer.publish` validates, stamps, encodes and hands the event to
  Kafka at once (microseconds, no I/O); only while the buffer is full does it wait, with
  ``asyncio.sleep``, and it raises :class:`BackpressureTimeout` after
  ``CUSTODY_PRODUCER_BUFFER_TIMEOUT_SECONDS`` as the blocking producer does.
- :meth:`AsyncCustodyProducer.publish_sync` returns once the broker acknowledged the
  event: librdkafka's delivery report, which arrives on the producer's reporting thread,
  resolves an asyncio future through ``loop.call_soon_threadsafe``, so the loop runs other
  tasks meanwhile. Failure and timeout raise :class:`DeliveryError` as in the blocking
  producer.
- Starting (topic creation), :meth:`flush` and :meth:`close` wait on the broker; they run
  in a worker thread.

Events from any number of tasks, and from threads sharing the underlying producer, form
one unbroken hash chain.

:class:`AsyncAgentRecorder`, :class:`AsyncPolicyEngineRecorder` and
:class:`AsyncCredentialBrokerRecorder` are the recorders of :mod:`producers.roles` with
their verbs awaited; their events are built by the same code. ``async with
agent.task(...)`` is the task scope of :mod:`producers.scopes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from producers.context import CustodyContext
from producers.events import Source
from producers.producer import (
    ROOM_WAIT_SECONDS,
    CustodyProducer,
    DeliveryCallback,
    DeliveryReport,
    Stamp,
    confirmed,
    no_report_error,
    validated,
)
from producers.roles import AgentEvents, CredentialBrokerEvents, PolicyEngineEvents
from producers.scopes import AsyncElevation, AsyncRotation, AsyncTaskScope
from producers.settings import Settings
from schemas.models import (
    AccessOutcome,
    CredentialKind,
    Decision,
    Envelope,
    RevocationReason,
    TaskOutcome,
)


class AsyncCustodyProducer:
    """Publishes events from coroutines through one :class:`CustodyProducer`."""

    def __init__(self, producer: CustodyProducer) -> None:
        self.producer = producer

    @classmethod
    async def start(
        cls,
        settings: Settings | None = None,
        *,
        producer_instance: str | None = None,
        create_topics: bool = True,
        config_overrides: Mapping[str, Any] | None = None,
    ) -> AsyncCustodyProducer:
        """A new producer; its topic check talks to the broker, so it runs in a thread."""
        producer = await asyncio.to_thread(
            CustodyProducer,
            settings,
            producer_instance=producer_instance,
            create_topics=create_topics,
            config_overrides=config_overrides,
        )
        return cls(producer)

    @property
    def producer_instance(self) -> str:
        return self.producer.producer_instance

    @property
    def settings(self) -> Settings:
        return self.producer.settings

    async def publish(
        self,
        event: Envelope | Mapping[str, Any],
        on_delivery: DeliveryCallback | None = None,
        *,
        keep_failure: bool = True,
    ) -> Stamp:
        """:meth:`CustodyProducer.publish` that waits for buffer room without blocking the
        loop. ``on_delivery`` runs on the reporting thread, as there."""
        model = validated(event)
        deadline: float | None = None
        while True:
            stamp = self.producer.try_publish(model, on_delivery, keep_failure=keep_failure)
            if stamp is not None:
                return stamp
            deadline = self.producer.backpressure_deadline(model, deadline)
            await asyncio.sleep(ROOM_WAIT_SECONDS)

    async def publish_sync(self, event: Envelope | Mapping[str, Any]) -> DeliveryReport:
        """Publish and wait, without blocking the loop, for the broker's acknowledgement.

        Raises :class:`DeliveryError` with the reason if the event was not stored.
        """
        loop = asyncio.get_running_loop()
        arrived: asyncio.Future[DeliveryReport] = loop.create_future()

        def record(report: DeliveryReport) -> None:
            # On the reporting thread: the future belongs to the loop, which sets it. A
            # loop already closed has nobody left waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, arrived, report)

        stamp = await self.publish(event, on_delivery=record, keep_failure=False)
        wait = self.producer.sync_wait_seconds
        try:
            report = await asyncio.wait_for(arrived, wait)
        except TimeoutError:
            raise no_report_error(stamp.event_id, wait) from None
        return confirmed(report)

    async def flush(self, timeout: float | None = None) -> None:
        """:meth:`CustodyProducer.flush`, awaited."""
        await asyncio.to_thread(self.producer.flush, timeout)

    async def close(self, timeout: float | None = None) -> None:
        """:meth:`CustodyProducer.close`, awaited."""
        await asyncio.to_thread(self.producer.close, timeout)

    @property
    def published(self) -> int:
        return self.producer.published

    @property
    def delivered(self) -> int:
        return self.producer.delivered

    @property
    def failed_event_ids(self) -> list[str]:
        return self.producer.failed_event_ids

    async def __aenter__(self) -> AsyncCustodyProducer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _resolve(future: asyncio.Future[DeliveryReport], report: DeliveryReport) -> None:
    # A caller that gave up (cancelled, timed out) left the future done.
    if not future.done():
        future.set_result(report)


# ---- recorders ------------------------------------------------------------------------


class AsyncPublisher(Protocol):
    """What an asyncio recorder needs of a producer: :class:`AsyncCustodyProducer` is one."""

    async def publish(self, event: Envelope) -> Stamp: ...

    async def publish_sync(self, event: Envelope) -> DeliveryReport: ...


class AsyncAgentRecorder(AgentEvents):
    """:class:`producers.roles.AgentRecorder` for coroutines: the same verbs, awaited."""

    def __init__(self, producer: AsyncPublisher, source: Source) -> None:
        self.producer = producer
        self.source = source

    def task(
        self,
        purpose: str,
        requested_scopes: Sequence[str],
        *,
        ctx: CustodyContext | None = None,
        broker: AsyncCredentialBrokerRecorder | None = None,
        **extra: Any,
    ) -> AsyncTaskScope:
        """A task scope for ``async with`` (see :meth:`producers.roles.AgentRecorder.task`)."""
        return AsyncTaskScope(
            self, broker, ctx or CustodyContext.new_root(), purpose, requested_scopes, extra
        )

    def break_glass(
        self,
        ctx: CustodyContext,
        *,
        broker: AsyncCredentialBrokerRecorder,
        reason: str,
        standing_access_unavailable: str,
        expires_at: datetime,
        approval_id: str | None = None,
        break_glass_id: str | None = None,
    ) -> AsyncElevation:
        """A break-glass elevation for ``async with`` (see
        :meth:`producers.roles.AgentRecorder.break_glass`)."""
        return AsyncElevation(
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

    async def declare_task(
        self, ctx: CustodyContext, purpose: str, requested_scopes: Sequence[str], **extra: Any
    ) -> None:
        await self.producer.publish(self.declared_event(ctx, purpose, requested_scopes, **extra))

    async def delegate(
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
        await self.producer.publish(event)
        return child

    async def access(
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
        await self.producer.publish(
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

    async def complete(self, ctx: CustodyContext, outcome: TaskOutcome | str, **extra: Any) -> None:
        await self.producer.publish(self.completed_event(ctx, outcome, **extra))


class AsyncPolicyEngineRecorder(PolicyEngineEvents):
    """:class:`producers.roles.PolicyEngineRecorder` for coroutines."""

    def __init__(self, producer: AsyncPublisher, source: Source) -> None:
        self.producer = producer
        self.source = source

    async def decision(
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
        await self.producer.publish(event)
        return decision_id


class AsyncCredentialBrokerRecorder(CredentialBrokerEvents):
    """:class:`producers.roles.CredentialBrokerRecorder` for coroutines: issuance and
    revocation are awaited until the broker acknowledged them."""

    def __init__(self, producer: AsyncPublisher, source: Source) -> None:
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
    ) -> AsyncRotation:
        """A rotating credential for ``async with`` (see
        :meth:`producers.roles.CredentialBrokerRecorder.rotation`)."""
        return AsyncRotation(self, ctx, token_subject, credential_kind, audience, scopes)

    async def issued(
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
        return await self.producer.publish_sync(
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

    async def revoked(
        self,
        ctx: CustodyContext,
        *,
        token_id: str,
        reason: RevocationReason | str,
        **extra: Any,
    ) -> DeliveryReport:
        return await self.producer.publish_sync(self.revoked_event(ctx, token_id, reason, **extra))
