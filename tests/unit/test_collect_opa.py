"""OPA decision-log events as AUTHZ_DECISION events, on OPA's documented formats.

The samples under ``tests/data/opa/`` reproduce the examples of OPA's "Decision Logs"
documentation (the upload body, the masking examples) and its console decision logger's
lines; expected values are read from the samples, not restated.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from processors.collect import records
from processors.collect.opa import OpaMapping, map_decision, parse_timestamp, tenant_named
from processors.collect.opa_files import DECISION_LOG_TYPE, decisions_of_upload, read_decisions
from processors.collect.records import Rejection
from producers.context import CustodyContext
from schemas.models import AuthzDecisionEvent, EventType
from tests.support import REPO

DATA = REPO / "tests" / "data" / "opa"
ORIGIN = records.Origin(tenant="acme", source="opa-prod")
MAPPING = OpaMapping()
LOGGER_FIELDS = {"level", "msg", "time", "type"}

# A JWT-shaped value assembled at run time, so no secret-shaped literal sits in the repo.
JWT = "eyJ" + "hbGciOiJIUzI1NiJ9" + ".eyJ" + "zdWIiOiJhZ2VudCJ9" + ".c2lnbmF0dXJlX2J5dGVz"


def _upload() -> list[dict[str, Any]]:
    decisions: list[dict[str, Any]] = json.loads((DATA / "upload.json").read_text())
    return decisions


def _documented() -> dict[str, Any]:
    """The upload example of OPA's docs: GET /salary/bob, allowed."""
    return _upload()[0]


def _masking(masked: bool) -> dict[str, Any]:
    """OPA's masking example: erased only, or erased and masked."""
    return _upload()[2 if masked else 1]


def _with_input(entry: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**entry, "input": {**entry["input"], **fields}}


def _event(outcome: records.Outcome) -> AuthzDecisionEvent:
    assert isinstance(outcome, records.Mapped), outcome
    (event,) = outcome.events
    assert isinstance(event, AuthzDecisionEvent)
    return event


def _map(entry: dict[str, Any], mapping: OpaMapping = MAPPING) -> AuthzDecisionEvent:
    return _event(map_decision(entry, ORIGIN, mapping))


def _rejected(entry: dict[str, Any], mapping: OpaMapping = MAPPING) -> Rejection:
    outcome = map_decision(entry, ORIGIN, mapping)
    assert isinstance(outcome, Rejection), outcome
    return outcome


# ---- the documented examples --------------------------------------------------------------


def test_the_documented_upload_maps_field_by_field() -> None:
    sample = _documented()
    event = _map(sample)
    decision_id = sample["decision_id"]
    ((bundle, info),) = sample["bundles"].items()

    assert event.event_type == EventType.AUTHZ_DECISION
    assert event.event_id == records.event_id_for(ORIGIN, "opa", decision_id)
    assert event.event_time == datetime.fromisoformat(sample["timestamp"])
    assert (event.tenant, event.producer) == (ORIGIN.tenant, ORIGIN.source)
    assert event.actor.workload_id == f"opa://{sample['labels']['id']}"
    assert event.actor.kind == "POLICY_ENGINE"
    assert event.actor.instance_id == sample["labels"]["id"]
    body = event.body
    assert body.decision_id == decision_id
    assert body.policy_engine == "opa"
    assert body.policy_id == sample["path"]
    assert body.policy_version == f"{bundle}@{info['revision']}"
    assert body.decision == ("ALLOW" if sample["result"] == "true" else "DENY")
    assert body.resource == sample["input"]["path"]
    assert body.action == sample["input"]["method"]
    assert body.data_scope == []
    assert body.reasons == []
    assert body.context == {"opa.path": sample["path"]}
    assert event.attributes == {
        records.SOURCE_ATTRIBUTE: ORIGIN.source,
        records.SYNTHETIC_ATTRIBUTE: "true",
        "opa.requested_by": sample["requested_by"],
    }
    # No custody context and no subject: the decision is a synthetic root of its own.
    task = records.synthetic_task_id(ORIGIN, "opa-subject", decision_id)
    assert (event.root_task_id, event.task_id, event.parent_task_id, event.depth) == (
        task,
        task,
        None,
        0,
    )


@pytest.mark.parametrize("masked", [False, True])
def test_the_documented_masking_examples_lack_an_action(masked: bool) -> None:
    sample = _masking(masked)
    rejection = _rejected(sample)
    assert rejection.reason == "opa_action_missing"
    assert "input.action" in rejection.detail
    for value in sample["input"].values():
        assert value not in rejection.detail


@pytest.mark.parametrize("masked", [False, True])
def test_erased_and_masked_paths_are_recorded(masked: bool) -> None:
    sample = _with_input(_masking(masked), action="read")
    event = _map(sample)
    assert event.body.resource == sample["input"]["resource"]
    assert event.body.context["opa.erased"] == ",".join(sample["erased"])
    if masked:
        assert event.body.context["opa.masked"] == ",".join(sample["masked"])
    else:
        assert "opa.masked" not in event.body.context
    assert event.event_time == datetime.fromisoformat(sample["timestamp"])


@pytest.mark.parametrize("masked", [False, True])
def test_a_masked_or_erased_path_is_never_read(masked: bool) -> None:
    sample = _with_input(_masking(masked), action="read")
    # The masked password reads "**REDACTED**": a mapping naming it first must pass over it.
    prefer_password = OpaMapping(resource=("password", "resource"), subject=("password",))
    event = _map(sample, prefer_password)
    assert event.body.resource == sample["input"]["resource"]
    assert "subject" not in event.body.context
    assert event.task_id == records.synthetic_task_id(ORIGIN, "opa-subject", sample["decision_id"])

    rejection = _rejected(sample, OpaMapping(resource=("password",)))
    assert rejection.reason == "opa_resource_missing"
    assert "erased or masked by OPA: password" in rejection.detail


def test_an_erased_parent_hides_its_children() -> None:
    sample = {**_with_input(_documented(), action="read"), "erased": ["/input"]}
    del sample["input"]
    assert _rejected(sample).reason == "opa_resource_missing"
    masked = {
        **_with_input(_documented(), target={"name": "**REDACTED**"}),
        "masked": ["/input/target"],
    }
    rejection = _rejected(masked, OpaMapping(resource=("target.name",)))
    assert "erased or masked by OPA: target.name" in rejection.detail


def test_malformed_erased_list_is_rejected() -> None:
    rejection = _rejected({**_documented(), "erased": "/input/password"})
    assert rejection.reason == "opa_masking_invalid"
    assert "erased" in rejection.detail


# ---- results ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "decision", "reasons"),
    [
        (True, "ALLOW", []),
        (False, "DENY", []),
        ("true", "ALLOW", []),
        ("false", "DENY", []),
        ({"allow": True}, "ALLOW", []),
        (
            {"allowed": False, "reason": "outside business hours"},
            "DENY",
            ["outside business hours"],
        ),
        (
            {"allowed": True, "headers": {"x-ext-auth-allow": "yes"}},
            "ALLOW",
            [],
        ),
        (
            {"allow": False, "deny": ["no salary access", "not a manager"], "msg": "denied"},
            "DENY",
            ["no salary access", "not a manager", "denied"],
        ),
        ({"allow": False, "reasons": ["r1", {"code": 7}, "r2"]}, "DENY", ["r1", "r2"]),
    ],
)
def test_results_map_to_a_decision_and_its_reasons(
    result: Any, decision: str, reasons: list[str]
) -> None:
    event = _map({**_documented(), "result": result})
    assert event.body.decision == decision
    assert event.body.reasons == reasons


def test_an_undefined_decision_is_a_deny() -> None:
    sample = _documented()
    del sample["result"]
    event = _map(sample)
    assert (event.body.decision, event.body.reasons) == ("DENY", ["undefined"])
    failed = {**sample, "error": {"code": "internal_error", "message": "eval_conflict_error"}}
    assert _map(failed).body.reasons == ["error: internal_error"]


@pytest.mark.parametrize(
    "result",
    [[{"x": 3}], 1, 0, "yes", {"decision": True}, {"allow": "maybe"}, {"allowed": 1}],
)
def test_an_unrecognized_result_is_rejected(result: Any) -> None:
    rejection = _rejected({**_documented(), "result": result})
    assert rejection.reason == "opa_result_unrecognized"
    assert str(result) not in rejection.detail


@pytest.mark.parametrize(
    ("changes", "pointer"),
    [
        ({"erased": ["/result"]}, "/result"),
        ({"masked": ["/result/allow"], "result": {"allow": "**REDACTED**"}}, "/result/allow"),
    ],
)
def test_a_hidden_result_is_rejected_not_read_as_undefined(
    changes: dict[str, Any], pointer: str
) -> None:
    sample = {**_documented(), **changes}
    if "result" not in changes:
        del sample["result"]
    rejection = _rejected(sample)
    assert rejection.reason == "opa_result_erased"
    assert pointer in rejection.detail


def test_masked_reasons_are_left_out() -> None:
    sample = {
        **_documented(),
        "result": {"allow": False, "deny": ["**REDACTED**"], "msg": "denied"},
        "masked": ["/result/deny"],
    }
    assert _map(sample).body.reasons == ["denied"]


# ---- policy, version, scope, subject ----------------------------------------------------


def test_bundle_revisions_are_the_policy_version() -> None:
    bundles = {"zeta": {"revision": "r9"}, "authz": {"revision": "7"}, "cli1": {}}
    event = _map({**_documented(), "bundles": bundles})
    expected = sorted(
        f"{name}@{info.get('revision', 'unversioned')}" for name, info in bundles.items()
    )
    assert event.body.policy_version == ",".join(expected)

    unbundled = _documented()
    del unbundled["bundles"]
    assert _map(unbundled).body.policy_version == "unversioned"
    assert _map({**unbundled, "revision": "legacy-7"}).body.policy_version == "legacy-7"


def test_a_slash_prefixed_path_names_the_same_policy_and_a_query_stands_in() -> None:
    sample = _documented()
    slashed = _map({**sample, "path": "/" + sample["path"]})
    assert slashed.body.policy_id == sample["path"]
    assert slashed.body.context["opa.path"] == "/" + sample["path"]
    query = {key: value for key, value in sample.items() if key != "path"}
    query["query"] = "data.http.example.authz.allow"
    assert _map(query).body.policy_id == query["query"]
    del query["query"]
    assert _rejected(query).reason == "opa_path_missing"


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        (["salary:read", "hr:read"], ["salary:read", "hr:read"]),
        ("salary:read hr:read", ["salary:read", "hr:read"]),
    ],
)
def test_data_scope_from_a_list_or_an_oauth_string(scopes: Any, expected: list[str]) -> None:
    assert _map(_with_input(_documented(), scopes=scopes)).body.data_scope == expected


def test_a_missing_resource_is_rejected_naming_the_paths_tried() -> None:
    sample = _documented()
    rejection = _rejected({**sample, "input": {"method": "GET"}})
    assert rejection.reason == "opa_resource_missing"
    for path in MAPPING.resource:
        assert f"input.{path}" in rejection.detail
    # A nested value is no resource: the next path is tried.
    nested = _with_input(sample, resource={"kind": "salary"})
    assert _map(nested).body.resource == sample["input"]["path"]


def test_mapping_overrides_paths_and_engine() -> None:
    mapping = OpaMapping(
        resource=("target.name",),
        action=("verb",),
        data_scope=("claims.scp",),
        subject=("claims.client_id",),
        policy_engine="opa-edge",
    )
    sample = {
        **_documented(),
        "input": {
            "target": {"name": "payroll"},
            "verb": "export",
            "claims": {"scp": ["payroll:read"], "client_id": "agent-7"},
        },
    }
    event = _map(sample, mapping)
    claims = sample["input"]["claims"]
    assert (event.body.resource, event.body.action) == ("payroll", "export")
    assert event.body.data_scope == claims["scp"]
    assert event.body.context["subject"] == claims["client_id"]
    assert event.body.policy_engine == "opa-edge"
    assert event.task_id == records.synthetic_task_id(ORIGIN, "opa-subject", claims["client_id"])


def test_the_mapping_is_closed_and_frozen() -> None:
    with pytest.raises(ValidationError):
        OpaMapping.model_validate({"resources": ["resource"]})
    with pytest.raises(ValidationError):
        OpaMapping.model_validate({"resource": []})
    with pytest.raises(ValidationError):
        MAPPING.policy_engine = "other"  # type: ignore[misc]


# ---- custody context ----------------------------------------------------------------------

PARENT = CustodyContext.new_root("root-task")
CHILD = PARENT.child("child-task")


def _context_fields(ctx: CustodyContext) -> dict[str, Any]:
    return {
        "root_task_id": ctx.root_task_id,
        "task_id": ctx.task_id,
        "parent_task_id": ctx.parent_task_id,
        "depth": ctx.depth,
    }


def _position(event: AuthzDecisionEvent) -> CustodyContext:
    return CustodyContext(event.root_task_id, event.task_id, event.depth, event.parent_task_id)


@pytest.mark.parametrize(
    "custody",
    [_context_fields(CHILD), CHILD.format(), {"context": CHILD.format()}],
    ids=["object", "compact", "object-with-compact"],
)
def test_the_custody_context_of_the_input(custody: Any) -> None:
    event = _map(_with_input(_documented(), custody=custody))
    assert _position(event) == CHILD
    assert records.SYNTHETIC_ATTRIBUTE not in event.attributes


def test_the_custody_context_of_the_labels() -> None:
    sample = _documented()
    labels = {
        **sample["labels"],
        "custody_root_task_id": CHILD.root_task_id,
        "custody_task_id": CHILD.task_id,
        "custody_parent_task_id": CHILD.parent_task_id,
        "custody_depth": str(CHILD.depth),
    }
    assert _position(_map({**sample, "labels": labels})) == CHILD
    compact = {**sample["labels"], "custody_context": PARENT.format()}
    assert _position(_map({**sample, "labels": compact})) == PARENT
    # The input's context is the decision's own; the labels' is the instance's default.
    both = _with_input({**sample, "labels": compact}, custody=CHILD.format())
    assert _position(_map(both)) == CHILD


def test_an_input_custody_object_without_a_position_falls_through() -> None:
    sample = _with_input(_documented(), custody={"tenant": "acme", "workload_id": "agent-7"})
    event = _map(sample)
    assert event.attributes[records.SYNTHETIC_ATTRIBUTE] == "true"
    assert event.body.context["subject"] == "agent-7"
    assert event.task_id == records.synthetic_task_id(ORIGIN, "opa-subject", "agent-7")


def test_the_synthetic_task_is_deterministic_per_subject() -> None:
    sample = _with_input(_documented(), subject="agent-7")
    first = _map(sample)
    second = _map({**sample, "decision_id": "0f5e2b8a-1c1d-4c55-9f0e-3b8a6a0c2d11"})
    assert (
        first.task_id
        == second.task_id
        == records.synthetic_task_id(ORIGIN, "opa-subject", "agent-7")
    )
    assert first.event_id != second.event_id
    assert _map(sample).task_id == first.task_id


@pytest.mark.parametrize(
    ("custody", "problem"),
    [
        ("2;0;a;a;", "expected '1;"),
        ({"context": 7}, "not a string"),
        ({"task_id": "t"}, "root_task_id"),
        ({"root_task_id": "r", "task_id": "t", "depth": 0}, "task_id must equal root_task_id"),
        ({"root_task_id": "r", "task_id": "t", "parent_task_id": "r", "depth": -1}, "depth"),
        ({"root_task_id": "r", "task_id": "t", "parent_task_id": "r", "depth": True}, "depth"),
        ({"root_task_id": "r", "task_id": "t", "parent_task_id": 5, "depth": 1}, "parent_task_id"),
        ({"root_task_id": "r", "task_id": "t", "parent_task_id": "r"}, "parent_task_id"),
        (42, "neither an object nor"),
    ],
)
def test_a_malformed_custody_context_is_rejected(custody: Any, problem: str) -> None:
    rejection = _rejected(_with_input(_documented(), custody=custody))
    assert rejection.reason == "opa_custody_context_invalid"
    assert rejection.detail.startswith("input.custody")
    assert problem in rejection.detail


def test_a_malformed_label_context_is_rejected() -> None:
    sample = _documented()
    labels = {**sample["labels"], "custody_task_id": "t", "custody_root_task_id": "r"}
    labels["custody_depth"] = "one"
    rejection = _rejected({**sample, "labels": labels})
    assert (rejection.reason, rejection.detail) == (
        "opa_custody_context_invalid",
        "labels: depth is not a non-negative integer",
    )


def test_a_masked_custody_context_is_rejected() -> None:
    sample = _with_input(
        _documented(), custody={**_context_fields(CHILD), "task_id": "**REDACTED**"}
    )
    rejection = _rejected({**sample, "masked": ["/input/custody/task_id"]})
    assert rejection.reason == "opa_custody_context_invalid"
    assert "masked" in rejection.detail


def test_the_tenant_a_record_claims() -> None:
    sample = _documented()
    assert tenant_named(sample, MAPPING) is None
    labelled = {**sample, "labels": {**sample["labels"], "tenant": "globex"}}
    assert tenant_named(labelled, MAPPING) == "globex"
    claimed = _with_input(labelled, custody={"tenant": "initech"})
    assert tenant_named(claimed, MAPPING) == "initech"
    masked = {
        **_with_input(labelled, custody={"tenant": "**REDACTED**"}),
        "masked": ["/input/custody/tenant"],
    }
    assert tenant_named(masked, MAPPING) == "globex"
    # A masked tenant hides no position in the tree: the decision still maps.
    assert _map(masked).body.decision == "ALLOW"


# ---- secrets, ids, timestamps -------------------------------------------------------------


def test_a_jwt_in_the_input_is_redacted_and_named() -> None:
    sample = _with_input(
        _documented(),
        path=f"/salary/bob?access_token={JWT}",
        headers={"authorization": f"Bearer {JWT}"},
        subject=JWT,
    )
    event = _map(sample)
    assert JWT not in event.model_dump_json()
    assert event.body.resource == "/salary/bob?access_token=[REDACTED]"
    redacted = event.attributes[records.REDACTED_ATTRIBUTE].split(",")
    assert "body.resource:jwt" in redacted
    assert "body.context.subject:jwt" in redacted
    # A secret-looking subject keys no task: the decision stands alone.
    assert event.task_id == records.synthetic_task_id(ORIGIN, "opa-subject", sample["decision_id"])


def test_a_missing_decision_id_is_rejected() -> None:
    sample = _documented()
    del sample["decision_id"]
    assert _rejected(sample).reason == "opa_decision_id_missing"
    assert _rejected({**sample, "decision_id": {"id": 1}}).reason == "opa_decision_id_missing"


@pytest.mark.parametrize(
    "stamp", ["yesterday", "2019-06-03T20:07:16", 1559592436, "2019-13-03T20:07:16Z"]
)
def test_a_bad_timestamp_is_rejected(stamp: Any) -> None:
    rejection = _rejected({**_documented(), "timestamp": stamp})
    assert rejection.reason == "opa_timestamp_invalid"
    assert str(stamp) not in rejection.detail


def test_a_missing_timestamp_is_rejected() -> None:
    sample = _documented()
    del sample["timestamp"]
    assert _rejected(sample).reason == "opa_timestamp_missing"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-06-03T20:07:16.939402185Z", datetime(2019, 6, 3, 20, 7, 16, 939402, UTC)),
        ("2020-07-08T20:17:27.7568234Z", datetime(2020, 7, 8, 20, 17, 27, 756823, UTC)),
        (
            "2020-07-08T22:17:27.5+02:00",
            datetime(2020, 7, 8, 22, 17, 27, 500000, timezone(timedelta(hours=2))),
        ),
        ("2018-01-01T00:00:00Z", datetime(2018, 1, 1, tzinfo=UTC)),
        # RFC 3339 allows these; datetime.fromisoformat refuses them.
        ("2019-06-03t20:07:16.939402185z", datetime(2019, 6, 3, 20, 7, 16, 939402, UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999999, UTC)),
        ("2019-06-03t20:07:16+24:00", None),
        ("2019-02-30T20:07:16Z", None),
        (
            "2019-06-03T20:07:16.1234567-05:30",
            datetime(2019, 6, 3, 20, 7, 16, 123456, timezone(-timedelta(hours=5, minutes=30))),
        ),
    ],
)
def test_rfc3339_timestamps_parse(text: str, expected: datetime | None) -> None:
    assert parse_timestamp(text) == expected


def test_event_ids_are_deterministic_per_origin() -> None:
    sample = _documented()
    assert _map(sample).event_id == _map(json.loads(json.dumps(sample))).event_id
    other = map_decision(sample, records.Origin(ORIGIN.tenant, "opa-staging"), MAPPING)
    assert _event(other).event_id != _map(sample).event_id


# ---- saved logs ---------------------------------------------------------------------------


def test_an_array_and_json_lines_read_the_same_decisions() -> None:
    upload = _upload()
    assert list(read_decisions((DATA / "upload.json").read_text())) == upload
    # The JSON-lines sample has a blank line, which is no record.
    assert list(read_decisions((DATA / "decisions.jsonl").read_text())) == upload


def test_console_output_yields_the_decisions_without_the_logger_fields() -> None:
    lines = (DATA / "console.log").read_text().splitlines()
    raw = [json.loads(line) for line in lines]
    items = list(read_decisions("\n".join(lines)))
    assert len(items) == len(raw)
    for item, line in zip(items, raw, strict=True):
        assert isinstance(item, dict)
        if line.get("type") == DECISION_LOG_TYPE:
            assert item == {key: value for key, value in line.items() if key not in LOGGER_FIELDS}
        else:
            # The server's own line passes as it is, and the mapping skips it.
            assert item == line
            assert map_decision(item, ORIGIN, MAPPING) == records.Skipped(
                "opa_log_line_not_a_decision"
            )


def test_console_decisions_map_like_uploaded_ones() -> None:
    items = [
        item
        for item in read_decisions((DATA / "console.log").read_text())
        if isinstance(item, dict)
    ]
    documented = _documented()
    (console,) = [item for item in items if item.get("decision_id") == documented["decision_id"]]
    uploaded = _map(documented)
    from_console = _map(console)
    assert from_console.body == uploaded.body
    assert from_console.event_id == uploaded.event_id
    assert from_console.attributes["opa.req_id"] == str(console["req_id"])

    (envoy,) = [item for item in items if isinstance(item.get("result"), dict)]
    event = _map(envoy)
    http = envoy["input"]["attributes"]["request"]["http"]
    assert (event.body.resource, event.body.action) == (http["path"], http["method"])
    assert event.body.decision == "ALLOW"
    principal = envoy["input"]["attributes"]["source"]["principal"]
    assert event.body.context["subject"] == principal
    assert event.task_id == records.synthetic_task_id(ORIGIN, "opa-subject", principal)
    assert "opa.requested_by" not in event.attributes


def test_a_broken_line_is_rejected_and_the_others_come_through() -> None:
    lines = [line for line in (DATA / "decisions.jsonl").read_text().splitlines() if line]
    broken = lines[0][: len(lines[0]) // 2]
    text = "\n".join([lines[0], broken, *lines[1:], "[1, 2]", '"text"'])
    items = list(read_decisions(text))
    decisions = [item for item in items if isinstance(item, dict)]
    assert decisions == [json.loads(line) for line in lines]
    rejections = [item for item in items if isinstance(item, Rejection)]
    assert {r.reason for r in rejections} == {"opa_malformed_json"}
    details = [r.detail for r in rejections]
    assert details[0].startswith("line 2: ")
    assert broken not in details[0]
    assert lines[0][:20] not in details[0]
    last = len(lines) + 2
    assert details[1:] == [
        f"line {last}: array item 0 (number) is not an object",
        f"line {last}: array item 1 (number) is not an object",
        f"line {last + 1}: a JSON string, not an object",
    ]
    assert items.index(rejections[0]) == 1


def test_arrays_one_after_another_and_pretty_printed_objects() -> None:
    upload = _upload()
    text = json.dumps(upload[:1]) + "\n" + json.dumps(upload[1:], indent=2) + "\n"
    text += json.dumps(upload[0], indent=2)
    assert list(read_decisions(text)) == [*upload, upload[0]]
    assert list(read_decisions("\n  \n")) == []
    crlf = "\ufeff" + "\r\n".join(json.dumps(item) for item in upload)
    assert list(read_decisions(crlf)) == upload


def test_an_upload_body_is_a_json_array() -> None:
    body = gzip.decompress(gzip.compress((DATA / "upload.json").read_bytes()))
    assert decisions_of_upload(body) == _upload()
    with pytest.raises(ValueError, match="not an array"):
        decisions_of_upload(json.dumps(_documented()).encode())
    with pytest.raises(ValueError, match="not JSON"):
        decisions_of_upload(b'[{"decision_id": ')
    with pytest.raises(ValueError, match="not UTF-8"):
        decisions_of_upload(b"[\xff\xfe\xfd]")
