"""``custody report``: the auditor's evidence report for one tenant over a period.

It runs the statements of :mod:`processors.reporting.queries` (the report carries them
and their parameters) and assembles:

- ``counts``: what the period holds;
- ``controls``: each control's measure, status and exceptions (:mod:`.controls`);
- ``inventory``: every workload identity, what it held beside what it used, standing
  access first;
- ``break_glass``: the register of break-glass elevations, with approver and status;
- ``delegations``: how deep delegation went, by depth, and the widest grants;
- ``frameworks``: the framework items each control and alert type maps to
  (``frameworks.yaml``), with their controls' status;
- ``evidence``: the producer chains the period covers;
- ``integrity``: the digests that seal it (:mod:`.integrity`).

Everything is computed as of the period's end, never of the wall clock, so the same
period gives the same sections tomorrow: that is what ``custody report verify`` checks.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from processors.reporting import controls as control_rules
from processors.reporting.controls_catalog import CONTROLS
from processors.reporting.frameworks import Mapping as FrameworkMapping
from processors.reporting.integrity import seal
from processors.reporting.queries import SECTIONS
from processors.serving.reader import Reader
from processors.storage.backend import iso

FORMAT = "custody-report/1"
_TIMES = ("event_time", "first_seen", "last_seen", "expires_at")

Row = dict[str, Any]


@dataclass(frozen=True)
class Period:
    """One tenant over ``[start, end)``, judged with the correlator's settings."""

    tenant: str
    start: datetime
    end: datetime
    grace_seconds: int
    max_credential_ttl_seconds: int

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError("the period must end after it starts (--to after --from)")

    def params(self) -> dict[str, Any]:
        """The bound parameters of every statement."""
        return {
            "tenant": self.tenant,
            "start": iso(self.start),
            "end": iso(self.end),
            "grace": self.grace_seconds,
            "max_ttl": self.max_credential_ttl_seconds,
        }


def _time(value: Any) -> Any:
    """A time as the one ISO form every output uses, whichever backend read it."""
    if not isinstance(value, str) or not value:
        return value
    parsed = datetime.fromisoformat(value)
    return iso(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


def _normal(rows: Sequence[Mapping[str, Any]]) -> list[Row]:
    return [{k: _time(v) if k in _TIMES else v for k, v in row.items()} for row in rows]


def _inventory(rows: Sequence[Row], alerts: Sequence[Row], max_ttl: int) -> list[Row]:
    shared = Counter(a["workload_id"] for a in alerts if a["alert_type"] == "SHARED_CREDENTIAL")
    identities = []
    for row in rows:
        granted, used = list(row["scopes_granted"]), list(row["scopes_used"])
        longest = int(row["longest_lifetime_seconds"])
        identities.append(
            {
                "workload_id": row["workload_id"],
                "kind": row["kind"] or "SUBJECT_ONLY",
                "humans": list(row["humans"]),
                "first_seen": row["first_seen"],
                "last_seen": row["last_seen"],
                "actions": int(row["actions"]),
                "credentials": {
                    "count": int(row["credentials"]),
                    "longest_lifetime_seconds": longest if row["credentials"] else None,
                    "live_at_period_end": int(row["live_at_end"]),
                },
                "shared_use_alerts": shared.get(row["workload_id"], 0),
                "scopes_granted": granted,
                "scopes_used": used,
                "granted_not_used": sorted(set(granted) - set(used)),
                "standing_access": longest > max_ttl or int(row["live_at_end"]) > 0,
            }
        )
    identities.sort(
        key=lambda i: (not i["standing_access"], -i["credentials"]["count"], i["workload_id"])
    )
    return identities


def _break_glass(rows: Sequence[Row], alerts: Sequence[Row]) -> list[Row]:
    by_tree: dict[str, list[Row]] = {}
    for alert in alerts:
        if alert["alert_type"] in ("BREAK_GLASS_UNAPPROVED", "BREAK_GLASS_OVERDUE"):
            by_tree.setdefault(alert["root_task_id"], []).append(alert)
    register = []
    for row in rows:
        found = [
            a
            for a in by_tree.get(row["root_task_id"], [])
            if a["task_id"] in (None, row["task_id"])
        ]
        kinds = {a["alert_type"] for a in found}
        state = (
            "UNAPPROVED"
            if "BREAK_GLASS_UNAPPROVED" in kinds
            else "OVERDUE"
            if "BREAK_GLASS_OVERDUE" in kinds
            else "APPROVED"
            if row["approver"]
            else "NOT_APPROVED"
        )
        register.append({**row, "status": state, "alert_ids": [a["alert_id"] for a in found]})
    return register


def _delegations(by_depth: Sequence[Row], widest: Sequence[Row]) -> Row:
    return {
        "delegations": sum(int(r["delegations"]) for r in by_depth),
        "deepest": max((int(r["depth"]) for r in by_depth if r["depth"] is not None), default=0),
        "by_depth": [dict(r) for r in by_depth],
        "widest": [dict(r) for r in widest],
    }


def _frameworks(
    mapping: FrameworkMapping, controls: Sequence[Row], alerts: Sequence[Row]
) -> list[Row]:
    status = {c["id"]: c["status"] for c in controls}
    counted = Counter(a["alert_type"] for a in alerts)
    return [
        {
            "framework": item.framework,
            "id": item.id,
            "title": item.title,
            "source": item.source,
            "controls": [{"id": c, "status": status[c]} for c in item.controls],
            "alert_types": [
                {"alert_type": t, "alerts": counted.get(t, 0)} for t in item.alert_types
            ],
        }
        for item in mapping.items
    ]


def build(
    reader: Reader, period: Period, mapping: FrameworkMapping, explorer_url: str | None = None
) -> tuple[dict[str, Any], dict[str, float]]:
    """The sealed report, and the seconds each section's statement took."""
    params = period.params()
    rows: dict[str, list[Row]] = {}
    timings: dict[str, float] = {}
    for name, sql in SECTIONS.items():
        started = time.perf_counter()
        rows[name] = _normal(reader.select(sql, params))
        timings[name] = time.perf_counter() - started
    started = time.perf_counter()
    alerts = rows["alerts"]
    facts = control_rules.Facts(
        counts=rows["counts"][0],
        credentials=rows["credentials"][0],
        delegations=rows["delegations"],
        chains=rows["chains"],
    )
    controls = [
        {
            "title": control.title,
            **control_rules.evaluate(
                control.id,
                facts,
                [a for a in alerts if control_rules.CONTROL_OF.get(a["alert_type"]) == control.id],
            ),
        }
        for control in CONTROLS
    ]
    report = {
        "format": FORMAT,
        "tenant": period.tenant,
        "period": {"from": iso(period.start), "to": iso(period.end)},
        "generated_at": iso(datetime.now(UTC)),
        "explorer_url": explorer_url,
        "queries": {name: sql.strip() for name, sql in SECTIONS.items()},
        "parameters": params,
        "counts": {**rows["counts"][0], "alerts": len(alerts)},
        "controls": controls,
        "inventory": _inventory(rows["inventory"], alerts, period.max_credential_ttl_seconds),
        "break_glass": _break_glass(rows["break_glass"], alerts),
        "delegations": _delegations(rows["delegations"], rows["widest_delegations"]),
        "frameworks": _frameworks(mapping, controls, alerts),
        "evidence": {"chains": rows["chains"]},
    }
    sealed = seal(report)
    timings["assemble"] = time.perf_counter() - started
    return sealed, timings
