"""``custody trace`` latency over a large store (10M events by default), on chdb.

**Fill (timed, reported).** A fresh, migrated chdb directory is filled without Kafka:
ClickHouse generates the rows itself (``INSERT INTO ... SELECT ... FROM numbers(...)``),
in chunks of about 1M events. The shape follows what the pipeline stores:

- trees of 50-100 events (about 133k trees for 10M events), each of 4-7 tasks in a binary
  delegation tree (depth 0-2), in one of five tenants, spread over 30 days of event time;
- per task: TASK_DECLARED, AUTHZ_DECISION, CREDENTIAL_ISSUED, one DELEGATION per child,
  ACCESSes (about 55% of all events), CREDENTIAL_REVOKED, TASK_COMPLETED; an APPROVAL in
  every 20th tree, a BREAK_GLASS in every 50th; one token per task, unique event ids;
- ``task_roots`` is filled by its materialized view on ``events`` (checked: it must know
  every task); ``tasks`` (DECLARED then COMPLETED, two versions per task), ``credentials``
  (ACTIVE then REVOKED), ``delegations`` (one per child task) and ``alerts`` (about one
  per ten trees) get the matching state rows, so FINAL has versions to collapse.

**Latency.** ``trace(BackendReader(backend), task_id)`` (what ``custody trace ID`` runs
when it opens the directory itself) for :data:`TRACES` random task ids, a quarter of them
roots, after :data:`WARMUP` untimed traces; p50 and p99 in ms; goal p50 <= 50 ms. The time
of each of its queries is kept too (by table), to show which one dominates. Then the same
through the query API (``QueryApi`` on a free port, ``HttpReader``: what ``custody trace``
does while ingest+serve owns the directory) for :data:`HTTP_TRACES` ids.

``CUSTODY_BENCH_TRACE_EVENTS`` (default 10,000,000) sets the number of events.
"""

from __future__ import annotations

import random
import re
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from processors.serve import QueryApi
from processors.serving.reader import BackendReader, HttpReader, Reader
from processors.serving.trace import trace
from processors.storage.backend import Backend, ChdbBackend, Row
from processors.storage.migrations import migrate
from processors.storage.target import ChdbTarget
from producers.settings import Settings
from tests.bench.results import Entry, entry, env_count
from tests.support.measure import percentile

DEFAULT_EVENTS = 10_000_000
MEAN_TREE_EVENTS = 75
"""Trees have 50 + (hash % 51) events: 75 on average."""
CHUNK_EVENTS = 1_000_000
TRACES = 200
HTTP_TRACES = 100
WARMUP = 10
ROOT_SHARE = 4
"""Every ROOT_SHARE-th traced id is a root task."""
SPAN_DAYS = 30
GOAL_P50_MS = 50.0
SEED = 20261129

_TENANTS = "['acme-prod', 'acme-staging', 'globex-eu', 'initech-us', 'umbrella-ap']"
_AGENTS = "['planner', 'researcher', 'coder', 'reviewer', 'data-analyst']"


def _task_id(tree: str, task: str) -> str:
    """SQL: the id of task number ``task`` of tree number ``tree`` (both hashed as UInt64,
    so every statement, and the sampling of ids, names a task the same way)."""
    return f"UUIDNumToString(sipHash128('task', toUInt64({tree}), toUInt64({task})))"


def _at(index: str) -> str:
    """SQL: the event time of event number ``index`` of a tree."""
    return (
        "fromUnixTimestamp64Micro(toInt64({base_us} + tree * {spacing_us} + "
        f"({index}) * 150000), 'UTC')"
    )


# One row per task: the shape every statement below shares. Tree number ``tree`` has
# 50 + hash % 51 events and 4 + tree % 4 tasks; event i belongs to task i % tasks, as its
# (i / tasks)-th event, so task k has m events. Task k's parent is (k - 1) / 2. The
# placeholders in braces are filled per chunk by _render.
_PER_TASK = f"""
    SELECT tree, size, tasks, tenant, k,
           {_task_id("tree", "0")} AS root_task_id,
           {_task_id("tree", "k")} AS task_id,
           if(k = 0, NULL, {_task_id("tree", "intDiv(k - 1, 2)")}) AS parent_task_id,
           toInt32(floor(log2(k + 1))) AS depth,
           intDiv(size - 1 - k, tasks) + 1 AS m,
           {_AGENTS}[1 + if(k = 0, 0, 1 + (k + tree) % 4)] AS agent,
           concat('spiffe://', tenant, '.example/ns/agents/sa/', agent) AS workload,
           concat(agent, '-', lower(hex(sipHash64('instance', tree, k)))) AS instance,
           ['alice@acme.example', 'bob@acme.example', 'carol@globex.example']
               [1 + tree % 3] AS human,
           concat('tok-', lower(hex(sipHash128('tok', tree, k)))) AS token,
           concat('dec-', lower(hex(sipHash128('dec', tree, k)))) AS decision_ref,
           concat('dec-', lower(hex(sipHash128('dec', tree, intDiv(k - 1, 2)))))
               AS parent_decision,
           lower(hex(sipHash128('trace', tree, k))) AS trace_id,
           ['repo:read', 'orders:read', 'reports:read'] AS task_scopes,
           {_at("k")} AS t_declared,
           {_at("k + 2 * tasks")} AS t_issued,
           {_at("k + (m - 2) * tasks")} AS t_revoked,
           {_at("k + (m - 1) * tasks")} AS t_completed
    FROM (
        SELECT toUInt64(number) AS tree,
               toUInt64(50 + cityHash64(number, 'size') % 51) AS size,
               toUInt64(4 + number % 4) AS tasks,
               {_TENANTS}[1 + cityHash64(number, 'tenant') % {{tenants}}] AS tenant
        FROM numbers({{start}}, {{count}})
    )
    ARRAY JOIN range(tasks) AS k
"""

_EVENTS = f"""
INSERT INTO events (
    event_id, event_type, event_time, tenant, producer, root_task_id, task_id,
    parent_task_id, depth, actor_workload_id, actor_kind, actor_instance_id,
    actor_on_behalf_of, producer_instance, seq, prev_hash, attributes, purpose,
    requested_scopes, deadline, decision_id, policy_engine, policy_id, policy_version,
    decision, resource, action, data_scope, reasons, context, token_id, token_subject,
    credential_kind, audience, scopes, issued_at, expires_at, parent_token_id, tool,
    outcome, detail, delegator, delegatee, child_task_id, approval_id, approver, approves,
    reason, break_glass_id, standing_access_unavailable, revoked_by)
SELECT
    UUIDNumToString(sipHash128('event', tree, i)) AS event_id,
    type AS event_type,
    {_at("i")} AS event_time,
    tenant,
    multiIf(type IN ('AUTHZ_DECISION'), 'policy.opa-gateway',
            type IN ('CREDENTIAL_ISSUED', 'CREDENTIAL_REVOKED'), 'broker.jit-vault',
            type IN ('APPROVAL', 'BREAK_GLASS'), 'portal.approvals', 'runtime.agentd')
        AS producer,
    root_task_id, task_id, parent_task_id, depth,
    multiIf(producer = 'policy.opa-gateway', concat('spiffe://', tenant, '.example/opa'),
            producer = 'broker.jit-vault', concat('spiffe://', tenant, '.example/vault'),
            producer = 'portal.approvals', concat('user:', human), workload)
        AS actor_workload_id,
    multiIf(producer = 'policy.opa-gateway', 'POLICY_ENGINE',
            producer = 'broker.jit-vault', 'BROKER',
            producer = 'portal.approvals', 'HUMAN', 'AGENT') AS actor_kind,
    multiIf(producer = 'policy.opa-gateway', 'opa-0', producer = 'broker.jit-vault', 'vault-1',
            producer = 'portal.approvals', 'portal-2', instance) AS actor_instance_id,
    if(actor_kind = 'AGENT', human, NULL) AS actor_on_behalf_of,
    concat(producer, '/', toString(tree % 16)) AS producer_instance,
    toInt64(tree * 100 + i + 1) AS seq,
    concat(lower(hex(sipHash128('hash', tree, i))), lower(hex(sipHash128('hash2', tree, i))))
        AS prev_hash,
    map('env', splitByChar('-', tenant)[2], 'trace_id', trace_id) AS attributes,
    if(type = 'TASK_DECLARED',
       concat('Triage the payment failures reported in incident ', toString(1000 + tree % 9000),
              ' and propose a fix'), NULL) AS purpose,
    if(type = 'TASK_DECLARED', task_scopes, []) AS requested_scopes,
    if(type = 'TASK_DECLARED', event_time + INTERVAL 2 HOUR, NULL) AS deadline,
    if(type IN ('AUTHZ_DECISION', 'CREDENTIAL_ISSUED', 'ACCESS', 'DELEGATION'), decision_ref,
       NULL)
        AS decision_id,
    if(type = 'AUTHZ_DECISION', 'opa-gateway', NULL) AS policy_engine,
    if(type = 'AUTHZ_DECISION', 'agents.tool_access', NULL) AS policy_id,
    if(type = 'AUTHZ_DECISION', '2026.11.3', NULL) AS policy_version,
    if(type = 'AUTHZ_DECISION', 'ALLOW', NULL) AS decision,
    if(type IN ('AUTHZ_DECISION', 'ACCESS'),
       ['github://acme/payments-service/src', 'postgres://orders-db/public.orders',
        's3://acme-reports/2026/q4/revenue.parquet'][1 + (i + tree) % 3], NULL) AS resource,
    if(type IN ('AUTHZ_DECISION', 'ACCESS'), ['read', 'select', 'get'][1 + (i + tree) % 3], NULL)
        AS action,
    multiIf(type = 'AUTHZ_DECISION', task_scopes, type = 'ACCESS',
            [task_scopes[1 + (i + tree) % 3]], []) AS data_scope,
    if(type = 'AUTHZ_DECISION',
       ['purpose matches requested scopes', 'delegation within parent scopes'], []) AS reasons,
    if(type = 'AUTHZ_DECISION', map('source_ip', '10.42.7.19', 'risk', 'low'), map())
        AS context,
    if(type IN ('CREDENTIAL_ISSUED', 'ACCESS', 'CREDENTIAL_REVOKED'), token, NULL) AS token_id,
    if(type = 'CREDENTIAL_ISSUED', workload, NULL) AS token_subject,
    if(type = 'CREDENTIAL_ISSUED', ['JWT', 'DB_CREDENTIAL', 'CLOUD_SESSION'][1 + k % 3], NULL)
        AS credential_kind,
    if(type = 'CREDENTIAL_ISSUED', ['github', 'postgres', 's3'][1 + tree % 3], NULL) AS audience,
    multiIf(type = 'CREDENTIAL_ISSUED', task_scopes, type = 'DELEGATION',
            arraySlice(task_scopes, 1, 2), type = 'APPROVAL', ['orders:read'], []) AS scopes,
    if(type = 'CREDENTIAL_ISSUED', event_time, NULL) AS issued_at,
    multiIf(type = 'CREDENTIAL_ISSUED', event_time + INTERVAL 15 MINUTE,
            type IN ('APPROVAL', 'BREAK_GLASS'), event_time + INTERVAL 1 HOUR, NULL)
        AS expires_at,
    CAST(NULL AS Nullable(String)) AS parent_token_id,
    if(type = 'ACCESS',
       ['github.contents', 'postgres.query', 's3.get_object'][1 + (i + tree) % 3], NULL) AS tool,
    multiIf(type = 'ACCESS', if(cityHash64(tree, i) % 20 = 0, 'FAILURE', 'SUCCESS'),
            type = 'TASK_COMPLETED', if(tree % 10 = 0, 'FAILED', 'SUCCEEDED'), NULL) AS outcome,
    multiIf(type = 'ACCESS',
            concat(toString(1 + cityHash64(tree, i) % 5000), ' records returned in ',
                   toString(3 + cityHash64(i, tree) % 900), ' ms'),
            type = 'TASK_COMPLETED', 'finished within its deadline', NULL) AS detail,
    if(type = 'DELEGATION', workload, NULL) AS delegator,
    if(type = 'DELEGATION',
       concat('spiffe://', tenant, '.example/ns/agents/sa/', {_AGENTS}[2 + (child + tree) % 4]),
       NULL) AS delegatee,
    if(type = 'DELEGATION', {_task_id("tree", "child")}, NULL)
        AS child_task_id,
    if(type = 'APPROVAL', concat('appr-', lower(hex(sipHash64('approval', tree)))), NULL)
        AS approval_id,
    if(type = 'APPROVAL', 'dave@acme.example', NULL) AS approver,
    if(type = 'APPROVAL', task_id, NULL) AS approves,
    multiIf(type = 'APPROVAL', 'production read for the incident',
            type = 'BREAK_GLASS', 'payments outage: production database read needed',
            type = 'CREDENTIAL_REVOKED', 'TASK_ENDED', NULL) AS reason,
    if(type = 'BREAK_GLASS', concat('bg-', lower(hex(sipHash64('bg', tree)))), NULL)
        AS break_glass_id,
    if(type = 'BREAK_GLASS', 'on-call role is not provisioned for this tenant', NULL)
        AS standing_access_unavailable,
    if(type = 'CREDENTIAL_REVOKED', concat('spiffe://', tenant, '.example/vault'), NULL)
        AS revoked_by
FROM (
    SELECT *,
           k + j * tasks AS i,
           if(j = 3, 2 * k + 1, 2 * k + 2) AS child,
           multiIf(j = 0, 'TASK_DECLARED', j = 1, 'AUTHZ_DECISION', j = 2, 'CREDENTIAL_ISSUED',
                   j = m - 1, 'TASK_COMPLETED', j = m - 2, 'CREDENTIAL_REVOKED',
                   j = 3 AND 2 * k + 1 < tasks, 'DELEGATION',
                   j = 4 AND 2 * k + 2 < tasks, 'DELEGATION',
                   j = 5 AND k = 0 AND tree % 20 = 0, 'APPROVAL',
                   j = 5 AND k = 0 AND tree % 50 = 7, 'BREAK_GLASS',
                   'ACCESS') AS type
    FROM ({_PER_TASK})
    ARRAY JOIN range(m) AS j
)
"""

_TASKS = f"""
INSERT INTO tasks
SELECT tenant, root_task_id, task_id, parent_task_id, depth, workload, 'AGENT', instance,
       human, concat('Triage the payment failures reported in incident ',
                     toString(1000 + tree % 9000), ' and propose a fix'),
       task_scopes, if(v = 2, 'DECLARED', 'COMPLETED'),
       if(v = 2, NULL, if(tree % 10 = 0, 'FAILED', 'SUCCEEDED')),
       t_declared, if(v = 2, NULL, t_completed), v, if(v = 2, t_declared, t_completed),
       [UUIDNumToString(sipHash128('event', tree, k))]
FROM ({_PER_TASK})
ARRAY JOIN [2, 3] AS v
"""

_CREDENTIALS = f"""
INSERT INTO credentials
SELECT tenant, root_task_id, token, task_id, workload,
       ['JWT', 'DB_CREDENTIAL', 'CLOUD_SESSION'][1 + k % 3],
       ['github', 'postgres', 's3'][1 + tree % 3],
       task_scopes, t_issued, t_issued + INTERVAL 15 MINUTE, decision_ref, NULL,
       if(v = 1, 'ACTIVE', 'REVOKED'), if(v = 1, NULL, t_revoked),
       if(v = 1, NULL, 'TASK_ENDED'),
       if(v = 1, NULL, concat('spiffe://', tenant, '.example/vault')),
       v, if(v = 1, t_issued, t_revoked),
       [UUIDNumToString(sipHash128('event', tree, k + 2 * tasks))]
FROM ({_PER_TASK})
ARRAY JOIN [1, 2] AS v
"""

_DELEGATIONS = f"""
INSERT INTO delegations
SELECT tenant, root_task_id, task_id, assumeNotNull(parent_task_id),
       concat('spiffe://', tenant, '.example/ns/agents/sa/', {_AGENTS}[1 + if(intDiv(k - 1, 2) = 0,
              0, 1 + (intDiv(k - 1, 2) + tree) % 4)]),
       workload, arraySlice(task_scopes, 1, 2), parent_decision, t_declared, 1, t_declared,
       [UUIDNumToString(sipHash128('delegation', tree, k))]
FROM ({_PER_TASK})
WHERE k > 0
"""

_ALERTS = f"""
INSERT INTO alerts (alert_id, alert_type, severity, tenant, root_task_id, task_id, token_id,
                    workload_id, event_time, detected_at, evidence_event_ids, detail)
SELECT lower(hex(sipHash128('alert', tree))),
       ['UNREVOKED_TOKEN', 'SCOPE_ESCALATION', 'TOKEN_USED_AFTER_EXPIRY',
        'UNAUTHORIZED_ACCESS'][1 + tree % 4],
       ['HIGH', 'MEDIUM', 'HIGH', 'CRITICAL'][1 + tree % 4],
       tenant, root_task_id, task_id, token, workload, t_completed,
       t_completed + INTERVAL 5 MINUTE, [UUIDNumToString(sipHash128('event', tree, k))],
       'found by the benchmark fill'
FROM ({_PER_TASK})
WHERE tree % 10 = 3 AND k = 1
"""

_FILLS = (
    ("events", _EVENTS),
    ("tasks", _TASKS),
    ("credentials", _CREDENTIALS),
    ("delegations", _DELEGATIONS),
    ("alerts", _ALERTS),
)


# ---- fill -----------------------------------------------------------------------------


def fill(backend: Backend, events: int, tenants: int = 5) -> tuple[int, float, dict[str, int]]:
    """Fill every table for about ``events`` events, their trees spread over the first
    ``tenants`` of the five tenants; returns (trees, seconds, row counts)."""
    trees = max(1, events // MEAN_TREE_EVENTS)
    per_chunk = max(1, CHUNK_EVENTS // MEAN_TREE_EVENTS)
    base = datetime.now(UTC) - timedelta(days=SPAN_DAYS + 1)
    spacing_us = SPAN_DAYS * 86_400 * 1_000_000 // trees
    started = time.perf_counter()
    for start in range(0, trees, per_chunk):
        count = min(per_chunk, trees - start)
        values = {
            "start": start,
            "count": count,
            "base_us": int(base.timestamp() * 1_000_000),
            "spacing_us": spacing_us,
            "tenants": tenants,
        }
        for _, statement in _FILLS:
            backend.execute(_render(statement, values))
        done = start + count
        if done == trees or (done // per_chunk) % 3 == 0:
            print(f"trace: filled {done:,} of {trees:,} trees")
    seconds = time.perf_counter() - started
    counts = {
        table: int(backend.select(f"SELECT count() AS n FROM {table}")[0]["n"])
        for table in ("events", "task_roots", "tasks", "credentials", "delegations", "alerts")
    }
    return trees, seconds, counts


def _render(statement: str, values: Mapping[str, int]) -> str:
    """The statement with ``{name}`` placeholders filled (the SQL has no other braces)."""
    return re.sub(r"\{(\w+)\}", lambda match: str(values[match[1]]), statement)


def wait_for_merges(backend: Backend, timeout: float = 60.0) -> float:
    """Wait until no merge runs (as a store that has been up a while); returns seconds."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if not int(backend.select("SELECT count() AS n FROM system.merges")[0]["n"]):
            break
        time.sleep(0.5)
    return time.perf_counter() - started


def active_parts(backend: Backend) -> dict[str, int]:
    rows = backend.select(
        "SELECT table, count() AS n FROM system.parts WHERE active AND database = "
        "currentDatabase() GROUP BY table ORDER BY table"
    )
    return {str(row["table"]): int(row["n"]) for row in rows}


def sample_task_ids(backend: Backend, trees: int, count: int) -> list[str]:
    """``count`` task ids of random trees; every ROOT_SHARE-th a root, the rest not."""
    rng = random.Random(SEED)
    picks = []
    for index in range(count):
        tree = rng.randrange(trees)
        tasks = 4 + tree % 4
        task = 0 if index % ROOT_SHARE == 0 else rng.randrange(1, tasks)
        picks.append(f"({tree}, {task})")
    rows = backend.select(
        f"SELECT {_task_id('p.1', 'p.2')} AS id FROM (SELECT arrayJoin([{', '.join(picks)}]) AS p)"
    )
    return [str(row["id"]) for row in rows]


# ---- timing ---------------------------------------------------------------------------


class TimedReader:
    """A reader that keeps the time of each query, by the table it reads."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.times: dict[str, list[float]] = defaultdict(list)

    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        started = time.perf_counter()
        rows = self.reader.select(sql, params)
        match = re.search(r"\bFROM\s+(\w+)", sql)
        self.times[match[1] if match else "?"].append((time.perf_counter() - started) * 1000)
        return rows


def time_traces(reader: Reader, ids: list[str]) -> tuple[list[float], dict[str, float]]:
    """Sorted latencies (ms) of ``trace`` for each id, and the median ms of each query."""
    timed = TimedReader(reader)
    for task_id in ids[:WARMUP]:
        trace(timed, task_id)
    timed.times.clear()
    latencies = []
    for task_id in ids[WARMUP:]:
        started = time.perf_counter()
        result = trace(timed, task_id)
        latencies.append((time.perf_counter() - started) * 1000)
        if not result.tasks or not result.credentials:
            raise RuntimeError(f"trace of {task_id} found no tasks or credentials: {result}")
    queries = {table: round(statistics.median(ms), 2) for table, ms in timed.times.items()}
    return sorted(latencies), queries


def _summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p90_ms": round(percentile(latencies, 0.9), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(latencies[-1], 2),
    }


def over_http(backend: Backend, home: Path, ids: list[str]) -> tuple[list[float], dict[str, float]]:
    """The same traces through the query API, as the CLI does while ingest+serve runs."""
    settings = Settings(home=home, serve_port=0)
    api = QueryApi(settings, backend)
    api.start()
    try:
        return time_traces(HttpReader(api.address), ids)
    finally:
        api.stop()


# ---- run ------------------------------------------------------------------------------


def optimize(backend: Backend) -> float:
    """Merge every table down to one part per partition; returns seconds."""
    started = time.perf_counter()
    for table in ("events", "task_roots", "tasks", "credentials", "delegations", "alerts"):
        backend.execute(f"OPTIMIZE TABLE {table} FINAL")
    return time.perf_counter() - started


@dataclass
class Filled:
    """A filled store: its backend, the trees and rows made, how long the fill and the
    merges after it took, and the active parts then."""

    backend: ChdbBackend
    trees: int
    fill_seconds: float
    counts: dict[str, int]
    merge_wait: float
    parts: dict[str, int]


@contextmanager
def filled(directory: Path, events: int, tenants: int = 5) -> Iterator[Filled]:
    """A fresh, migrated chdb store in ``directory`` filled with about ``events`` events
    over ``tenants`` tenants, merged as far as ClickHouse goes by itself; closed after."""
    target = ChdbTarget(directory / "chdb")
    backend = ChdbBackend(target)
    try:
        migrate(target, 400, backend)
        trees, fill_seconds, counts = fill(backend, events, tenants=tenants)
        merge_wait = wait_for_merges(backend)
        yield Filled(backend, trees, fill_seconds, counts, merge_wait, active_parts(backend))
    finally:
        backend.close()


def run() -> list[Entry]:
    """Fill; time traces straight on the backend and through the query API; merge every
    table and time the direct traces again."""
    events = env_count("CUSTODY_BENCH_TRACE_EVENTS", DEFAULT_EVENTS)
    print(f"trace: filling about {events:,} events")
    with tempfile.TemporaryDirectory() as tmp, filled(Path(tmp), events) as store:
        backend, trees, fill_seconds, counts = (
            store.backend,
            store.trees,
            store.fill_seconds,
            store.counts,
        )
        merge_wait, parts = store.merge_wait, store.parts
        print(
            f"trace: {counts['events']:,} events in {trees:,} trees stored in "
            f"{fill_seconds:.1f} s ({counts['events'] / fill_seconds:,.0f} events/s); "
            f"rows {counts}; active parts {parts}"
        )
        missing = counts_missing_roots(backend)
        if missing:
            raise RuntimeError(f"task_roots misses {missing} tasks of the tasks table")
        ids = sample_task_ids(backend, trees, WARMUP + TRACES)
        direct, direct_queries = time_traces(BackendReader(backend), ids)
        print(f"trace: backend {_summary(direct)}; median ms per query {direct_queries}")
        http_ids = ids[: WARMUP + HTTP_TRACES]
        http, http_queries = over_http(backend, Path(tmp) / "home", http_ids)
        print(f"trace: http {_summary(http)}; median ms per query {http_queries}")
        optimize_seconds = optimize(backend)
        merged_parts = active_parts(backend)
        merged, merged_queries = time_traces(BackendReader(backend), ids)
        print(
            f"trace: merged in {optimize_seconds:.1f} s to {merged_parts}: backend "
            f"{_summary(merged)}; median ms per query {merged_queries}"
        )
    return entries(
        trees,
        fill_seconds,
        merge_wait,
        counts,
        parts,
        (direct, direct_queries),
        (http, http_queries),
        (merged, merged_queries, merged_parts, optimize_seconds),
    )


def entries(
    trees: int,
    fill_seconds: float,
    merge_wait: float,
    counts: dict[str, int],
    parts: dict[str, int],
    direct: tuple[list[float], dict[str, float]],
    http: tuple[list[float], dict[str, float]],
    merged: tuple[list[float], dict[str, float], dict[str, int], float],
) -> list[Entry]:
    store: dict[str, Any] = {
        "events": counts["events"],
        "trees": trees,
        "rows": counts,
        "fill_seconds": round(fill_seconds, 1),
        "merge_wait_seconds": round(merge_wait, 1),
    }

    def latency(found: list[float], queries: dict[str, float], **more: Any) -> dict[str, Any]:
        return {
            **_summary(found),
            "traces": len(found),
            "root_share": 1 / ROOT_SHARE,
            "median_ms_per_query": queries,
            "goal": f"p50 <= {GOAL_P50_MS:g} ms",
            "goal_met": percentile(found, 0.5) <= GOAL_P50_MS,
            **more,
        }

    direct_detail = latency(*direct, **store, active_parts=parts)
    http_detail = latency(*http, active_parts=parts)
    merged_found, merged_queries, merged_parts, optimize_seconds = merged
    merged_detail = latency(
        merged_found,
        merged_queries,
        active_parts=merged_parts,
        optimize_seconds=round(optimize_seconds, 1),
    )
    return [
        entry("trace.latency_p50", percentile(direct[0], 0.5), "ms", detail=direct_detail),
        entry("trace.latency_p99", percentile(direct[0], 0.99), "ms", detail=direct_detail),
        entry("trace.http_latency_p50", percentile(http[0], 0.5), "ms", detail=http_detail),
        entry("trace.http_latency_p99", percentile(http[0], 0.99), "ms", detail=http_detail),
        entry(
            "trace.latency_p50_merged", percentile(merged_found, 0.5), "ms", detail=merged_detail
        ),
        entry("trace.fill", counts["events"] / fill_seconds, "events/s", detail=store),
    ]


def counts_missing_roots(backend: Backend) -> int:
    """Tasks of the tasks table that task_roots (filled by its view on events) misses."""
    rows = backend.select(
        "SELECT count() AS n FROM (SELECT DISTINCT task_id FROM tasks) AS t "
        "LEFT ANTI JOIN (SELECT DISTINCT task_id FROM task_roots) AS r USING task_id"
    )
    return int(rows[0]["n"])
