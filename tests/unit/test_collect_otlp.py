"""The OTLP adapter on the documented shapes (tests/data/otlp): OTLP/JSON and protobuf
decoding to the same spans, malformed bodies and ids, and the GenAI/MCP mapping of a
multi-agent trace (tasks, the delegation, tool accesses) whatever order its spans arrive
in, with held spans, cut chains, custody contexts, rejections and duplicates."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterable
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from processors.collect import records
from processors.collect.otlp import OtlpMapping, TraceAssembler
from processors.collect.otlp_spans import OBSERVE_ONLY_ATTRIBUTE
from processors.collect.otlp_wire import OtlpDecodeError, Span, spans_of_json, spans_of_protobuf
from processors.collect.records import Mapped, Outcome, Rejection
from schemas.models import Envelope
from tests.support import REPO
from tests.support.collect import protobuf_of

ORIGIN = records.Origin("acme-prod", "research-crew")
SAMPLE = REPO / "tests" / "data" / "otlp" / "multi_agent.json"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PLANNER, RESEARCHER, CHAT = "00f067aa0ba902b7", "b7ad6b7169203331", "53995c3f42cd8ad8"
TOOL, MCP_CLIENT, MCP_SERVER = "a2fb4a1d1a96d312", "c4e8d3a1b2f60917", "d9f1e2c3b4a50618"
START = 1_793_613_600  # the sample's first span: 2026-11-02T10:00:00Z
NOW = START + 60.0


def sample_json() -> dict[str, Any]:
    return dict(json.loads(SAMPLE.read_bytes()))


def spans() -> list[Span]:
    return spans_of_json(SAMPLE.read_bytes())


def by_id(found: Iterable[Span]) -> dict[str, Span]:
    return {span.span_id: span for span in found}


def with_attributes(span: Span, **changes: Any) -> Span:
    """``span`` with attributes set (a value) or removed (None); dots spelled ``__``."""
    attributes = dict(span.attributes)
    for name, value in changes.items():
        key = name.replace("__", ".")
        if value is None:
            attributes.pop(key, None)
        else:
            attributes[key] = value
    return dataclasses.replace(span, attributes=attributes)


def events(outcomes: Iterable[Outcome]) -> list[Envelope]:
    return [event for o in outcomes if isinstance(o, Mapped) for event in o.events]


def of_type(outcomes: Iterable[Outcome], event_type: str) -> list[Envelope]:
    return [e for e in events(outcomes) if e.event_type == event_type]


def body(event: Envelope) -> Any:
    return getattr(event, "body")  # noqa: B009 - every concrete event has one


def reasons(outcomes: Iterable[Outcome]) -> list[str]:
    return sorted(o.reason for o in outcomes if not isinstance(o, Mapped))


def assembler(**settings: Any) -> TraceAssembler:
    observe_only = settings.pop("observe_only", False)
    return TraceAssembler(ORIGIN, OtlpMapping(**settings), observe_only=observe_only)


def task_of(span_id: str) -> str:
    return f"otel:{TRACE}:{span_id}"


# ---- wire ------------------------------------------------------------------------------


def test_json_and_protobuf_decode_to_the_same_spans() -> None:
    from_json = spans()
    from_protobuf = spans_of_protobuf(protobuf_of(sample_json()))
    assert from_protobuf == from_json
    assert len(from_json) == 6
    mcp = by_id(from_json)[MCP_CLIENT]
    assert (mcp.trace_id, mcp.parent_span_id, mcp.kind) == (TRACE, RESEARCHER, 3)
    assert (mcp.status_code, mcp.status_message) == (2, "file not found: q3-report.md")
    assert mcp.start_ns == (START + 3.5) * 10**9
    assert mcp.attributes["server.port"] == 8443
    assert mcp.resource["service.name"] == "research-crew"
    assert by_id(from_json)[MCP_SERVER].resource["service.name"] == "docs-mcp-server"
    assert by_id(from_json)[PLANNER].parent_span_id is None
    assert by_id(from_json)[PLANNER].attributes["custody.data_scope"] == ("docs:read", "web:search")
    assert all(span.problem is None for span in from_json)


def test_a_traces_data_message_as_the_collector_s_kafka_exporter_writes_it() -> None:
    assert spans_of_protobuf(protobuf_of(sample_json(), TracesData())) == spans()


def test_json_accepts_proto_field_names_uppercase_hex_and_numeric_int64() -> None:
    document = sample_json()
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    span["trace_id"] = span.pop("traceId").upper()
    span["start_time_unix_nano"] = int(span.pop("startTimeUnixNano"))
    decoded = by_id(spans_of_json(json.dumps(document).encode()))[TOOL]
    assert decoded == by_id(spans())[TOOL]


def test_any_values_become_python_values() -> None:
    values = [
        ("s", {"stringValue": "text"}, "text"),
        ("b", {"boolValue": True}, True),
        ("i", {"intValue": "-42"}, -42),
        ("d", {"doubleValue": 0.25}, 0.25),
        ("a", {"arrayValue": {"values": [{"stringValue": "x"}, {"intValue": 3}]}}, ("x", 3)),
        (
            "kv",
            {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": False}}]}},
            '{"k": false}',
        ),
        ("bytes", {"bytesValue": base64.b64encode(b"\x01\xfe").decode()}, "01fe"),
        ("empty", {}, None),
    ]
    document = sample_json()
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"] = [{"key": key, "value": value} for key, value, _ in values]
    expected = {key: result for key, _, result in values if result is not None}
    for decoded in (
        spans_of_json(json.dumps(document).encode()),
        spans_of_protobuf(protobuf_of(document)),
    ):
        assert by_id(decoded)[CHAT].attributes == expected


@pytest.mark.parametrize(
    "body",
    [b"\x0a\xff", b"\x00", b"garbage that is no protobuf", b"\x0a\x05\x0a\x03\x0a"],
)
def test_malformed_protobuf_is_refused_whole(body: bytes) -> None:
    with pytest.raises(OtlpDecodeError, match="protobuf"):
        spans_of_protobuf(body)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"resourceSpans": {}}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": ["span"]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": [{"value": {}}]}]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
        b'{"resourceSpans": [{"resource": {"attributes": [{"key": "k", '
        b'"value": {"intValue": 1.5}}]}}]}',
    ],
)
def test_malformed_json_is_refused_whole(body: bytes) -> None:
    with pytest.raises(OtlpDecodeError):
        spans_of_json(body)


def test_invalid_ids_are_the_span_s_problem_not_the_request_s() -> None:
    document = sample_json()
    crew = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    crew[0]["traceId"] = "0" * 32
    crew[1]["spanId"] = "abcd"
    crew[2]["spanId"] = "zz" * 8
    for decoded in (spans_of_json(json.dumps(document).encode()),):
        problems = [span.problem for span in decoded]
        assert problems[:3] == [
            "trace_id is not 16 bytes with a non-zero bit",
            "span_id is not 8 bytes with a non-zero bit",
            "an id is not a hex string",
        ]
        assert problems[3:] == [None] * 3
    del crew[2]
    decoded = spans_of_protobuf(protobuf_of(document))
    assert [span.problem is not None for span in decoded] == [True, True, False, False, False]
    outcomes = assembler().feed(decoded, NOW)
    assert reasons(outcomes).count("otlp_invalid_id") == 2


# ---- the multi-agent trace -------------------------------------------------------------


def test_the_multi_agent_trace_becomes_two_tasks_a_delegation_and_two_accesses() -> None:
    mapper = assembler()
    outcomes = mapper.feed(spans(), NOW)
    planner, researcher = sorted(of_type(outcomes, "TASK_DECLARED"), key=lambda e: e.depth)
    assert (planner.task_id, planner.root_task_id, planner.depth) == (task_of(PLANNER),) * 2 + (0,)
    assert planner.parent_task_id is None
    assert planner.actor.workload_id == "otel://research-crew/agent/agent_planner_01"
    assert planner.actor.kind == "AGENT"
    assert planner.actor.instance_id == "research-crew-7f9c"
    assert body(planner).purpose.startswith("Plans the answer")
    assert body(planner).requested_scopes == ["docs:read", "web:search"]
    assert planner.attributes["gen_ai.conversation.id"] == "conv_5j66UpCpwteGg4YSxUnt7lPY"
    assert planner.attributes[records.SOURCE_ATTRIBUTE] == "research-crew"
    assert (researcher.task_id, researcher.depth) == (task_of(RESEARCHER), 1)
    assert (researcher.root_task_id, researcher.parent_task_id) == (task_of(PLANNER),) * 2
    assert body(researcher).requested_scopes == ["docs:read", "web:search"]
    assert researcher.event_time.timestamp() == START + 1

    (delegation,) = of_type(outcomes, "DELEGATION")
    assert delegation.task_id == task_of(PLANNER)
    assert delegation.actor == planner.actor
    assert body(delegation).delegator == planner.actor.workload_id
    assert body(delegation).delegatee == researcher.actor.workload_id
    assert body(delegation).child_task_id == researcher.task_id
    assert body(delegation).scopes == ["docs:read", "web:search"]
    assert body(delegation).decision_id == f"otel-delegation:{RESEARCHER}"

    accesses = {body(e).tool: e for e in of_type(outcomes, "ACCESS")}
    assert sorted(accesses) == ["read_file", "web_search"]
    search, read = accesses["web_search"], accesses["read_file"]
    for access in (search, read):
        assert (access.task_id, access.depth) == (researcher.task_id, 1)
        assert access.actor == researcher.actor
        assert body(access).token_id == f"unattested:{researcher.actor.workload_id}"
        assert body(access).decision_id is None
        assert OBSERVE_ONLY_ATTRIBUTE not in access.attributes
    assert body(search).resource == "tool://web_search"
    assert (body(search).action, body(search).outcome) == ("execute_tool", "SUCCESS")
    assert body(search).data_scope == ["web:search"]
    assert search.attributes["gen_ai.tool.call.id"] == "call_mszuSIzqtI65i1wAUOE8w5H4"
    assert body(read).resource == "mcp://docs-mcp.internal.example:8443"
    assert (body(read).action, body(read).outcome) == ("tools/call", "FAILURE")
    assert body(read).detail == "error.type tool_error: file not found: q3-report.md"
    assert read.attributes["mcp.session.id"] == "191c4850af6c49e08843a3f6c80e5046"
    assert (read.attributes["otel.trace_id"], read.attributes["otel.span_id"]) == (
        TRACE,
        MCP_CLIENT,
    )
    assert read.event_time.timestamp() == START + 3.5
    # The chat span is no agent's; the MCP server's span is the client's call seen twice.
    assert reasons(outcomes) == ["otlp_nested_tool_call", "otlp_not_agent_span"]
    assert mapper.pending == 0
    assert mapper.counts["events"] == 5


def test_children_arrive_first_and_wait_for_their_parents() -> None:
    by_span = by_id(spans())
    mapper = assembler()
    first = mapper.feed([by_span[s] for s in (MCP_SERVER, CHAT, TOOL, MCP_CLIENT)], NOW)
    assert reasons(first) == ["otlp_not_agent_span"]
    assert mapper.pending == 3
    second = mapper.feed([by_span[RESEARCHER]], NOW + 5)
    assert second == []
    assert mapper.pending == 4
    third = mapper.feed([by_span[PLANNER]], NOW + 10)
    assert mapper.pending == 0
    together = assembler().feed(spans(), NOW)
    assert sorted(e.event_id for e in events(first + second + third)) == sorted(
        e.event_id for e in events(together)
    )
    assert {e.event_id: e for e in events(third)} == {e.event_id: e for e in events(together)}


def test_a_parent_that_never_comes_cuts_the_chain_after_the_hold() -> None:
    mapper = assembler(hold_seconds=30)
    arrived = mapper.feed([s for s in spans() if s.span_id != PLANNER], NOW)
    assert not events(arrived)
    assert mapper.expire(NOW + 29.9) == []
    outcomes = mapper.expire(NOW + 30)
    (researcher,) = of_type(outcomes, "TASK_DECLARED")
    assert (researcher.task_id, researcher.depth) == (task_of(RESEARCHER), 0)
    assert researcher.parent_task_id is None
    assert of_type(outcomes, "DELEGATION") == []
    assert {e.task_id for e in of_type(outcomes, "ACCESS")} == {task_of(RESEARCHER)}
    assert mapper.pending == 0
    assert mapper.counts["chains_cut"] == 1
    # The planner, late: a root of its own, and nothing mapped twice.
    late = mapper.feed([by_id(spans())[PLANNER]], NOW + 40)
    assert [e.event_type for e in events(late)] == ["TASK_DECLARED"]


def test_feed_maps_what_waited_too_long() -> None:
    mapper = assembler(hold_seconds=10)
    mapper.feed([by_id(spans())[RESEARCHER]], NOW)
    outcomes = mapper.feed([by_id(spans())[CHAT]], NOW + 10)
    assert [e.task_id for e in of_type(outcomes, "TASK_DECLARED")] == [task_of(RESEARCHER)]


def test_drain_maps_every_held_span() -> None:
    mapper = assembler()
    mapper.feed([s for s in spans() if s.span_id != PLANNER], NOW)
    outcomes = mapper.drain()
    assert len(of_type(outcomes, "ACCESS")) == 2
    assert mapper.pending == 0


def test_the_pending_bound_maps_the_oldest_early() -> None:
    by_span = by_id(spans())
    mapper = assembler(max_pending_spans=1)
    assert mapper.feed([by_span[TOOL]], NOW) == []
    outcomes = mapper.feed([by_span[MCP_CLIENT]], NOW + 1)
    (access,) = of_type(outcomes, "ACCESS")
    assert body(access).tool == "web_search"
    assert access.attributes[records.SYNTHETIC_ATTRIBUTE] == "true"
    assert mapper.pending == 1


def test_cycles_of_parents_end_when_the_hold_does() -> None:
    planner = by_id(spans())[PLANNER]
    self_parent = dataclasses.replace(planner, parent_span_id=PLANNER)
    a = dataclasses.replace(planner, trace_id="1" * 32, span_id="a" * 16, parent_span_id="b" * 16)
    b = dataclasses.replace(planner, trace_id="1" * 32, span_id="b" * 16, parent_span_id="a" * 16)
    mapper = assembler()
    assert mapper.feed([self_parent, a, b], NOW) == []
    outcomes = mapper.expire(NOW + 30)
    assert len(of_type(outcomes, "TASK_DECLARED")) == 3
    assert len(of_type(outcomes, "DELEGATION")) == 1
    assert mapper.pending == 0


# ---- custody context, synthetic tasks, observe-only ----------------------------------------


def test_a_custody_context_places_the_task_and_its_accesses() -> None:
    sample = by_id(spans())
    researcher = with_attributes(
        sample[RESEARCHER], custody__context="1;1;sdk%3Aroot;sdk-task;sdk%3Aroot"
    )
    outcomes = assembler().feed([*(sample[s] for s in (TOOL, PLANNER)), researcher], NOW)
    declared = {e.task_id: e for e in of_type(outcomes, "TASK_DECLARED")}
    assert declared["sdk-task"].root_task_id == "sdk:root"
    assert (declared["sdk-task"].parent_task_id, declared["sdk-task"].depth) == ("sdk:root", 1)
    # Its parent is not the planner's task: the SDK that delegated publishes the delegation.
    assert of_type(outcomes, "DELEGATION") == []
    (access,) = of_type(outcomes, "ACCESS")
    assert (access.root_task_id, access.task_id) == ("sdk:root", "sdk-task")


def test_a_custody_context_naming_the_agent_above_keeps_the_delegation() -> None:
    sample = by_id(spans())
    researcher = with_attributes(
        sample[RESEARCHER],
        custody__task_id="sdk-task",
        custody__root_task_id=task_of(PLANNER),
        custody__parent_task_id=task_of(PLANNER),
        custody__depth="1",
        custody__decision_id="dec-7",
        custody__purpose="read the sources for the Q3 report",
    )
    outcomes = assembler().feed([sample[PLANNER], researcher], NOW)
    (delegation,) = of_type(outcomes, "DELEGATION")
    assert body(delegation).child_task_id == "sdk-task"
    assert body(delegation).decision_id == "dec-7"
    (child,) = [e for e in of_type(outcomes, "TASK_DECLARED") if e.depth == 1]
    assert body(child).purpose == "read the sources for the Q3 report"


def test_a_malformed_custody_context_is_rejected() -> None:
    span = with_attributes(by_id(spans())[PLANNER], custody__context="2;0;a;a;")
    outcomes = assembler().feed([span], NOW)
    assert reasons(outcomes) == ["otlp_custody_context_invalid"]


def test_a_tool_span_without_an_agent_lands_in_a_synthetic_task_of_its_trace() -> None:
    tool = dataclasses.replace(by_id(spans())[TOOL], parent_span_id=None)
    outcomes = assembler().feed([tool], NOW)
    (access,) = of_type(outcomes, "ACCESS")
    expected = records.synthetic_task_id(ORIGIN, "otel-trace", TRACE)
    assert (access.root_task_id, access.task_id, access.depth) == (expected, expected, 0)
    assert access.attributes[records.SYNTHETIC_ATTRIBUTE] == "true"
    assert access.actor.workload_id == "otel://research-crew"
    assert access.actor.kind == "SERVICE"


def test_credentials_and_decisions_the_agent_names_are_carried() -> None:
    sample = by_id(spans())
    tool = with_attributes(
        dataclasses.replace(sample[TOOL], parent_span_id=PLANNER),
        custody__token_id="tok-42",
        custody__decision_id="d-9",
    )
    outcomes = assembler().feed([sample[PLANNER], tool], NOW)
    (access,) = of_type(outcomes, "ACCESS")
    assert (body(access).token_id, body(access).decision_id) == ("tok-42", "d-9")
    assert access.task_id == task_of(PLANNER)


def test_observe_only_sources_mark_their_accesses() -> None:
    outcomes = assembler(observe_only=True).feed(spans(), NOW)
    accesses = of_type(outcomes, "ACCESS")
    assert len(accesses) == 2
    assert all(a.attributes[OBSERVE_ONLY_ATTRIBUTE] == "true" for a in accesses)
    assert all(OBSERVE_ONLY_ATTRIBUTE not in e.attributes for e in of_type(outcomes, "DELEGATION"))


# ---- rejections, duplicates, ids ----------------------------------------------------------


def test_spans_missing_what_they_need_are_rejected_naming_it() -> None:
    sample = by_id(spans())
    nameless_tool = with_attributes(sample[TOOL], gen_ai__tool__name=None)
    nameless_agent = dataclasses.replace(
        with_attributes(sample[PLANNER], gen_ai__agent__id=None, gen_ai__agent__name=None),
        resource={},
    )
    outcomes = assembler().feed([nameless_tool, nameless_agent], NOW)
    assert reasons(outcomes) == ["otlp_missing_attribute"] * 2
    details = sorted(o.detail for o in outcomes if isinstance(o, Rejection))
    assert "gen_ai.tool.name" in details[0]
    assert "service.name" in details[1]


def test_an_mcp_span_names_its_tool_by_its_span_name_and_a_stdio_server_by_service() -> None:
    mcp = with_attributes(by_id(spans())[MCP_CLIENT], gen_ai__tool__name=None, server__address=None)
    (access,) = of_type(
        assembler().feed([dataclasses.replace(mcp, parent_span_id=None)], NOW), "ACCESS"
    )
    assert body(access).tool == "read_file"
    assert body(access).resource == "mcp://research-crew"


def test_a_rejected_agent_span_is_passed_through_to_the_agent_above() -> None:
    sample = by_id(spans())
    broken = with_attributes(sample[RESEARCHER], custody__context="not a context")
    outcomes = assembler().feed([sample[TOOL], broken, sample[PLANNER]], NOW)
    (access,) = of_type(outcomes, "ACCESS")
    assert access.task_id == task_of(PLANNER)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (START * 10**9, START * 10**9 - 1),
        ((int(NOW) + 2 * 86_400) * 10**9, (int(NOW) + 2 * 86_400 + 1) * 10**9),
        ((START - 11 * 365 * 86_400) * 10**9, (START - 11 * 365 * 86_400 + 1) * 10**9),
        (0, 10**9),
    ],
)
def test_absurd_timestamps_are_rejected(start: int, end: int) -> None:
    tool = dataclasses.replace(by_id(spans())[TOOL], start_ns=start, end_ns=end)
    outcomes = assembler().feed([tool], NOW)
    assert reasons(outcomes) == ["otlp_timestamp_absurd"]


def test_a_resent_export_is_skipped_and_maps_to_the_same_ids() -> None:
    mapper = assembler()
    first = mapper.feed(spans(), NOW)
    again = mapper.feed(spans(), NOW + 1)
    assert reasons(again) == ["otlp_duplicate_span"] * 6
    elsewhere = assembler().feed(list(reversed(spans())), NOW)
    assert sorted(e.event_id for e in events(elsewhere)) == sorted(
        e.event_id for e in events(first)
    )
    ids = {e.event_id for e in events(first)}
    assert len(ids) == 5
    other = TraceAssembler(records.Origin("acme-prod", "another"), OtlpMapping())
    assert ids.isdisjoint(e.event_id for e in events(other.feed(spans(), NOW)))


def test_one_tool_call_seen_by_two_spans_is_one_access() -> None:
    sample = by_id(spans())
    twin = dataclasses.replace(sample[TOOL], span_id="e" * 16)
    agents = [sample[RESEARCHER], sample[PLANNER]]
    outcomes = assembler().feed([*agents, sample[TOOL], twin], NOW)
    assert len(of_type(outcomes, "ACCESS")) == 1
    assert reasons(outcomes) == ["otlp_duplicate_tool_call"]
    # An MCP client span under the execute_tool span of the same call: the outer one speaks.
    mcp = dataclasses.replace(
        with_attributes(sample[MCP_CLIENT], gen_ai__tool__call__id="call_mszuSIzqtI65i1wAUOE8w5H4"),
        parent_span_id=TOOL,
    )
    outcomes = assembler().feed([mcp, sample[TOOL], *agents], NOW)
    (access,) = of_type(outcomes, "ACCESS")
    assert body(access).resource == "tool://web_search"
    assert reasons(outcomes) == ["otlp_nested_tool_call"]
    # A different call inside a tool is an access of its own.
    inner = dataclasses.replace(sample[MCP_CLIENT], parent_span_id=TOOL)
    assert len(of_type(assembler().feed([inner, sample[TOOL], *agents], NOW), "ACCESS")) == 2


def test_non_agent_spans_between_agents_are_passed_through() -> None:
    sample = by_id(spans())
    # planner -> chat (an LLM call that decided on a tool) -> tool, the tool arriving first.
    chat = dataclasses.replace(sample[CHAT], parent_span_id=PLANNER)
    tool = dataclasses.replace(sample[TOOL], parent_span_id=CHAT)
    mapper = assembler()
    assert mapper.feed([tool], NOW) == []
    assert reasons(mapper.feed([chat], NOW)) == ["otlp_not_agent_span"]
    (access,) = of_type(mapper.feed([sample[PLANNER]], NOW), "ACCESS")
    assert access.task_id == task_of(PLANNER)


def test_secret_looking_values_are_screened() -> None:
    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    tool = with_attributes(
        dataclasses.replace(by_id(spans())[TOOL], parent_span_id=None, status_code=2),
        error__type="auth",
    )
    tool = dataclasses.replace(tool, status_message=f"token {secret} refused")
    (access,) = of_type(assembler().feed([tool], NOW), "ACCESS")
    assert secret not in json.dumps(access.model_dump(mode="json"))
    assert records.REDACTED_ATTRIBUTE in access.attributes


def test_a_remote_agent_seen_by_its_caller_and_itself_is_one_task() -> None:
    sample = by_id(spans())
    client = dataclasses.replace(sample[RESEARCHER], kind=3)
    own = dataclasses.replace(
        sample[RESEARCHER],
        span_id="f" * 16,
        parent_span_id=RESEARCHER,
        resource={"service.name": "researcher-service"},
    )
    tool = dataclasses.replace(sample[TOOL], parent_span_id="f" * 16)
    outcomes = assembler().feed([tool, own, client, sample[PLANNER]], NOW)
    assert sorted(e.task_id for e in of_type(outcomes, "TASK_DECLARED")) == [
        task_of(PLANNER),
        task_of(RESEARCHER),
    ]
    assert len(of_type(outcomes, "DELEGATION")) == 1
    (access,) = of_type(outcomes, "ACCESS")
    assert access.task_id == task_of(RESEARCHER)
    assert reasons(outcomes) == ["otlp_nested_agent_span"]
    # In one process (an INTERNAL span), the same agent under itself is a delegation.
    inner = dataclasses.replace(own, resource=sample[RESEARCHER].resource)
    outcomes = assembler().feed([inner, sample[RESEARCHER], sample[PLANNER]], NOW)
    assert len(of_type(outcomes, "DELEGATION")) == 2


def test_memory_is_bounded_and_a_forgotten_trace_maps_to_the_same_ids() -> None:
    mapper = assembler(max_remembered_spans=6)
    first = mapper.feed(spans(), NOW)
    other = [dataclasses.replace(span, trace_id="7" * 32) for span in spans()]
    assert len(events(mapper.feed(other, NOW))) == 5
    assert mapper.remembered == 6
    again = mapper.feed(spans(), NOW + 1)
    # The agents map again, to the same events; the tool calls' ids are still remembered.
    assert len(of_type(again, "TASK_DECLARED")) == 2
    assert {e.event_id for e in events(again)} < {e.event_id for e in events(first)}
    assert reasons(again).count("otlp_duplicate_tool_call") == 2
