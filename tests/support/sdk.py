"""What the SDK's tests share, in memory and against a broker: a credential's expiry, the
shape of what a task published, and the export task of the crash case (its decision, its
credential grant and the access that fails)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from producers.events import AccessFields, CredentialGrant, DecisionFields
from schemas.models import Envelope, EventType

# (event type, token id or outcome, revocation reason or completion detail)
Shape = tuple[str, str | None, str | None]

EXPORT_DECISION = DecisionFields(
    policy_id="exports",
    policy_version="3",
    decision="ALLOW",
    resource="warehouse://sales",
    action="read",
    data_scope=["warehouse:read"],
    reasons=["scheduled export"],
)
EXPORT_GRANT = CredentialGrant(
    credential_kind="DB_CREDENTIAL", audience="warehouse", scopes=["warehouse:read"]
)
EXPORT_ACCESS = AccessFields(
    token_id="tok-1",
    tool="warehouse.export",
    resource="warehouse://sales",
    action="read",
    data_scope=["warehouse:read"],
    outcome="FAILURE",
)


def expires() -> datetime:
    """A credential's expiry a quarter of an hour from now: computed per call, since a
    module-level constant would lie in the past once a long suite reaches these tests."""
    return datetime.now(UTC) + timedelta(minutes=15)


def shape(events: Iterable[Envelope]) -> list[Shape]:
    """Each event's :data:`Shape`, in order."""
    found: list[Shape] = []
    for event in events:
        body: Any = event.body  # type: ignore[attr-defined]  # every event type has one
        if event.event_type == EventType.CREDENTIAL_REVOKED:
            found.append((str(event.event_type), body.token_id, str(body.reason)))
        elif event.event_type == EventType.TASK_COMPLETED:
            found.append((str(event.event_type), str(body.outcome), body.detail))
        else:
            found.append((str(event.event_type), getattr(body, "token_id", None), None))
    return found
