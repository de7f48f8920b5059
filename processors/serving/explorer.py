"""What the web explorer asks of ClickHouse beyond trace and alerts: search, a token's
lifecycle.

Search matches ids exactly or by prefix (task ids through ``task_roots``' sorting key,
tokens through ``credentials``) and workloads by substring, newest trees first. It never
matches free text inside purposes or details: an analyst looking for evidence names an
id, and a full-text scan of every event on each keystroke would not scale.
"""

from __future__ import annotations

from typing import Any

from processors.serving.reader import Reader
from processors.serving.trace import ALERT_COLUMNS, CREDENTIAL_COLUMNS, TreeNotFound
from processors.storage.backend import Row

SEARCH_LIMIT = 50
_MAX_QUERY = 256

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
LIMIT 2"""

_TOKEN_EVENTS = """
SELECT event_id, event_type, event_time, tool, resource, action, outcome, reason,
       revoked_by, token_id, parent_token_id
FROM events
PREWHERE tenant = {tenant:String} AND root_task_id = {root:String}
WHERE token_id = {id:String} OR parent_token_id = {id:String}
ORDER BY event_time, event_id"""

_TOKEN_ALERTS = f"""
SELECT {ALERT_COLUMNS} FROM alerts
PREWHERE tenant = {{tenant:String}} AND root_task_id = {{root:String}}
WHERE token_id = {{id:String}}
ORDER BY event_time, alert_id"""


class AmbiguousToken(LookupError):
    """The token id is stored in several tenants' trees: say which tenant."""


def _tenant_filter(tenant: str | None) -> tuple[str, dict[str, str]]:
    if tenant is None:
        return "", {}
    return "AND tenant = {tenant:String}", {"tenant": tenant}


def search(reader: Reader, text: str, tenant: str | None = None) -> list[dict[str, Any]]:
    """Tasks, tokens and workloads matching ``text``: exact ids first, then prefixes."""
    text = text.strip()[:_MAX_QUERY]
    if not text:
        return []
    where, tenant_params = _tenant_filter(tenant)
    params: dict[str, Any] = {**tenant_params, "q": text, "limit": SEARCH_LIMIT}
    results: list[dict[str, Any]] = []
    for row in reader.select(_TASKS.replace("{tenant_filter}", where), params):
        results.append(_result("task", row["task_id"], row, row["task_id"]))
    for row in reader.select(_TOKENS.replace("{tenant_filter}", where), params):
        label = f"{row['token_id']} ({row['credential_kind']}, {row['state']})"
        results.append(_result("token", row["token_id"], row, label))
    for row in reader.select(_WORKLOADS.replace("{tenant_filter}", where), params):
        label = f"{row['workload_id']} in {row['root_task_id']} at {row['last_declared']}"
        results.append(_result("workload", row["workload_id"], row, label))
    return results[:SEARCH_LIMIT]


def _result(kind: str, result_id: str, row: Row, label: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "id": result_id,
        "tenant": row["tenant"],
        "root_task_id": row["root_task_id"],
        "task_id": row["task_id"],
        "label": label,
    }


def token_timeline(reader: Reader, token_id: str, tenant: str | None = None) -> dict[str, Any]:
    """A token's credential row and its lifecycle: issued, used, rotated, revoked, alerted,
    expiring, in time order."""
    where, params = _tenant_filter(tenant)
    rows = reader.select(_CREDENTIAL.replace("{tenant_filter}", where), {**params, "id": token_id})
    if not rows:
        raise TreeNotFound(f"no stored credential has token id {token_id}")
    if len(rows) > 1:
        raise AmbiguousToken(f"token {token_id} is in several tenants' trees: name the tenant")
    token = rows[0]
    tree = {"tenant": token["tenant"], "root": token["root_task_id"], "id": token_id}
    timeline = [_event_mark(row, token_id) for row in reader.select(_TOKEN_EVENTS, tree)]
    for alert in reader.select(_TOKEN_ALERTS, tree):
        timeline.append(
            _mark(alert["event_time"], "ALERT", alert["alert_type"], None, alert["severity"])
        )
    if token["expires_at"]:
        timeline.append(_mark(token["expires_at"], "EXPIRES", "expires", None, None))
    timeline.sort(key=lambda mark: mark["time"])
    return {
        "token": token,
        "tenant": token["tenant"],
        "root_task_id": token["root_task_id"],
        "timeline": timeline,
    }


def _event_mark(row: Row, token_id: str) -> dict[str, Any]:
    kind = row["event_type"]
    if kind == "CREDENTIAL_ISSUED" and row["parent_token_id"] == token_id:
        return _mark(row["event_time"], "ROTATED", f"rotated to {row['token_id']}", row, None)
    if kind == "CREDENTIAL_ISSUED":
        return _mark(row["event_time"], "ISSUED", "issued", row, None)
    if kind == "CREDENTIAL_REVOKED":
        label = f"revoked by {row['revoked_by']}: {row['reason']}"
        return _mark(row["event_time"], "REVOKED", label, row, None)
    label = f"{row['tool']} {row['action']} {row['resource']}"
    return _mark(row["event_time"], "ACCESS", label, row, row["outcome"])


def _mark(time: str, kind: str, label: str, row: Row | None, outcome: str | None) -> dict[str, Any]:
    return {
        "time": time,
        "kind": kind,
        "label": label,
        "event_id": row["event_id"] if row else None,
        "outcome": outcome,
    }
