"""The custody graph the explorer draws, from a hand-written trace: the cases a simulation
does not reach (a rotation from another tree, repeated and denied calls)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

from processors.serving.graph import custody_graph
from processors.serving.records import (
    Access,
    Alert,
    Approval,
    Credential,
    CustodyTree,
    Delegation,
    Record,
    Task,
)

R = TypeVar("R", bound=Record)


def _row(record: type[R], row: dict[str, Any]) -> R:
    """The ``record`` of a row holding the columns the graph reads, the others null."""
    return record.from_row({**dict.fromkeys(record.columns()), **row})


def _task(task_id: str, parent: str | None, workload: str, human: str | None) -> Task:
    return Task.from_row(
        {
            "task_id": task_id,
            "parent_task_id": parent,
            "depth": 0 if parent is None else 1,
            "workload_id": workload,
            "actor_kind": "AGENT",
            "instance_id": "i-1",
            "on_behalf_of": human,
            "purpose": f"purpose of {task_id}",
            "requested_scopes": [],
            "status": "COMPLETED",
            "outcome": "SUCCEEDED",
            "declared_at": "2026-01-01T00:00:00.000000Z",
            "completed_at": "2026-01-01T00:10:00.000000Z",
        }
    )


def _token(token_id: str, task_id: str, state: str, parent: str | None = None) -> Credential:
    row = {"token_id": token_id, "task_id": task_id, "state": state, "parent_token_id": parent}
    return _row(Credential, row)


def _access(token_id: str | None, task_id: str, outcome: str) -> Access:
    return _row(
        Access,
        {
            "token_id": token_id,
            "task_id": task_id,
            "workload_id": "spiffe://a/coder",
            "tool": "db.query",
            "resource": "db://x",
            "action": "read",
            "outcome": outcome,
        },
    )


def _alert(alert_type: str, **named: str) -> Alert:
    return _row(
        Alert,
        {
            "alert_type": alert_type,
            "task_id": named.get("task_id"),
            "token_id": named.get("token_id"),
            "workload_id": named.get("workload_id"),
        },
    )


TRACE = CustodyTree(
    root_task_id="t1",
    tenant="acme",
    tasks=[
        _task("t1", None, "spiffe://a/planner", "alice"),
        _task("t2", "t1", "spiffe://a/coder", "alice"),
    ],
    delegations=[
        _row(Delegation, {"parent_task_id": "t1", "child_task_id": "t2", "scopes": ["repo:read"]})
    ],
    credentials=[
        _token("k1", "t2", "REVOKED", parent="k0-elsewhere"),
        _token("k2", "t2", "EXPIRED"),
    ],
    accesses=[
        _access("k1", "t2", "SUCCESS"),
        _access("k1", "t2", "SUCCESS"),
        _access("k1", "t2", "DENIED"),
        _access(None, "t1", "SUCCESS"),
    ],
    approvals=[_row(Approval, {"approver": "alice", "task_id": "t2", "approves": "t2"})],
    alerts=[
        _alert("SELF_APPROVAL", task_id="t2", workload_id="alice"),
        _alert("TOKEN_USED_AFTER_EXPIRY", token_id="k2"),
    ],
)


def test_nodes_states_and_alert_marks() -> None:
    graph = custody_graph(TRACE)
    nodes = {node["id"]: node for node in graph["nodes"]}
    assert {n for n, node in nodes.items() if node["kind"] == "task"} == {"task:t1", "task:t2"}
    assert nodes["token:k1"]["revoked"]
    assert not nodes["token:k1"]["expired"]
    assert nodes["token:k2"]["expired"]
    assert not nodes["token:k2"]["revoked"]
    assert nodes["human:alice"]["alert_types"] == ["SELF_APPROVAL"]
    assert nodes["task:t2"]["alert_types"] == ["SELF_APPROVAL"]
    assert nodes["token:k2"]["alert_types"] == ["TOKEN_USED_AFTER_EXPIRY"]
    assert not nodes["task:t1"]["alerting"]
    assert not nodes["token:k1"]["alerting"]


def test_a_rotation_from_outside_the_tree_is_a_stub_node() -> None:
    nodes = {node["id"]: node for node in custody_graph(TRACE)["nodes"]}
    stub = nodes["token:k0-elsewhere"]
    assert stub["data"] == {"missing": True}
    assert stub["status"] == "NOT IN TREE"


def test_repeated_calls_are_counted_and_a_denied_one_is_its_own_edge() -> None:
    edges = [e for e in custody_graph(TRACE)["edges"] if e["kind"] == "used"]
    by_label = {(e["source"], e["label"]): e["count"] for e in edges}
    assert by_label == {
        ("token:k1", "read SUCCESS"): 2,
        ("token:k1", "read DENIED"): 1,
        # A call made without a token hangs off its task.
        ("task:t1", "read SUCCESS"): 1,
    }


def test_a_token_used_by_another_workload_draws_that_workload() -> None:
    foreign = replace(_access("k1", "t2", "SUCCESS"), workload_id="svc/shared-automation")
    graph = custody_graph(replace(TRACE, accesses=[*TRACE.accesses, foreign]))
    assert "agent:svc/shared-automation" in {node["id"] for node in graph["nodes"]}
    used_by = [(e["source"], e["target"]) for e in graph["edges"] if e["kind"] == "used_by"]
    assert used_by == [("token:k1", "agent:svc/shared-automation")]
