"""Alert records: deterministic ids, severities and construction.

An alert's id is a hash of its type, tenant, custody tree and *subject* (the token, the
access event, the missing task, ...), never of arrival order or detection time: the same
condition seen twice, by a replay or a restarted worker, is one alert.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime

from schemas.models import Alert, AlertType, Severity

SEVERITY: dict[AlertType, Severity] = {
    AlertType.UNREVOKED_TOKEN: Severity.HIGH,
    AlertType.ORPHANED_TOKEN: Severity.HIGH,
    AlertType.TOKEN_USED_AFTER_REVOCATION: Severity.CRITICAL,
    AlertType.TOKEN_USED_AFTER_EXPIRY: Severity.HIGH,
    AlertType.SHARED_CREDENTIAL: Severity.HIGH,
    AlertType.SCOPE_ESCALATION: Severity.HIGH,
    AlertType.DELEGATION_IDENTITY_REUSE: Severity.MEDIUM,
    AlertType.UNAUTHORIZED_ACCESS: Severity.CRITICAL,
    AlertType.BREAK_GLASS_UNAPPROVED: Severity.HIGH,
    AlertType.BREAK_GLASS_OVERDUE: Severity.HIGH,
    AlertType.LONG_LIVED_CREDENTIAL: Severity.MEDIUM,
    AlertType.BROKEN_CHAIN: Severity.MEDIUM,
    AlertType.SELF_APPROVAL: Severity.HIGH,
    AlertType.EVIDENCE_GAP: Severity.CRITICAL,
}


def alert_id(alert_type: AlertType, tenant: str, root_task_id: str, subject: str) -> str:
    """The deterministic id of the condition ``alert_type`` on ``subject``."""
    text = "\x1f".join((str(alert_type), tenant, root_task_id, subject))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def from_micros(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC).replace(
        microsecond=micros % 1_000_000
    )


def make_alert(
    alert_type: AlertType,
    *,
    tenant: str,
    root_task_id: str,
    subject: str,
    event_time_us: int,
    detected_at: datetime,
    evidence: Iterable[str],
    detail: str,
    task_id: str | None = None,
    token_id: str | None = None,
    workload_id: str | None = None,
) -> Alert:
    """An alert record; ``evidence`` is sorted so the record does not depend on order."""
    return Alert(
        alert_id=alert_id(alert_type, tenant, root_task_id, subject),
        alert_type=alert_type,
        severity=SEVERITY[alert_type],
        tenant=tenant,
        root_task_id=root_task_id,
        task_id=task_id,
        token_id=token_id,
        workload_id=workload_id,
        event_time=from_micros(event_time_us),
        detected_at=detected_at,
        evidence_event_ids=sorted(set(evidence)),
        detail=detail,
    )
