"""Decoded Avro data as table rows, for servers that cannot be sent Avro.

The native protocol carries column blocks, so on the server path ingest decodes records in
Python and flattens them here, the same way the ``*_avro_mv`` views in
``infra/clickhouse/`` flatten them on the embedded path (a test holds the two to the same
rows). Only columns the target table has are written, so the same code fills an older
server's reduced tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = dict[str, Any]

# Body fields several event types share land in one column; the first body that has the
# field wins, in this order (the same order as the coalesce() calls of events_avro_mv).
_BODIES = (
    "body_task_declared",
    "body_authz_decision",
    "body_credential_issued",
    "body_access",
    "body_delegation",
    "body_approval",
    "body_break_glass",
    "body_credential_revoked",
    "body_task_completed",
    "body_credential_renewed",
)
_LIST_FIELDS = {"requested_scopes", "data_scope", "reasons", "scopes"}
_MAP_FIELDS = {"context"}


def event_row(datum: dict[str, Any]) -> Row:
    """One ``events`` row from a decoded event datum."""
    actor = datum["actor"]
    row: Row = {
        "event_id": datum["event_id"],
        "event_type": datum["event_type"],
        "event_time": datum["event_time"],
        "tenant": datum["tenant"],
        "producer": datum["producer"],
        "root_task_id": datum["root_task_id"],
        "task_id": datum["task_id"],
        "parent_task_id": datum["parent_task_id"],
        "depth": datum["depth"],
        "actor_workload_id": actor["workload_id"],
        "actor_kind": actor["kind"],
        "actor_instance_id": actor["instance_id"],
        "actor_on_behalf_of": actor["on_behalf_of"],
        "producer_instance": datum["producer_instance"],
        "seq": datum["seq"],
        "prev_hash": datum["prev_hash"],
        "attributes": datum["attributes"],
    }
    for name in _BODIES:
        body = datum.get(name)
        if body is None:
            continue
        for field, value in body.items():
            if row.get(field) is None:
                row[field] = value
    return row


def event_defaults(column: str) -> Any:
    """The value of a body column the event's type does not have."""
    if column in _LIST_FIELDS:
        return []
    if column in _MAP_FIELDS:
        return {}
    return None


def _state_common(datum: dict[str, Any]) -> Row:
    return {
        "tenant": datum["tenant"],
        "root_task_id": datum["root_task_id"],
        "version": datum["version"],
        "updated_at": datum["updated_at"],
        "source_event_ids": datum["source_event_ids"],
    }


def _task(datum: dict[str, Any]) -> Row:
    task = dict(datum["task"])
    actor = task.pop("actor")
    return {
        **_state_common(datum),
        **task,
        "workload_id": actor["workload_id"],
        "actor_kind": actor["kind"],
        "instance_id": actor["instance_id"],
        "on_behalf_of": actor["on_behalf_of"],
    }


def _delegation(datum: dict[str, Any]) -> Row:
    return {**_state_common(datum), **datum["delegation"]}


def _credential(datum: dict[str, Any]) -> Row:
    return {**_state_common(datum), **datum["credential"]}


STATE_TABLES: dict[str, tuple[str, Callable[[dict[str, Any]], Row]]] = {
    "TASK": ("tasks", _task),
    "DELEGATION": ("delegations", _delegation),
    "CREDENTIAL": ("credentials", _credential),
}


def state_row(datum: dict[str, Any]) -> tuple[str, Row]:
    """The table and row of a decoded state change."""
    table, flatten = STATE_TABLES[datum["kind"]]
    return table, flatten(datum)


def alert_row(datum: dict[str, Any]) -> Row:
    """One ``alerts`` row from a decoded alert datum (the fields map one to one)."""
    return dict(datum)
