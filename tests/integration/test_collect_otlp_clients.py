"""Real OpenTelemetry clients into ``custody collect``'s ``POST /v1/traces`` on a real
broker: the OpenTelemetry Python SDK's OTLP/HTTP exporter sending an agent fleet's GenAI
spans (tests/support/mcp_agent.py), and that fleet calling tools on a real MCP server over
stdio (tests/support/mcp_server.py, the ``mcp`` SDK), each process exporting its own
spans with its own collect token. What reaches Kafka is the fleet's custody tree: the
planner's and the researcher's tasks, the delegation between them, and every tool call an
access in the researcher's task."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from processors.collect.mapping_file import CollectMapping
from processors.collect.otlp import OtlpMapping
from producers.settings import Settings
from schemas.codec import AvroCodec
from schemas.models import (
    AccessEvent,
    AccessOutcome,
    CustodyEvent,
    DelegationEvent,
    TaskDeclaredEvent,
)
from tests.support.broker import payload, read_to_end
from tests.support.collect import RunningCollector
from tests.support.mcp_agent import (
    LOCAL_TOOL,
    PLANNER,
    RESEARCHER,
    SERVICE_NAME,
    AgentFleet,
    FleetRun,
    McpServerLaunch,
    text_of,
)
from tests.support.mcp_server import EXPORT, SEARCH
from tests.support.mcp_server import SERVICE_NAME as MCP_SERVICE_NAME
from tests.support.polling import until

pytestmark = pytest.mark.integration

TENANT = "acme"
QUESTION = "why are refunds late?"


def running_collector(settings: Settings, tmp_path: Path, hold_seconds: float) -> RunningCollector:
    """A collector whose OTLP adapter holds a span awaiting its parent ``hold_seconds``."""
    return RunningCollector(
        settings.model_copy(
            update={
                "collect_tokens_file": tmp_path / "tokens.json",
                "collect_ack_timeout_seconds": 8.0,
                "tenant": TENANT,
            }
        ),
        CollectMapping(otlp=OtlpMapping(hold_seconds=hold_seconds)),
    )


@pytest.fixture
def collector(settings: Settings, tmp_path: Path) -> Iterator[RunningCollector]:
    running = running_collector(settings, tmp_path, OtlpMapping().hold_seconds)
    yield running
    running.close()


@pytest.fixture
def collector_not_holding(settings: Settings, tmp_path: Path) -> Iterator[RunningCollector]:
    # A source whose spans hang under another source's spans never sees their parents: its
    # spans are mapped as they come. The fleet exports each run in one request, so none
    # of its spans awaits a parent either.
    running = running_collector(settings, tmp_path, 0.0)
    yield running
    running.close()


@contextmanager
def fleet_of(collector: RunningCollector) -> Iterator[AgentFleet]:
    """The agent fleet exporting to ``collector`` with a token of its own."""
    running = AgentFleet(traces_endpoint(collector), collector.token(TENANT, SERVICE_NAME))
    try:
        yield running
    finally:
        running.close()


def traces_endpoint(collector: RunningCollector) -> str:
    return f"http://127.0.0.1:{collector.port}/v1/traces"


def stored_events(settings: Settings) -> list[CustodyEvent]:
    codec = AvroCodec()
    # Earlier reads' end markers stay on the topic.
    values = [payload(m) for m in read_to_end(settings)]
    return [codec.decode_event(v) for v in values if not v.startswith(b"end-marker-")]


def events_of(settings: Settings, run: FleetRun) -> list[CustodyEvent]:
    return [e for e in stored_events(settings) if e.root_task_id == run.planner.root_task_id]


def shape(events: list[CustodyEvent]) -> list[tuple[str, str]]:
    """Each event's type and task, sorted."""
    return sorted((str(e.event_type), e.task_id) for e in events)


def fleet_shape(run: FleetRun) -> list[tuple[str, str]]:
    """What the fleet's agent spans and its local tool span become."""
    planner, researcher = run.planner.task_id, run.researcher.task_id
    return sorted(
        [
            ("TASK_DECLARED", planner),
            ("DELEGATION", planner),
            ("TASK_DECLARED", researcher),
            ("ACCESS", researcher),
        ]
    )


def assert_the_fleet_tree(events: list[CustodyEvent], run: FleetRun) -> None:
    """The planner's and the researcher's tasks, the delegation and the local tool's
    access, as the fleet's spans said them."""
    declared = {e.task_id: e for e in events if isinstance(e, TaskDeclaredEvent)}
    planner = declared[run.planner.task_id]
    researcher = declared[run.researcher.task_id]
    assert (planner.depth, planner.parent_task_id) == (0, None)
    assert (researcher.depth, researcher.parent_task_id) == (1, run.planner.task_id)
    assert planner.actor.workload_id == f"otel://{SERVICE_NAME}/agent/{PLANNER[1]}"
    assert researcher.actor.workload_id == f"otel://{SERVICE_NAME}/agent/{RESEARCHER[1]}"
    assert researcher.body.purpose == f"research: {QUESTION}"
    [delegation] = [e for e in events if isinstance(e, DelegationEvent)]
    assert delegation.body.child_task_id == run.researcher.task_id
    assert delegation.body.delegator == planner.actor.workload_id
    assert delegation.body.delegatee == researcher.actor.workload_id
    [local] = [e for e in events if isinstance(e, AccessEvent) and e.body.tool == LOCAL_TOOL]
    assert local.task_id == run.researcher.task_id
    assert local.actor.workload_id == researcher.actor.workload_id
    assert (local.body.outcome, local.body.data_scope) == (AccessOutcome.SUCCESS, ["notes:read"])
    assert {e.tenant for e in events} == {TENANT}


def test_the_sdk_exporter_sends_the_fleet_s_genai_spans_as_its_custody_tree(
    collector: RunningCollector, settings: Settings
) -> None:
    with fleet_of(collector) as fleet:
        run = fleet.run(QUESTION)
    expected = fleet_shape(run)
    until(
        lambda: shape(events_of(settings, run)) == expected,
        timeout=60,
        what=lambda: f"the fleet's events {expected}, got {shape(events_of(settings, run))}",
    )
    events = events_of(settings, run)
    assert {e.producer for e in events} == {SERVICE_NAME}
    assert_the_fleet_tree(events, run)
    assert all(e.attributes["otel.trace_id"] == run.trace_id for e in events)


def test_an_mcp_server_s_tool_calls_land_in_the_calling_agent_s_task(
    collector_not_holding: RunningCollector, settings: Settings
) -> None:
    collector = collector_not_holding
    launch = McpServerLaunch(
        traces_endpoint(collector),
        collector.token(TENANT, MCP_SERVICE_NAME),
        CALLS,
    )
    with fleet_of(collector) as fleet:
        run = fleet.run(QUESTION, launch)
    assert_the_tools_answered(run)
    # Each call is told by the client's span and, from a source of its own, the server's.
    researcher = run.researcher.task_id
    expected = sorted([*fleet_shape(run), *[("ACCESS", researcher)] * 4])
    until(
        lambda: shape(events_of(settings, run)) == expected,
        timeout=60,
        what=lambda: (
            f"the fleet's and the server's events {expected}, got {shape(events_of(settings, run))}"
        ),
    )
    events = events_of(settings, run)
    assert_the_fleet_tree(events, run)
    calls = [e for e in events if isinstance(e, AccessEvent) and e.body.tool != LOCAL_TOOL]
    by_side = {(e.producer, e.body.tool): e for e in calls}
    assert sorted(by_side) == sorted(
        (producer, tool)
        for producer in (SERVICE_NAME, MCP_SERVICE_NAME)
        for tool in (SEARCH, EXPORT)
    )
    for (producer, tool), access in by_side.items():
        assert access.body.outcome == OUTCOMES[tool], (producer, tool)
        assert access.body.action == "tools/call"
        # The server's spans are in the client's trace (the traceparent in the request's
        # _meta) and in the researcher's task (the custody.context baggage beside it).
        assert access.attributes["otel.trace_id"] == run.trace_id
        assert access.task_id == researcher
    served = by_side[(MCP_SERVICE_NAME, EXPORT)]
    assert served.actor.workload_id == f"otel://{MCP_SERVICE_NAME}"
    assert served.body.detail is not None
    assert "tool_error" in served.body.detail
    assert by_side[(MCP_SERVICE_NAME, SEARCH)].body.resource == f"mcp://{MCP_SERVICE_NAME}"
    assert_the_client_s_calls(by_side[(SERVICE_NAME, SEARCH)], by_side[(SERVICE_NAME, EXPORT)])


def test_an_mcp_server_reporting_as_its_client_s_source_adds_no_second_access(
    collector: RunningCollector, settings: Settings
) -> None:
    with fleet_of(collector) as fleet:
        launch = McpServerLaunch(traces_endpoint(collector), fleet.token, CALLS)
        run = fleet.run(QUESTION, launch)
    assert_the_tools_answered(run)
    researcher = run.researcher.task_id
    expected = sorted([*fleet_shape(run), ("ACCESS", researcher), ("ACCESS", researcher)])
    until(
        lambda: shape(events_of(settings, run)) == expected,
        timeout=60,
        what=lambda: f"one access per call {expected}, got {shape(events_of(settings, run))}",
    )
    events = events_of(settings, run)
    assert_the_fleet_tree(events, run)
    calls = {
        e.body.tool: e for e in events if isinstance(e, AccessEvent) and e.body.tool != LOCAL_TOOL
    }
    assert sorted(calls) == sorted([SEARCH, EXPORT])
    assert_the_client_s_calls(calls[SEARCH], calls[EXPORT])
    # The server's spans came (each was held until the client's span above it arrived)
    # and were skipped: every span of the fleet's own is mapped.
    skipped = collector.collector.metrics.registry.get_sample_value(
        "custody_collect_records_total", {"kind": "otlp", "outcome": "skipped"}
    )
    assert skipped is not None
    assert skipped >= len(CALLS)


CALLS = ((SEARCH, {"query": "refund"}), (EXPORT, {"queue": "billing"}))
"""The researcher's MCP calls: one that answers, one that fails."""
OUTCOMES = {SEARCH: AccessOutcome.SUCCESS, EXPORT: AccessOutcome.FAILURE}


def assert_the_tools_answered(run: FleetRun) -> None:
    """What the MCP server answered the researcher."""
    assert not run.mcp_results[SEARCH].is_error
    assert "T-101" in text_of(run.mcp_results[SEARCH])
    assert run.mcp_results[EXPORT].is_error
    assert "needs an approval" in text_of(run.mcp_results[EXPORT])


def assert_the_client_s_calls(search: AccessEvent, export: AccessEvent) -> None:
    """The researcher's client spans' accesses: the agent's, each with its call id, the
    failed one FAILURE."""
    for access in (search, export):
        assert access.producer == SERVICE_NAME
        assert access.actor.workload_id == f"otel://{SERVICE_NAME}/agent/{RESEARCHER[1]}"
        assert access.attributes["gen_ai.tool.call.id"].startswith("call_")
        assert access.body.outcome == OUTCOMES[access.body.tool]
        assert access.body.token_id.startswith("unattested:")
