"""Alert records: deterministic ids, severities and construction.

An alert's id is a hash of its type, tenant, custody tree and *subject* (the token, the
access event, the missing task, ...), never of arrival order or detection time: the same
condition seen twice, by a replay or a restarted worker, is one alert.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TypedDict, Unpack

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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Alert details are contract text (at most 8,192 characters): a detail naming thousands of
# scopes is cut, saying how long it was, rather than failing the alert (and the worker).
MAX_DETAIL = 8192


def from_micros(micros: int) -> datetime:
    # Integer arithmetic: a float division rounds some times (e.g. xx.999999 s late in
    # the range) to the next second, and datetime.max to year 10000.
    return _EPOCH + timedelta(microseconds=micros)


def clip_detail(detail: str) -> str:
    """``detail`` cut to fit an alert record, saying how long it was."""
    if len(detail) <= MAX_DETAIL:
        return detail
    note = f"... ({len(detail)} characters)"
    return detail[: MAX_DETAIL - len(note)] + note


class AlertAbout(TypedDict, total=False):
    """What an alert names besides its tree when its rule knows it: the task, the token
    and the workload it is about."""

    task_id: str | None
    token_id: str | None
    workload_id: str | None


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
    **about: Unpack[AlertAbout],
) -> Alert:
    """An alert record; ``evidence`` is sorted so the record does not depend on order."""
    return Alert(
        alert_id=alert_id(alert_type, tenant, root_task_id, subject),
        alert_type=alert_type,
        severity=SEVERITY[alert_type],
        tenant=tenant,
        root_task_id=root_task_id,
        event_time=from_micros(event_time_us),
        detected_at=detected_at,
        evidence_event_ids=sorted(set(evidence)),
        detail=clip_detail(detail),
        **about,
    )
