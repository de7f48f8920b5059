"""PROV-JSON export of a custody tree, read back with the ``prov`` package."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import pytest

from processors.serving import records
from processors.serving.prov_export import ID_NS, qualified_name, to_prov_json

pytest.importorskip("prov")

from prov.identifier import QualifiedName
from prov.model import (
    ProvActivity,
    ProvAgent,
    ProvAssociation,
    ProvAttribution,
    ProvCommunication,
    ProvDelegation,
    ProvDerivation,
    ProvDocument,
    ProvEntity,
    ProvGeneration,
    ProvInfluence,
    ProvInvalidation,
    ProvRecord,
    ProvUsage,
)

ALICE = "user:alice@acme"
BOB = "user:bob@acme"
PLANNER = "spiffe://acme/agent/planner"
RESEARCHER = "spiffe://acme/agent/researcher"
CODER = "spiffe://acme/agent/coder"
ROOT = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
RESEARCH = "9b2d1c4e-5f60-4a71-8b92-a3c4d5e6f708"
CODE = "1a2b3c4d-5e6f-4a8b-9c0d-e1f2a3b4c5d6"
TOKEN_OLD = "jti-0001"
TOKEN_NEW = "jti-0002"
DECISION = "dec/opa#42"
ACCESS = "0f8fad5b-d9cb-469f-a165-70867728950e"
CRM = "crm://accounts"


def _task(
    task_id: str, parent: str | None, depth: int, workload: str, **extra: Any
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "parent_task_id": parent,
        "depth": depth,
        "workload_id": workload,
        "actor_kind": "AGENT",
        "instance_id": f"{workload.rsplit('/', 1)[-1]}-1",
        "on_behalf_of": ALICE,
        "purpose": f"step {depth}",
        "requested_scopes": ["crm:read"],
        "status": "COMPLETED",
        "outcome": "SUCCEEDED",
        "declared_at": f"2026-11-29T09:0{depth}:00Z",
        "completed_at": "2026-11-29T09:30:00.250000Z",
        **extra,
    }


def _delegation(parent: str, child: str, delegator: str, delegatee: str) -> dict[str, Any]:
    return {
        "delegator": delegator,
        "delegatee": delegatee,
        "parent_task_id": parent,
        "child_task_id": child,
        "scopes": ["crm:read", "crm:export"],
        "decision_id": DECISION,
        "delegated_at": "2026-11-29T09:00:30Z",
    }


def _credential(token_id: str, parent_token: str | None, state: str) -> dict[str, Any]:
    revoked = state == "REVOKED"
    return {
        "token_id": token_id,
        "task_id": CODE,
        "token_subject": CODER,
        "credential_kind": "JWT",
        "audience": "crm",
        "scopes": ["crm:read", "crm:export"],
        "issued_at": "2026-11-29T09:03:00Z" if parent_token is None else "2026-11-29T09:10:00Z",
        "expires_at": "2026-11-29T09:18:00Z",
        "decision_id": DECISION,
        "parent_token_id": parent_token,
        "state": state,
        "revoked_at": "2026-11-29T09:10:00.123456Z" if revoked else None,
        "revocation_reason": "ROTATED" if revoked else None,
        "revoked_by": "spiffe://acme/broker/vault" if revoked else None,
    }


def _trace() -> dict[str, Any]:
    """Planner (for Alice) -> researcher -> coder; a token rotated once, an access with it,
    Bob's approval of a break-glass and an alert: each part's rows as trace reads them."""
    return {
        "root_task_id": ROOT,
        "tenant": "acme",
        "tasks": [
            _task(ROOT, None, 0, PLANNER, purpose="quarterly churn report"),
            _task(RESEARCH, ROOT, 1, RESEARCHER),
            _task(CODE, RESEARCH, 2, CODER),
        ],
        "delegations": [
            _delegation(ROOT, RESEARCH, PLANNER, RESEARCHER),
            _delegation(RESEARCH, CODE, RESEARCHER, CODER),
        ],
        "credentials": [
            _credential(TOKEN_OLD, None, "REVOKED"),
            _credential(TOKEN_NEW, TOKEN_OLD, "EXPIRED"),
        ],
        "decisions": [
            {
                "event_id": "e-decision",
                "event_time": "2026-11-29T09:02:59Z",
                "task_id": CODE,
                "decision_id": DECISION,
                "policy_engine": "opa",
                "policy_id": "crm.read",
                "policy_version": "2026-11-01",
                "decision": "ALLOW",
                "resource": CRM,
                "action": "read",
                "data_scope": ["crm:accounts"],
                "reasons": ["purpose matches", "within hours"],
            }
        ],
        "accesses": [
            {
                "event_id": ACCESS,
                "event_time": "2026-11-29T09:11:00Z",
                "task_id": CODE,
                "workload_id": CODER,
                "instance_id": "coder-1",
                "token_id": TOKEN_NEW,
                "tool": "crm.query",
                "resource": CRM,
                "action": "read",
                "data_scope": ["crm:accounts"],
                "decision_id": DECISION,
                "outcome": "SUCCESS",
                "detail": None,
            }
        ],
        "approvals": [
            {
                "event_id": "e-approval",
                "event_time": "2026-11-29T09:05:00Z",
                "task_id": CODE,
                "approval_id": "appr-1",
                "approver": BOB,
                "approves": "bg-1",
                "scopes": ["crm:export"],
                "expires_at": "2026-11-29T10:00:00Z",
                "reason": "incident INC-7",
            }
        ],
        "break_glass": [
            {
                "event_id": "e-break-glass",
                "event_time": "2026-11-29T09:04:00Z",
                "task_id": CODE,
                "workload_id": CODER,
                "break_glass_id": "bg-1",
                "reason": "incident INC-7",
                "standing_access_unavailable": "role store down",
                "approval_id": "appr-1",
                "expires_at": "2026-11-29T09:34:00Z",
            }
        ],
        "alerts": [
            {
                "alert_id": "alert-1",
                "alert_type": "SCOPE_ESCALATION",
                "severity": "HIGH",
                "tenant": "acme",
                "root_task_id": ROOT,
                "task_id": RESEARCH,
                "token_id": None,
                "workload_id": PLANNER,
                "event_time": "2026-11-29T09:00:30Z",
                "detected_at": "2026-11-29T09:00:31.5Z",
                "evidence_event_ids": ["e-delegation-1", "e-task-root"],
                "detail": "crm:export not held by the delegator",
            }
        ],
    }


_RECORDS: dict[str, type[records.Record]] = {
    "tasks": records.Task,
    "delegations": records.Delegation,
    "credentials": records.Credential,
    "decisions": records.Decision,
    "accesses": records.Access,
    "approvals": records.Approval,
    "break_glass": records.BreakGlass,
    "alerts": records.Alert,
}


def _export(trace: dict[str, Any]) -> dict[str, Any]:
    """The PROV-JSON of the tree whose parts hold these rows (a part left out is empty)."""
    parts: dict[str, Any] = {
        key: [_RECORDS[key].from_row(row) for row in rows]
        for key, rows in trace.items()
        if key in _RECORDS
    }
    tree = records.CustodyTree(trace["root_task_id"], trace["tenant"], **parts)
    return to_prov_json(tree)


def _parse(doc: dict[str, Any]) -> ProvDocument:
    """Read a document back the way a PROV tool would; any warning from ``prov`` fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return ProvDocument.deserialize(content=json.dumps(doc), format="json")


def _name(prov: ProvDocument, kind: str, raw_id: str) -> QualifiedName:
    name = prov.valid_qualified_name(qualified_name(kind, raw_id))
    assert name is not None
    return name


def _ids(prov: ProvDocument, cls: type[ProvRecord]) -> set[QualifiedName | None]:
    return {record.identifier for record in prov.get_records(cls)}


def _args(prov: ProvDocument, cls: type[ProvRecord]) -> set[tuple[Any, ...]]:
    return {record.args for record in prov.get_records(cls)}


def _only(prov: ProvDocument, cls: type[ProvRecord], *args: Any) -> ProvRecord:
    """The one relation of ``cls`` whose formal attributes start with ``args``."""
    found = [r for r in prov.get_records(cls) if r.args[: len(args)] == args]
    assert len(found) == 1, found
    return found[0]


def _identifier(record: ProvRecord) -> QualifiedName:
    assert record.identifier is not None
    return record.identifier


def _value(record: ProvRecord, attribute: str) -> Any:
    (value,) = record.get_attribute(attribute)
    return value


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_the_tree_exports_its_agents_activities_and_entities() -> None:
    prov = _parse(_export(_trace()))

    def n(kind: str, raw_id: str) -> QualifiedName:
        return _name(prov, kind, raw_id)

    workloads = {n("workload", w) for w in (PLANNER, RESEARCHER, CODER)}
    assert _ids(prov, ProvAgent) == workloads | {n("human", ALICE), n("human", BOB)}
    assert _ids(prov, ProvActivity) == {
        n("task", ROOT),
        n("task", RESEARCH),
        n("task", CODE),
        n("access", ACCESS),
    }
    assert _ids(prov, ProvEntity) == {
        n("token", TOKEN_OLD),
        n("token", TOKEN_NEW),
        n("decision", DECISION),
        n("resource", CRM),
        n("approval", "appr-1"),
        n("breakglass", "bg-1"),
        n("alert", "alert-1"),
    }
    (bob,) = prov.get_record(n("human", BOB))
    assert bob.get_asserted_types() == {prov.valid_qualified_name("prov:Person")}
    (planner,) = prov.get_record(n("workload", PLANNER))
    assert planner.get_asserted_types() == {prov.valid_qualified_name("custody:Workload")}
    assert _value(planner, "custody:kind") == "AGENT"
    (alert,) = prov.get_record(n("alert", "alert-1"))
    assert alert.get_asserted_types() == {prov.valid_qualified_name("custody:Alert")}
    assert json.loads(_value(alert, "custody:evidenceEventIds")) == [
        "e-delegation-1",
        "e-task-root",
    ]
    assert _value(alert, "custody:workload") == n("workload", PLANNER)


def test_the_custody_chain_is_in_the_relations() -> None:
    prov = _parse(_export(_trace()))

    def n(kind: str, raw_id: str) -> QualifiedName:
        return _name(prov, kind, raw_id)

    root, research, code = n("task", ROOT), n("task", RESEARCH), n("task", CODE)
    access, old, new = n("access", ACCESS), n("token", TOKEN_OLD), n("token", TOKEN_NEW)
    planner, researcher, coder = (n("workload", w) for w in (PLANNER, RESEARCHER, CODER))

    assert _args(prov, ProvCommunication) == {(research, root), (code, research)}
    informed = _only(prov, ProvCommunication, code, research)
    assert json.loads(_value(informed, "custody:scopes")) == ["crm:read", "crm:export"]
    assert _value(informed, "custody:decision") == n("decision", DECISION)

    delegations = _args(prov, ProvDelegation)
    assert (researcher, planner, research) in delegations
    assert (coder, researcher, code) in delegations
    assert (planner, n("human", ALICE), root) in delegations

    assert (root, planner, None) in _args(prov, ProvAssociation)
    assert (access, coder, None) in _args(prov, ProvAssociation)
    used = _args(prov, ProvUsage)
    assert (access, new, _at("2026-11-29T09:11:00Z")) in used
    assert (access, n("resource", CRM), _at("2026-11-29T09:11:00Z")) in used
    assert (access, n("decision", DECISION), _at("2026-11-29T09:11:00Z")) in used

    assert (old, code, _at("2026-11-29T09:03:00Z")) in _args(prov, ProvGeneration)
    assert (n("decision", DECISION), code, _at("2026-11-29T09:02:59Z")) in _args(
        prov, ProvGeneration
    )
    assert _args(prov, ProvInvalidation) == {(old, code, _at("2026-11-29T09:10:00.123456Z"))}
    invalidation = _only(prov, ProvInvalidation, old)
    assert _value(invalidation, "custody:reason") == "ROTATED"

    rotation = _only(prov, ProvDerivation, new, old)
    assert rotation.get_asserted_types() == {prov.valid_qualified_name("prov:Revision")}
    assert (new, n("decision", DECISION)) in {r[:2] for r in _args(prov, ProvDerivation)}

    approval, break_glass = n("approval", "appr-1"), n("breakglass", "bg-1")
    assert (approval, n("human", BOB)) in _args(prov, ProvAttribution)
    assert (break_glass, coder) in _args(prov, ProvAttribution)
    # Named from both sides (approves, approval_id), the link is still one relation.
    assert _args(prov, ProvInfluence) == {(break_glass, approval)}


def test_values_keep_their_types() -> None:
    prov = _parse(_export(_trace()))
    (root,) = prov.get_record(_name(prov, "task", ROOT))
    assert isinstance(root, ProvActivity)
    assert root.get_startTime() == _at("2026-11-29T09:00:00Z")
    assert root.get_endTime() == _at("2026-11-29T09:30:00.250000Z")
    assert _value(root, "custody:depth") == 0
    assert _value(root, "custody:purpose") == "quarterly churn report"
    assert _value(root, "custody:tenant") == "acme"
    (old,) = prov.get_record(_name(prov, "token", TOKEN_OLD))
    assert _value(old, "custody:issuedAt") == _at("2026-11-29T09:03:00Z")
    assert _value(old, "custody:state") == "REVOKED"
    assert _value(old, "custody:subject") == _name(prov, "workload", CODER)
    (decision,) = prov.get_record(_name(prov, "decision", DECISION))
    assert json.loads(_value(decision, "custody:reasons")) == ["purpose matches", "within hours"]


def test_export_is_deterministic_and_prov_round_trips_it() -> None:
    trace = _trace()
    shuffled = {
        key: value[::-1] if isinstance(value, list) else value for key, value in trace.items()
    }
    doc = _export(trace)
    text = json.dumps(doc, sort_keys=True)
    assert json.dumps(_export(trace), sort_keys=True) == text
    assert json.dumps(_export(shuffled), sort_keys=True) == text

    prov = _parse(doc)
    relations = [r for r in prov.get_records() if r.is_relation()]
    written = sum(
        len(doc[key]) for key in doc if key not in {"prefix", "agent", "activity", "entity"}
    )
    assert len({r.identifier for r in relations}) == len(relations) == written
    again = prov.serialize(format="json")
    assert again is not None
    assert _parse(json.loads(again)) == prov


AWKWARD = [
    PLANNER,
    ALICE,
    "crm://accounts?region=eu#frag",
    "100% done",
    "émile/été 空",
    ".dot-led",
    "trailing.",
    "line\nbreak",
    "a%2Fb",
]


@pytest.mark.parametrize("raw_id", AWKWARD)
def test_awkward_ids_round_trip(raw_id: str) -> None:
    ids = {"task_id": raw_id, "workload_id": raw_id, "token_id": raw_id}
    access = {**_trace()["accesses"][0], **ids, "event_id": raw_id, "resource": raw_id}
    trace = {
        "root_task_id": raw_id,
        "tenant": "acme",
        "tasks": [{**_task(raw_id, None, 0, raw_id), "on_behalf_of": None}],
        "credentials": [{**_credential(raw_id, None, "ACTIVE"), **ids, "token_subject": raw_id}],
        "accesses": [{**access, "decision_id": None}],
        "approvals": [
            {
                **_trace()["approvals"][0],
                "approval_id": raw_id,
                "approver": raw_id,
                "approves": raw_id,
            }
        ],
    }
    prov = _parse(_export(trace))
    named = {_identifier(r): r for r in prov.get_records() if r.is_element()}
    assert {(name.namespace.prefix, name.namespace.uri) for name in named} == {
        (kind, f"{ID_NS}{kind}/")
        for kind in ("task", "token", "access", "resource", "approval", "human")
    }
    for name, record in named.items():
        assert unquote(name.localpart) == raw_id
        assert _value(record, "prov:label") == raw_id
    # The task's workload also approves it: one identity, one agent with both roles.
    (agent,) = prov.get_records(ProvAgent)
    assert agent.identifier == _name(prov, "human", raw_id)
    assert agent.get_asserted_types() == {
        prov.valid_qualified_name("prov:Person"),
        prov.valid_qualified_name("custody:Workload"),
    }


def test_references_to_ids_outside_the_tree_are_kept() -> None:
    access = {**_trace()["accesses"][0], "token_id": "leaked", "decision_id": None}
    prov = _parse(_export({"root_task_id": ROOT, "tenant": "acme", "accesses": [access]}))
    used = {r[1] for r in _args(prov, ProvUsage)}
    assert used == {_name(prov, "token", "leaked"), _name(prov, "resource", CRM)}
    assert _name(prov, "token", "leaked") not in _ids(prov, ProvEntity)


def test_an_empty_tree_is_a_valid_document() -> None:
    empty: dict[str, Any] = {"root_task_id": ROOT, "tenant": "acme"}
    for key in ("tasks", "delegations", "credentials", "decisions", "accesses", "approvals"):
        empty[key] = []
    empty.update(break_glass=[], alerts=[])
    prov = _parse(_export(empty))
    (root,) = prov.get_records()
    assert root.identifier == _name(prov, "task", ROOT)
    assert _value(root, "custody:tenant") == "acme"
