"""``custody alerts``: stored alerts, filtered by type, time and tenant."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from processors.serving.reader import Reader
from processors.serving.records import ALERT_COLUMNS, Alert, read
from processors.storage.backend import iso
from schemas.models import AlertType

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (UTC when no offset is given) or a duration back from now: 90s,
    15m, 2h, 7d."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        amount, unit = int(relative[1]), _UNITS[relative[2]]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected an ISO-8601 time (2026-11-29T09:00:00Z) "
            "or a duration (90s, 15m, 2h, 7d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def list_alerts(
    reader: Reader,
    alert_type: str | None = None,
    since: datetime | None = None,
    tenant: str | None = None,
    limit: int | None = None,
) -> list[Alert]:
    """Alerts in event-time order, or the newest ``limit`` of them newest first; ``since``
    compares with the alert's ``event_time``."""
    if alert_type is not None and alert_type not in AlertType.__members__:
        known = ", ".join(AlertType.__members__)
        raise ValueError(f"--type {alert_type!r}: not an alert type ({known})")
    conditions = []
    params: dict[str, str | int] = {}
    if alert_type is not None:
        conditions.append("alert_type = {type:String}")
        params["type"] = alert_type
    if since is not None:
        conditions.append("event_time >= parseDateTime64BestEffort({since:String}, 6, 'UTC')")
        params["since"] = iso(since)
    if tenant is not None:
        conditions.append("tenant = {tenant:String}")
        params["tenant"] = tenant
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    order = "ORDER BY event_time, alert_id"
    if limit is not None:
        order = "ORDER BY event_time DESC, alert_id LIMIT {limit:UInt32}"
        params["limit"] = limit
    # Constant fragments chosen above; every value is a bound parameter.
    sql = f"SELECT {ALERT_COLUMNS} FROM alerts {where} {order}"  # noqa: S608
    return read(reader, Alert, sql, params)
