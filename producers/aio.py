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
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Unpack

from producers.context import CustodyContext
from producers.events import (
    AccessFields,
    CredentialIssuedFields,
    DecisionFields,
    Delegated,
    EnvelopeFields,
    Renewal,
    Revocation,
    TaskCompletion,
    TaskDeclaration,
)
from producers.producer import (
    ROOM_WAIT_SECONDS,
    CustodyProducer,
    DeliveryCallback,
    DeliveryReport,
    ProducerOptions,
    Stamp,
    confirmed,
    no_report_error,
    validated,
)
from producers.roles import AgentEvents, CredentialBrokerEvents, PolicyEngineEvents
from producers.scopes import AsyncElevation, AsyncRotation, AsyncTaskScope
from producers.settings import Settings
from schemas.models import Envelope, TaskOutcome


class AsyncCustodyProducer:
    """Publishes events from coroutines through one :class:`CustodyProducer`."""

    def __init__(self, producer: CustodyProducer) -> None:
        self.producer = producer
        # Fixed for the producer's life, so copied rather than looked up.
        self.producer_instance: str = producer.producer_instance
        self.settings: Settings = producer.settings

    @classmethod
    async def start(
        cls, settings: Settings | None = None, **options: Unpack[ProducerOptions]
    ) -> AsyncCustodyProducer:
        """A new producer; its topic check talks to the broker, so it runs in a thread."""
        return cls(await asyncio.to_thread(CustodyProducer, settings, **options))

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
        """:attr:`CustodyProducer.published`: events handed to Kafka so far."""
        return self.producer.published

    @property
    def delivered(self) -> int:
        """:attr:`CustodyProducer.delivered`: events the broker acknowledged so far."""
        return self.producer.delivered

    @property
    def failed_event_ids(self) -> list[str]:
        """:attr:`CustodyProducer.failed_event_ids`: events that failed since the last
        flush."""
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


class AsyncAgentRecorder(
    AgentEvents[AsyncPublisher, "AsyncCredentialBrokerRecorder", AsyncTaskScope, AsyncElevation]
):
    """:class:`producers.roles.AgentRecorder` for coroutines: the same verbs, awaited."""

    _task_scope = AsyncTaskScope
    _elevation = AsyncElevation

    async def declare_task(
        self,
        ctx: CustodyContext,
        purpose: str,
        requested_scopes: Sequence[str],
        **extra: Unpack[TaskDeclaration],
    ) -> None:
        """:meth:`producers.roles.AgentRecorder.declare_task`, awaited."""
        await self.producer.publish(self.declared_event(ctx, purpose, requested_scopes, extra))

    async def delegate(
        self,
        ctx: CustodyContext,
        delegatee: str,
        scopes: Sequence[str],
        decision_id: str,
        child_task_id: str | None = None,
        **extra: Unpack[EnvelopeFields],
    ) -> CustodyContext:
        """:meth:`producers.roles.AgentRecorder.delegate`, awaited."""
        child = ctx.child(child_task_id)
        delegated = Delegated(delegatee=delegatee, scopes=scopes, decision_id=decision_id)
        await self.producer.publish(self.delegation_event(ctx, child, {**delegated, **extra}))
        return child

    async def access(self, ctx: CustodyContext, **fields: Unpack[AccessFields]) -> None:
        """:meth:`producers.roles.AgentRecorder.access`, awaited."""
        await self.producer.publish(self.access_event(ctx, fields))

    async def complete(
        self, ctx: CustodyContext, outcome: TaskOutcome | str, **extra: Unpack[TaskCompletion]
    ) -> None:
        """:meth:`producers.roles.AgentRecorder.complete`, awaited."""
        await self.producer.publish(self.completed_event(ctx, outcome, extra))


class AsyncPolicyEngineRecorder(PolicyEngineEvents[AsyncPublisher]):
    """:class:`producers.roles.PolicyEngineRecorder` for coroutines."""

    async def decision(
        self,
        ctx: CustodyContext,
        *,
        decision_id: str | None = None,
        **fields: Unpack[DecisionFields],
    ) -> str:
        """:meth:`producers.roles.PolicyEngineRecorder.decision`, awaited."""
        decision_id, event = self.decision_event(ctx, decision_id, fields)
        await self.producer.publish(event)
        return decision_id


class AsyncCredentialBrokerRecorder(CredentialBrokerEvents[AsyncPublisher, AsyncRotation]):
    """:class:`producers.roles.CredentialBrokerRecorder` for coroutines: issuance, renewal
    and revocation are awaited until the broker acknowledged them."""

    _rotation = AsyncRotation

    async def issued(
        self, ctx: CustodyContext, **fields: Unpack[CredentialIssuedFields]
    ) -> DeliveryReport:
        """:meth:`producers.roles.CredentialBrokerRecorder.issued`, awaited."""
        return await self.producer.publish_sync(self.issued_event(ctx, fields))

    async def revoked(self, ctx: CustodyContext, **fields: Unpack[Revocation]) -> DeliveryReport:
        """:meth:`producers.roles.CredentialBrokerRecorder.revoked`, awaited."""
        return await self.producer.publish_sync(self.revoked_event(ctx, fields))

    async def renewed(self, ctx: CustodyContext, **fields: Unpack[Renewal]) -> DeliveryReport:
        """:meth:`producers.roles.CredentialBrokerRecorder.renewed`, awaited."""
        return await self.producer.publish_sync(self.renewed_event(ctx, fields))
