"""``custody demo``: the product end to end on the local stack, for a newcomer.

Starts what is not running, publishes a simulation (:mod:`producers.simulator`) that
began ``hours_ago`` hours back, so that deadline-driven alerts (a token left unrevoked
after its task ended) are due by the time the events arrive, waits until ClickHouse holds
every event, every task's final state and every alert the misbehaviours must raise, then
reports from ClickHouse alone.

A run is scoped by its producer instance (each ``CustodyProducer`` has its own), so a
second demo on the same stack reports only its own trees. A second demo never starts
before the latest stored event: the correlator's watermark already passed that time, and
evidence older than the watermark is judged late (deadlines that are already past fire
before the rest of the backfilled tree arrives). It then starts nearer to now.

Alerts that wait for a deadline (a token left unrevoked, a token used after its expiry)
can lag: a partition's watermark reaches its last tree's deadline only by idle
advancement, up to the grace period plus the allowed lateness after its last event. The
demo waits a little for them, then reports those still to come.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from processors.notify.alertmanager import AlertmanagerClient, Unavailable
from processors.notify.postable import SOURCE
from processors.serving.reader import Reader
from producers.simulator import Scenario
from producers.traffic import SimulationRun

# The run's trees, found through its events (only the events table knows the producer).
# The queries below embed this constant; the producer is a bound parameter, so S608's
# injection does not apply (noqa on each).
_ROOTS = "SELECT DISTINCT root_task_id FROM events WHERE producer_instance = {producer:String}"

_PROGRESS = f"""
SELECT
    (SELECT count() FROM events WHERE producer_instance = {{producer:String}}) AS events,
    (SELECT countIf(status = 'COMPLETED') FROM tasks WHERE root_task_id IN ({_ROOTS}))
        AS finished_tasks,
    (SELECT count() FROM credentials WHERE root_task_id IN ({_ROOTS})) AS credentials"""  # noqa: S608

_ALERTED = f"""
SELECT DISTINCT root_task_id, alert_type FROM alerts WHERE root_task_id IN ({_ROOTS})"""  # noqa: S608

_SUMMARY = f"""
SELECT
    (SELECT uniqExact(root_task_id) FROM events
        WHERE producer_instance = {{producer:String}}) AS trees,
    (SELECT count() FROM events WHERE producer_instance = {{producer:String}}) AS events,
    (SELECT count() FROM tasks WHERE root_task_id IN ({_ROOTS})) AS tasks,
    (SELECT max(depth) FROM tasks WHERE root_task_id IN ({_ROOTS})) AS deepest_delegation,
    (SELECT count() FROM delegations WHERE root_task_id IN ({_ROOTS})) AS delegations,
    (SELECT count() FROM credentials WHERE root_task_id IN ({_ROOTS})) AS credentials,
    (SELECT countIf(state = 'REVOKED') FROM credentials WHERE root_task_id IN ({_ROOTS}))
        AS revoked,
    (SELECT countIf(event_type = 'ACCESS') FROM events
        WHERE producer_instance = {{producer:String}}) AS accesses,
    (SELECT countIf(event_type = 'APPROVAL') FROM events
        WHERE producer_instance = {{producer:String}}) AS human_approvals,
    (SELECT countIf(event_type = 'BREAK_GLASS') FROM events
        WHERE producer_instance = {{producer:String}}) AS break_glass,
    (SELECT count() FROM alerts WHERE root_task_id IN ({_ROOTS})) AS alerts"""  # noqa: S608

_ALERTS_BY_TYPE = f"""
SELECT alert_type, any(severity) AS severity, count() AS alerts,
       uniqExact(root_task_id) AS trees
FROM alerts WHERE root_task_id IN ({_ROOTS})
GROUP BY alert_type ORDER BY alerts DESC, alert_type"""  # noqa: S608

_LATEST = "SELECT max(event_time) AS latest, count() AS events FROM events"

# Alerts that fire when the correlator's watermark passes a deadline (a tree's end, or an
# access after its token's expiry, plus the grace period, which a renewal arriving late may
# still cover), not on an event. On a quiet stack the watermark gets there through idle
# advancement, minutes after the last event of a partition.
DEADLINE_ALERTS = frozenset({"UNREVOKED_TOKEN", "TOKEN_USED_AFTER_EXPIRY"})

# The misbehaviours whose trees show the most in one picture, best first.
_SHOWCASE = ("SCOPE_ESCALATION", "SHARED_CREDENTIAL", "SELF_APPROVAL", "UNREVOKED_TOKEN")


@dataclass(frozen=True, slots=True)
class StoredProgress:
    """How much of a run ClickHouse holds."""

    events: int
    finished_tasks: int
    credentials: int
    # Expected alerts not stored yet, root task -> alert type.
    missing_alerts: dict[str, str]

    def stored(self, run: SimulationRun) -> bool:
        """Every event, final task state and credential, and every alert that needs no
        deadline."""
        return (
            self.events >= run.published
            and self.finished_tasks >= run.by_type["TASK_COMPLETED"]
            and self.credentials >= run.by_type["CREDENTIAL_ISSUED"]
            and all(alert in DEADLINE_ALERTS for alert in self.missing_alerts.values())
        )

    def waiting_for_deadline(self) -> dict[str, str]:
        """The missing alerts that fire on a deadline."""
        return {
            root: alert for root, alert in self.missing_alerts.items() if alert in DEADLINE_ALERTS
        }


def simulation_start(reader: Reader, now: datetime, hours_ago: float) -> datetime:
    """``hours_ago`` before ``now``, or just after the latest stored event if later."""
    start = now - timedelta(hours=hours_ago)
    row = reader.select(_LATEST)[0]
    if row["events"]:
        start = max(start, datetime.fromisoformat(row["latest"]) + timedelta(seconds=1))
    return start.replace(microsecond=0)


def stored_progress(reader: Reader, run: SimulationRun) -> StoredProgress:
    """What ClickHouse holds of ``run`` now, and which expected alerts it still lacks."""
    params = {"producer": run.producer_instance}
    counts = reader.select(_PROGRESS, params)[0]
    alerted = {(row["root_task_id"], row["alert_type"]) for row in reader.select(_ALERTED, params)}
    missing = {
        root: alert for root, alert in run.expected_alerts().items() if (root, alert) not in alerted
    }
    return StoredProgress(
        int(counts["events"]), int(counts["finished_tasks"]), int(counts["credentials"]), missing
    )


def wait_until_stored(
    reader: Reader,
    run: SimulationRun,
    timeout: float,
    deadline_wait: float,
    on_progress: Callable[[StoredProgress], None] = lambda _: None,
) -> StoredProgress:
    """Poll until ClickHouse holds all of ``run``, or ``timeout`` seconds pass; once all
    but deadline-driven alerts is stored, those are waited for ``deadline_wait`` seconds
    more at most. The last progress either way."""
    deadline = time.monotonic() + timeout
    while True:
        progress = stored_progress(reader, run)
        on_progress(progress)
        now = time.monotonic()
        if progress.stored(run):
            deadline = min(deadline, now + deadline_wait)
            if not progress.missing_alerts:
                return progress
        if now >= deadline:
            return progress
        time.sleep(0.5)


def summary(reader: Reader, run: SimulationRun) -> dict[str, Any]:
    """Counts of the run as stored: trees, tasks, delegations, credentials, alerts."""
    row: dict[str, Any] = reader.select(_SUMMARY, {"producer": run.producer_instance})[0]
    return row


def alerts_by_type(reader: Reader, run: SimulationRun) -> list[dict[str, Any]]:
    """Stored alerts of the run by type, with the number the misbehaviours called for."""
    expected = Counter(run.expected_alerts().values())
    rows = reader.select(_ALERTS_BY_TYPE, {"producer": run.producer_instance})
    for row in rows:
        row["planted"] = expected.pop(row["alert_type"], 0)
    rows.extend(
        {"alert_type": kind, "severity": "-", "alerts": 0, "trees": 0, "planted": count}
        for kind, count in expected.items()
    )
    return rows


_ALERT_IDS = f"SELECT DISTINCT alert_id FROM alerts WHERE root_task_id IN ({_ROOTS})"  # noqa: S608


def alert_ids(reader: Reader, run: SimulationRun) -> set[str]:
    """The ids of the run's stored alerts."""
    rows = reader.select(_ALERT_IDS, {"producer": run.producer_instance})
    return {str(row["alert_id"]) for row in rows}


def notified(client: AlertmanagerClient, ids: set[str], timeout: float) -> int:
    """How many of ``ids`` Alertmanager holds, waiting up to ``timeout`` seconds for all;
    -1 if it does not answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            held = {alert["labels"].get("alert_id") for alert in client.held(SOURCE)}
        except Unavailable:
            return -1
        if ids <= held or time.monotonic() >= deadline:
            return len(ids & held)
        time.sleep(0.5)


def showcase_tree(run: SimulationRun) -> str:
    """A root task worth printing: a misbehaving multi-agent delegation if there is one
    (a batch job's tree is mostly its many token rotations)."""
    expected = run.expected_alerts()
    candidates = [
        (run.trees[root].scenario != Scenario.DELEGATION, _SHOWCASE.index(alert), root)
        for root, alert in expected.items()
        if alert in _SHOWCASE
    ]
    return min(candidates)[2] if candidates else min(run.published_roots)
