"""Rows read from ClickHouse as typed records, and back as the JSON the CLI and API answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from processors.serving import records

# Rows as a reader returns them: JSON-ready values, keys in the query's column order.
CREDENTIAL_ROW: dict[str, Any] = {
    "token_id": "tok-1",
    "task_id": "t-2",
    "token_subject": "spiffe://acme/agent/coder",
    "credential_kind": "JWT",
    "audience": "crm",
    "scopes": ["crm:read"],
    "issued_at": "2026-03-02T09:01:00.000000Z",
    "expires_at": "2026-03-02T09:16:00.000000Z",
    "decision_id": "dec-1",
    "parent_token_id": None,
    "state": "EXPIRED",
    "revoked_at": None,
    "revocation_reason": None,
    "revoked_by": None,
}
ALERT_ROW: dict[str, Any] = {
    "alert_id": "alert-1",
    "alert_type": "TOKEN_USED_AFTER_EXPIRY",
    "severity": "HIGH",
    "tenant": "acme",
    "root_task_id": "t-1",
    "task_id": "t-2",
    "token_id": "tok-1",
    "workload_id": None,
    "event_time": "2026-03-02T09:17:00.000000Z",
    "detected_at": "2026-03-02T09:17:00.250000Z",
    "evidence_event_ids": ["e-1", "e-2"],
    "detail": "used 60 s after expiry",
}
TASK_ROW: dict[str, Any] = {
    "task_id": "t-2",
    "parent_task_id": "t-1",
    "depth": 1,
    "workload_id": "spiffe://acme/agent/coder",
    "actor_kind": "AGENT",
    "instance_id": "coder-7",
    "on_behalf_of": "user:alice@acme",
    "purpose": "fix the build",
    "requested_scopes": ["repo:write"],
    "status": "COMPLETED",
    "outcome": "SUCCEEDED",
    "declared_at": "2026-03-02T09:00:30.000000Z",
    "completed_at": None,
}
# The events query reads the columns of every event type at once; a type's others are null.
EVENT_COLUMNS = {
    name
    for record in (records.Decision, records.Access, records.Approval, records.BreakGlass)
    for name in record.columns()
}


def _event(event_type: str, event_id: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(EVENT_COLUMNS)
    return {**row, "event_type": event_type, "event_id": event_id, **values}


def test_a_flat_row_comes_back_as_the_same_json() -> None:
    for record, row in ((records.Credential, CREDENTIAL_ROW), (records.Alert, ALERT_ROW)):
        as_json = record.from_row(row).as_json()
        assert json.dumps(as_json) == json.dumps(row)


def test_fields_read_by_name_whatever_the_order_of_the_columns() -> None:
    credential = records.Credential.from_row(dict(reversed(CREDENTIAL_ROW.items())))
    assert (credential.token_id, credential.state, credential.revoked_at) == (
        "tok-1",
        "EXPIRED",
        None,
    )
    assert list(credential.as_json()) == list(CREDENTIAL_ROW)


def test_a_missing_column_fails_naming_it() -> None:
    row = {key: value for key, value in CREDENTIAL_ROW.items() if key != "state"}
    with pytest.raises(KeyError, match="state"):
        records.Credential.from_row(row)


def test_a_task_nests_its_actor_where_the_row_has_its_columns() -> None:
    task = records.Task.from_row(TASK_ROW)
    assert task.actor.kind == "AGENT"
    assert task.actor.on_behalf_of == "user:alice@acme"
    as_json = task.as_json()
    assert list(as_json) == [
        "task_id",
        "parent_task_id",
        "depth",
        "actor",
        "purpose",
        "requested_scopes",
        "status",
        "outcome",
        "declared_at",
        "completed_at",
    ]
    assert as_json["actor"] == {
        "workload_id": "spiffe://acme/agent/coder",
        "kind": "AGENT",
        "instance_id": "coder-7",
        "on_behalf_of": "user:alice@acme",
    }


def test_events_of_one_type_keep_only_their_fields_in_order() -> None:
    rows = [
        _event("ACCESS", "e-1", tool="crm.query", resource="crm://a", outcome="SUCCESS"),
        _event("APPROVAL", "e-2", approver="user:bob@acme", approves="t-2", scopes=[]),
        _event("ACCESS", "e-3", tool="crm.export", resource="crm://a", outcome="DENIED"),
    ]
    accesses = records.events_of(rows, records.Access)
    assert [(a.event_id, a.tool, a.outcome) for a in accesses] == [
        ("e-1", "crm.query", "SUCCESS"),
        ("e-3", "crm.export", "DENIED"),
    ]
    assert "approver" not in accesses[0].as_json()
    (approval,) = records.events_of(rows, records.Approval)
    assert approval.as_json()["approver"] == "user:bob@acme"
    assert records.events_of(rows, records.Decision) == []


def test_a_stored_credential_names_its_tree_first() -> None:
    row = {"tenant": "acme", "root_task_id": "t-1", **CREDENTIAL_ROW}
    stored = records.StoredCredential.from_row(row)
    assert stored.credential == records.Credential.from_row(CREDENTIAL_ROW)
    assert json.dumps(stored.as_json()) == json.dumps(row)


def test_the_tree_json_has_every_part_in_the_documented_order() -> None:
    tree = records.CustodyTree(
        root_task_id="t-1",
        tenant="acme",
        tasks=[records.Task.from_row(TASK_ROW)],
        credentials=[records.Credential.from_row(CREDENTIAL_ROW)],
        alerts=[records.Alert.from_row(ALERT_ROW)],
    )
    as_json = tree.as_json()
    assert list(as_json) == [
        "root_task_id",
        "tenant",
        "tasks",
        "delegations",
        "credentials",
        "decisions",
        "accesses",
        "approvals",
        "break_glass",
        "alerts",
    ]
    assert as_json["credentials"] == [CREDENTIAL_ROW]
    assert as_json["alerts"] == [ALERT_ROW]
    assert as_json["decisions"] == []
    assert as_json["tasks"][0]["actor"]["instance_id"] == "coder-7"


def test_the_alert_columns_are_the_alert_fields() -> None:
    assert records.ALERT_COLUMNS.split(", ") == list(ALERT_ROW)
