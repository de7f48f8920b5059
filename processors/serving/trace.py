"""``custody trace``: one custody tree from the stored tables, as a
:class:`~processors.serving.records.CustodyTree` (its ``as_json`` is the documented JSON object).

Tasks, delegations and credentials come from the correlator's state tables (latest
version of each); decisions, accesses, approvals and break-glass from the raw events; and
the tree's alerts. A credential stored as ACTIVE whose ``expires_at`` has passed is
reported EXPIRED: expiry needs no event.

Every query names its tree (or, in ``task_roots``, its task) in ``PREWHERE``. Readers run
with ``final = 1``, and ClickHouse does not move conditions to PREWHERE under FINAL on its
own, so without it FINAL reads and merges every column of the selected granules before
filtering (on 10M events the events query took 110 ms instead of 19). Filtering first is
exact here: those columns lead each table's sorting key, so the rows FINAL collapses
together always pass or fail the filter together.
"""

from __future__ import annotations

from processors.serving.reader import Reader
from processors.serving.records import (
    ALERT_COLUMNS,
    Access,
    Alert,
    Approval,
    BreakGlass,
    Credential,
    CustodyTree,
    Decision,
    Delegation,
    Task,
    TreeKey,
    events_of,
    read,
)

# The queries are composed of constant fragments (column lists, the tree's filter); every
# value is a bound parameter ({name:Type}): S608's injection does not apply (noqa below).
_TREE = "tenant = {tenant:String} AND root_task_id = {root:String}"

_TASKS = f"""
SELECT task_id, parent_task_id, depth, workload_id, actor_kind, instance_id, on_behalf_of,
       purpose, requested_scopes, status, outcome, declared_at, completed_at
FROM tasks PREWHERE {_TREE}
ORDER BY depth, declared_at, task_id"""  # noqa: S608

_DELEGATIONS = f"""
SELECT delegator, delegatee, parent_task_id, child_task_id, scopes, decision_id, delegated_at
FROM delegations PREWHERE {_TREE}
ORDER BY delegated_at, child_task_id"""  # noqa: S608

# A credential's columns as trace reports them: stored ACTIVE past its expiry is EXPIRED.
CREDENTIAL_COLUMNS = """token_id, task_id, token_subject, credential_kind, audience, scopes,
       issued_at, expires_at, decision_id, parent_token_id,
       if(state = 'ACTIVE' AND expires_at <= now64(6), 'EXPIRED', state) AS state,
       revoked_at, revocation_reason, revoked_by"""

_CREDENTIALS = f"""
SELECT {CREDENTIAL_COLUMNS}
FROM credentials PREWHERE {_TREE}
ORDER BY issued_at, token_id"""  # noqa: S608

_EVENTS = f"""
SELECT event_id, event_type, event_time, task_id, actor_workload_id AS workload_id,
       actor_instance_id AS instance_id, decision_id, policy_engine, policy_id,
       policy_version, decision, resource, action, data_scope, reasons, token_id, tool,
       outcome, detail, approval_id, approver, approves, scopes, expires_at, reason,
       break_glass_id, standing_access_unavailable
FROM events
PREWHERE {_TREE}
WHERE event_type IN ('AUTHZ_DECISION', 'ACCESS', 'APPROVAL', 'BREAK_GLASS')
ORDER BY event_time, event_id"""  # noqa: S608

_ALERTS = f"""
SELECT {ALERT_COLUMNS}
FROM alerts PREWHERE {_TREE}
ORDER BY event_time, alert_id"""  # noqa: S608

_TREES_OF_TASK = (
    "SELECT DISTINCT tenant, root_task_id FROM task_roots PREWHERE task_id = {id:String} LIMIT 10"
)
_TREES_OF_TASK_IN_TENANT = (
    "SELECT DISTINCT tenant, root_task_id FROM task_roots PREWHERE task_id = {id:String}"
    " AND tenant = {tenant:String} LIMIT 10"
)


class TreeNotFound(LookupError):
    """No stored event names this task."""


class AmbiguousTask(LookupError):
    """The task id names several trees (two tenants reused it): say which tenant."""


def find_tree(reader: Reader, task_id: str, tenant: str | None = None) -> TreeKey:
    """The tree ``task_id`` belongs to."""
    if tenant is None:
        keys = read(reader, TreeKey, _TREES_OF_TASK, {"id": task_id})
    else:
        keys = read(reader, TreeKey, _TREES_OF_TASK_IN_TENANT, {"id": task_id, "tenant": tenant})
    if not keys:
        raise TreeNotFound(f"no stored event names task {task_id}")
    if len(keys) > 1:
        trees = ", ".join(f"{key.tenant}/{key.root_task_id}" for key in keys)
        raise AmbiguousTask(f"task {task_id} is in several trees ({trees}): name the tenant")
    return keys[0]


def trace(reader: Reader, task_id: str, tenant: str | None = None) -> CustodyTree:
    """The custody tree of any task of it (TreeNotFound when none is stored)."""
    key = find_tree(reader, task_id, tenant)
    tree = {"tenant": key.tenant, "root": key.root_task_id}
    events = reader.select(_EVENTS, tree)
    return CustodyTree(
        root_task_id=key.root_task_id,
        tenant=key.tenant,
        tasks=read(reader, Task, _TASKS, tree),
        delegations=read(reader, Delegation, _DELEGATIONS, tree),
        credentials=read(reader, Credential, _CREDENTIALS, tree),
        decisions=events_of(events, Decision),
        accesses=events_of(events, Access),
        approvals=events_of(events, Approval),
        break_glass=events_of(events, BreakGlass),
        alerts=read(reader, Alert, _ALERTS, tree),
    )
