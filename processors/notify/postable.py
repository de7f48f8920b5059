"""A Custody alert as Alertmanager's v2 API takes it (a ``postableAlert``): a pure mapping.

Labels identify the alert and decide how Alertmanager groups and routes it: ``alertname``
(the alert type), ``severity``, ``tenant``, ``root_task_id``, the subject where the alert
has one (``token_id``, ``task_id``, ``workload_id``), ``alert_id`` and ``source``
(``custody``, so an Alertmanager shared with Prometheus can route them apart). The alert
id is a label because each Custody alert is a fact of its own: two alerts of one type on
one token are two alerts, and the same alert posted again (a replay after a crash) is the
same Alertmanager alert, which Alertmanager does not notify twice.

Annotations: a one-line summary, the detail, the evidence event ids, the tree in the
explorer and the runbook of the alert type.

Custody alerts do not resolve by themselves, so each is posted with an end
``firing_seconds`` after it is posted (docs/alerts.md, "Alerts in Alertmanager"); an
analyst closes one sooner with a silence.

No secret value reaches Alertmanager: every body posted passes the same screen as the
events (:func:`body_of`; a secret-looking match is replaced by ``[REDACTED]``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from processors.serving.links import tree_link
from schemas.models import Alert
from schemas.secrets import may_hold_secret, redact_secrets

SOURCE = "custody"
# Alertmanager shows the summary in one line; the detail stays in its own annotation.
_SUMMARY_CHARS = 200


@dataclass(frozen=True)
class Links:
    """Where a notification points: the explorer and the alert reference (runbook)."""

    explorer: str
    runbook: str
    firing_seconds: float


def explorer_link(explorer: str, alert: Alert) -> str:
    """The explorer's page of the alert's tree, the alert selected."""
    return tree_link(explorer, alert.tenant, alert.root_task_id, alert.alert_id)


def runbook_link(runbook: str, alert: Alert) -> str:
    """The alert type's section of the alert reference."""
    return f"{runbook}#{alert.alert_type.name.lower()}"


def labels(alert: Alert) -> dict[str, str]:
    """The labels that identify and route the alert."""
    found = {
        "alertname": alert.alert_type.name,
        "severity": alert.severity.name,
        "tenant": alert.tenant,
        "root_task_id": alert.root_task_id,
        "alert_id": alert.alert_id,
        "source": SOURCE,
    }
    for name, value in (
        ("token_id", alert.token_id),
        ("task_id", alert.task_id),
        ("workload_id", alert.workload_id),
    ):
        if value:
            found[name] = value
    return found


def summary(alert: Alert) -> str:
    """One line: what happened, to which subject, in which tree."""
    subject = alert.token_id or alert.task_id or alert.workload_id
    about = f" on {subject}" if subject else ""
    line = f"{alert.alert_type.name}{about} in tree {alert.root_task_id}: {alert.detail}"
    line = " ".join(line.split())
    return line if len(line) <= _SUMMARY_CHARS else line[: _SUMMARY_CHARS - 1] + "…"


def postable(alert: Alert, links: Links, now: datetime) -> dict[str, Any]:
    """The ``postableAlert`` of ``alert``, posted at ``now`` (timezone-aware)."""
    explorer = explorer_link(links.explorer, alert)
    # From the later of now and the alert's time: an event time ahead of this clock must
    # not end the alert before it starts.
    ends = max(now, alert.event_time) + timedelta(seconds=links.firing_seconds)
    posted: dict[str, Any] = {
        "labels": labels(alert),
        "annotations": {
            "summary": summary(alert),
            "description": alert.detail,
            "evidence_event_ids": ",".join(alert.evidence_event_ids),
            "explorer_url": explorer,
            "runbook_url": runbook_link(links.runbook, alert),
        },
        "startsAt": alert.event_time.isoformat(),
        "endsAt": ends.isoformat(),
        "generatorURL": explorer,
    }
    return posted


def body_of(posts: Sequence[dict[str, Any]]) -> bytes:
    """The JSON body posting ``posts``, holding no secret value: the body is screened
    once (the events' pre-screen, over its bytes: JSON keeps every marker's characters);
    only on a hit is each post redacted, a secret-looking match replaced by
    ``[REDACTED]``."""
    body = json.dumps(list(posts)).encode()
    if not may_hold_secret(body):
        return body
    return json.dumps([redact_secrets(post) for post in posts]).encode()
