"""The report's entry points for the command and the query API: build one from the
configured ClickHouse, and verify a stored one against it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from processors.reporting.frameworks import load_mapping
from processors.reporting.integrity import differences
from processors.reporting.report import Period, build
from processors.serving.reader import Reader, open_reader
from producers.settings import Settings


class ReportError(RuntimeError):
    """The report cannot be built or verified (no ClickHouse, a bad period, a bad file)."""


def period_of(settings: Settings, tenant: str, start: datetime, end: datetime) -> Period:
    """The period, judged with the correlator's grace and credential lifetime."""
    try:
        return Period(
            tenant,
            start,
            end,
            int(settings.grace_seconds),
            int(settings.max_credential_ttl_seconds),
        )
    except ValueError as exc:
        raise ReportError(str(exc)) from None


def report_from(reader: Reader, period: Period, explorer_url: str | None) -> dict[str, Any]:
    """The sealed report of ``period`` read through ``reader``."""
    sealed, _ = build(reader, period, load_mapping(), explorer_url)
    return sealed


def build_report(settings: Settings, tenant: str, start: datetime, end: datetime) -> dict[str, Any]:
    """The sealed report of ``tenant`` over ``[start, end)`` from the configured ClickHouse."""
    from processors.serving.reader import QueryError, running_api
    from processors.storage.target import TargetError

    period = period_of(settings, tenant, start, end)
    try:
        with open_reader(settings) as reader:
            return report_from(reader, period, settings.explorer_url or running_api(settings))
    except (QueryError, TargetError) as exc:
        raise ReportError(str(exc)) from None


def verify_report(settings: Settings, stored: dict[str, Any]) -> list[str]:
    """What no longer holds of ``stored``: its own digest, and each section ClickHouse now
    gives otherwise (built for the same tenant, period, grace and lifetime bound)."""
    from processors.serving.reader import QueryError
    from processors.storage.target import TargetError

    try:
        params = stored["parameters"]
        period = Period(
            params["tenant"],
            datetime.fromisoformat(params["start"]),
            datetime.fromisoformat(params["end"]),
            int(params["grace"]),
            int(params["max_ttl"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"not a Custody report: {exc}") from None
    try:
        with open_reader(settings) as reader:
            recomputed = report_from(reader, period, stored.get("explorer_url"))
    except (QueryError, TargetError) as exc:
        raise ReportError(str(exc)) from None
    return differences(stored, recomputed)
