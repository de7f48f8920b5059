"""A credential broker records a renewal, blocking and asyncio alike: one CREDENTIAL_RENEWED
event, renewed by the broker's own workload, acknowledged before the verb returns."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from producers import (
    AsyncCredentialBrokerRecorder,
    CredentialBrokerRecorder,
    CustodyContext,
    DeliveryError,
)
from schemas.models import CredentialRenewedEvent
from tests.support.samples import BROKER
from tests.unit.test_sdk_scopes import AsyncMemoryPublisher, MemoryPublisher

UNTIL = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def _renewal(publisher: MemoryPublisher, ctx: CustodyContext) -> CredentialRenewedEvent:
    [event] = publisher.events
    assert isinstance(event, CredentialRenewedEvent)
    assert event.body.token_id == "tok-1"
    assert event.body.expires_at == UNTIL
    assert event.body.renewed_by == BROKER.actor.workload_id
    assert event.task_id == ctx.task_id
    return event


def test_the_blocking_broker_records_a_renewal() -> None:
    publisher = MemoryPublisher()
    ctx = CustodyContext.new_root()
    report = CredentialBrokerRecorder(publisher, BROKER).renewed(
        ctx, token_id="tok-1", expires_at=UNTIL
    )
    assert report.event_id == _renewal(publisher, ctx).event_id


def test_the_asyncio_broker_records_a_renewal() -> None:
    publisher = AsyncMemoryPublisher()
    ctx = CustodyContext.new_root()
    broker = AsyncCredentialBrokerRecorder(publisher, BROKER)
    report = asyncio.run(broker.renewed(ctx, token_id="tok-1", expires_at=UNTIL))
    assert report.event_id == _renewal(publisher, ctx).event_id


def test_a_refused_renewal_raises_and_records_nothing() -> None:
    publisher = MemoryPublisher()
    publisher.refuse.add("tok-1")
    broker = CredentialBrokerRecorder(publisher, BROKER)
    with pytest.raises(DeliveryError):
        broker.renewed(CustodyContext.new_root(), token_id="tok-1", expires_at=UNTIL)
    assert publisher.events == []
