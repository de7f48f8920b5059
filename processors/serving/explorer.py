"""What the web explorer asks of ClickHouse beyond trace and alerts: search, a token's
lifecycle.

Search matches ids exactly or by prefix (task ids through ``task_roots``' sorting key,
tokens through ``credentials``) and workloads by substring, newest trees first. It never
matches free text inside purposes or details: an analyst looking for evidence names an
id, and a full-text scan of every event on each keystroke would not scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from processors.serving.reader import Reader
from processors.serving.records import (
    ALERT_COLUMNS,
    Alert,
    Record,
    StoredCredential,
    TaskMatch,
    TokenEvent,
    TokenMatch,
    WorkloadMatch,
    read,
)
from processors.serving.trace import CREDENTIAL_COLUMNS, TreeNotFound

SEARCH_LIMIT = 50
_MAX_QUERY = 256

# The queries are composed of constant fragments (column lists, the tenant filter); every
# value is a bound parameter ({name:Type}): S608's injection does not apply (noqa below).
_TASKS = """
SELECT task_id, tenant, root_task_id FROM task_roots
PREWHERE startsWith(task_id, {q:String}) {tenant_filter}
ORDER BY task_id = {q:String} DESC, task_id LIMIT {limit:UInt32}"""

_TOKENS = """
SELECT token_id, task_id, tenant, root_task_id, credential_kind, state FROM credentials
WHERE startsWith(token_id, {q:String}) {tenant_filter}
ORDER BY token_id = {q:String} DESC, issued_at DESC LIMIT {limit:UInt32}"""

_WORKLOADS = """
SELECT workload_id, argMax(task_id, declared_at) AS task_id, tenant, root_task_id,
       max(declared_at) AS last_declared
FROM tasks
WHERE positionCaseInsensitive(workload_id, {q:String}) > 0 {tenant_filter}
GROUP BY workload_id, tenant, root_task_id
ORDER BY last_declared DESC LIMIT {limit:UInt32}"""

_CREDENTIAL = f"""
SELECT tenant, root_task_id, {CREDENTIAL_COLUMNS}
FROM credentials WHERE token_id = {{id:String}} {{tenant_filter}}
LIMIT 2"""  # noqa: S608

_LIFECYCLE_EVENTS = """
SELECT event_id, event_type, event_time, tool, resource, action, outcome, reason,
       revoked_by, renewed_by, expires_at, token_id, parent_token_id
FROM events
PREWHERE tenant = {tenant:String} AND root_task_id = {root:String}
WHERE token_id = {id:String} OR parent_token_id = {id:String}
ORDER BY event_time, event_id"""

_LIFECYCLE_ALERTS = f"""
SELECT {ALERT_COLUMNS} FROM alerts
PREWHERE tenant = {{tenant:String}} AND root_task_id = {{root:String}}
WHERE token_id = {{id:String}}
ORDER BY event_time, alert_id"""  # noqa: S608


class AmbiguousToken(LookupError):
    """The token id is stored in several tenants' trees: say which tenant."""


@dataclass(frozen=True, slots=True)
class SearchResult(Record):
    """A task, token or workload that search found, and the tree to open for it."""

    kind: str
    id: str
    tenant: str
    root_task_id: str
    task_id: str
    label: str


@dataclass(frozen=True, slots=True)
class Mark(Record):
    """One moment of a token's life; ``event_id`` is the event that shows it, if any."""

    time: str
    kind: str
    label: str
    event_id: str | None
    outcome: str | None


@dataclass(frozen=True, slots=True)
class TokenTimeline:
    """A token's credential and its lifecycle in time order."""

    token: StoredCredential
    timeline: list[Mark]

    def as_json(self) -> dict[str, Any]:
        """The token view's JSON: the credential, its tree, the marks."""
        return {
            "token": self.token.as_json(),
            "tenant": self.token.tenant,
            "root_task_id": self.token.root_task_id,
            "timeline": [mark.as_json() for mark in self.timeline],
        }


def _tenant_filter(tenant: str | None) -> tuple[str, dict[str, str]]:
    if tenant is None:
        return "", {}
    return "AND tenant = {tenant:String}", {"tenant": tenant}


def search(reader: Reader, text: str, tenant: str | None = None) -> list[SearchResult]:
    """Tasks, tokens and workloads matching ``text``: exact ids first, then prefixes."""
    text = text.strip()[:_MAX_QUERY]
    if not text:
        return []
    where, tenant_params = _tenant_filter(tenant)
    params: dict[str, str | int] = {**tenant_params, "q": text, "limit": SEARCH_LIMIT}
    results: list[SearchResult] = []
    for task in read(reader, TaskMatch, _TASKS.replace("{tenant_filter}", where), params):
        results.append(_result("task", task.task_id, task, task.task_id))
    for token in read(reader, TokenMatch, _TOKENS.replace("{tenant_filter}", where), params):
        label = f"{token.token_id} ({token.credential_kind}, {token.state})"
        results.append(_result("token", token.token_id, token, label))
    for workload in read(
        reader, WorkloadMatch, _WORKLOADS.replace("{tenant_filter}", where), params
    ):
        label = f"{workload.workload_id} in {workload.root_task_id} at {workload.last_declared}"
        results.append(_result("workload", workload.workload_id, workload, label))
    return results[:SEARCH_LIMIT]


def _result(
    kind: str, result_id: str, match: TaskMatch | TokenMatch | WorkloadMatch, label: str
) -> SearchResult:
    return SearchResult(kind, result_id, match.tenant, match.root_task_id, match.task_id, label)


def token_timeline(reader: Reader, token_id: str, tenant: str | None = None) -> TokenTimeline:
    """A token's credential row and its lifecycle: issued, used, renewed, rotated, revoked,
    alerted, expiring, in time order."""
    where, params = _tenant_filter(tenant)
    sql = _CREDENTIAL.replace("{tenant_filter}", where)
    stored = read(reader, StoredCredential, sql, {**params, "id": token_id})
    if not stored:
        raise TreeNotFound(f"no stored credential has token id {token_id}")
    if len(stored) > 1:
        raise AmbiguousToken(f"token {token_id} is in several tenants' trees: name the tenant")
    token = stored[0]
    tree = {"tenant": token.tenant, "root": token.root_task_id, "id": token_id}
    timeline = [
        _event_mark(event, token_id) for event in read(reader, TokenEvent, _LIFECYCLE_EVENTS, tree)
    ]
    for alert in read(reader, Alert, _LIFECYCLE_ALERTS, tree):
        timeline.append(Mark(alert.event_time, "ALERT", alert.alert_type, None, alert.severity))
    if token.credential.expires_at:
        timeline.append(Mark(token.credential.expires_at, "EXPIRES", "expires", None, None))
    timeline.sort(key=lambda mark: mark.time)
    return TokenTimeline(token, timeline)


def _event_mark(event: TokenEvent, token_id: str) -> Mark:
    kind, time, event_id = event.event_type, event.event_time, event.event_id
    if kind == "CREDENTIAL_ISSUED" and event.parent_token_id == token_id:
        return Mark(time, "ROTATED", f"rotated to {event.token_id}", event_id, None)
    if kind == "CREDENTIAL_ISSUED":
        return Mark(time, "ISSUED", "issued", event_id, None)
    if kind == "CREDENTIAL_REVOKED":
        label = f"revoked by {event.revoked_by}: {event.reason}"
        return Mark(time, "REVOKED", label, event_id, None)
    if kind == "CREDENTIAL_RENEWED":
        label = f"renewed by {event.renewed_by} until {event.expires_at}"
        return Mark(time, "RENEWED", label, event_id, None)
    label = f"{event.tool} {event.action} {event.resource}"
    return Mark(time, "ACCESS", label, event_id, event.outcome)
