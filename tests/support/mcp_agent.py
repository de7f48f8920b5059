"""The tests' agent fleet, traced with the OpenTelemetry SDK and exporting to ``custody
collect`` with the OTLP/HTTP exporter, as an agent runtime does.

A planner agent (an ``invoke_agent`` span, its task bound with
:func:`producers.otel.use_custody_context`) delegates to a researcher agent (a nested
``invoke_agent`` span, the child task), which runs a local tool (an ``execute_tool`` span)
and, when given an MCP server to start, calls its tools over stdio with the ``mcp``
client: a ``tools/call <tool>`` span of kind CLIENT per call, per the MCP semantic
conventions, whose trace context and baggage the ``mcp`` client injects into the request's
``params._meta``.

The fleet's tracer provider is its own, never the global one: the ``mcp`` SDK's own client
span (``MCP send tools/call ...``) goes to the global provider, a no-op here, so it passes
the fleet's span context on to the server unchanged and each call is one client span.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from mcp import Client, StdioServerParameters
from mcp_types import CallToolResult, TextContent
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, StatusCode

from producers.context import CustodyContext
from producers.otel import CustodyBaggageSpanProcessor, use_custody_context
from tests.support import REPO

SERVICE_NAME = "research-crew"
"""The fleet's ``service.name``."""
LOCAL_TOOL = "summarize_notes"
"""The researcher's in-process tool."""
# Longer than any run: the batch goes when run() flushes it.
_ONE_BATCH_MILLIS = 600_000
PLANNER = ("planner", "agent-planner-01")
RESEARCHER = ("researcher", "agent-researcher-02")


@dataclass(frozen=True)
class McpServerLaunch:
    """How the researcher starts the MCP server (tests/support/mcp_server.py): the
    collector's traces endpoint and the server's own collect token, handed over in the
    variables the OTLP exporter reads, and the tool calls to make."""

    traces_endpoint: str
    token: str
    calls: tuple[tuple[str, dict[str, str]], ...]

    def parameters(self) -> StdioServerParameters:
        """The stdio client's parameters for the server process."""
        # The exporter reads W3C-baggage-style headers: the value is percent-encoded.
        headers = f"Authorization=Bearer%20{self.token}"
        return StdioServerParameters(
            command=sys.executable,
            args=["-m", "tests.support.mcp_server"],
            env={
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.traces_endpoint,
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS": headers,
            },
            cwd=REPO,
        )


@dataclass
class FleetRun:
    """What one run did: the planner's and the researcher's custody contexts, the trace
    they ran in, and the MCP tools' results by tool name."""

    planner: CustodyContext
    researcher: CustodyContext
    trace_id: str = ""
    mcp_results: dict[str, CallToolResult] = field(default_factory=dict)


class AgentFleet:
    """The planner and the researcher, exporting their spans to ``traces_endpoint`` (a
    collector's ``/v1/traces``) with ``token`` as their bearer collect token, gzip
    compressed, in one batch at the end of a run (as a short-lived agent process exports
    at exit), so the collector receives each span with its ancestry and a test's result
    does not depend on when the batch timer fires."""

    def __init__(self, traces_endpoint: str, token: str) -> None:
        self.token = token
        exporter = OTLPSpanExporter(
            endpoint=traces_endpoint,
            headers={"Authorization": f"Bearer {token}"},
            compression=Compression.Gzip,
        )
        self.provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        self.provider.add_span_processor(CustodyBaggageSpanProcessor())
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=_ONE_BATCH_MILLIS)
        )
        self.tracer = self.provider.get_tracer("tests.support.mcp_agent")

    @contextmanager
    def _agent(self, who: tuple[str, str], ctx: CustodyContext, purpose: str) -> Iterator[Span]:
        name, agent_id = who
        with (
            self.tracer.start_as_current_span(
                f"invoke_agent {name}",
                attributes={
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": name,
                    "gen_ai.agent.id": agent_id,
                    "gen_ai.agent.description": purpose,
                },
            ) as span,
            use_custody_context(ctx, purpose=purpose),
        ):
            yield span

    def run(self, question: str, mcp: McpServerLaunch | None = None) -> FleetRun:
        """The planner delegates ``question`` to the researcher, which summarizes its notes
        and, with ``mcp``, calls the MCP server's tools; the run's batch has been sent
        (a failed export is logged by the exporter) when this returns."""
        planner = CustodyContext.new_root()
        run = FleetRun(planner, planner.child())
        with self._agent(PLANNER, run.planner, f"plan the answer to: {question}") as span:
            run.trace_id = format(span.get_span_context().trace_id, "032x")
            with self._agent(RESEARCHER, run.researcher, f"research: {question}"):
                self._summarize(question)
                if mcp is not None:
                    run.mcp_results = asyncio.run(self._use_mcp(mcp))
        if not self.provider.force_flush(60_000):
            raise AssertionError("the fleet's spans were not flushed within 60 s")
        return run

    def _summarize(self, question: str) -> str:
        with self.tracer.start_as_current_span(
            f"execute_tool {LOCAL_TOOL}",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": LOCAL_TOOL,
                "gen_ai.tool.type": "function",
                "gen_ai.tool.call.id": f"call_{uuid.uuid4().hex}",
                "custody.data_scope": ["notes:read"],
            },
        ):
            return f"notes on {question}"

    async def _use_mcp(self, mcp: McpServerLaunch) -> dict[str, CallToolResult]:
        results = {}
        async with Client(mcp.parameters()) as client:
            for tool, arguments in mcp.calls:
                results[tool] = await self._call_tool(client, tool, arguments)
        return results

    async def _call_tool(
        self, client: Client, tool: str, arguments: dict[str, str]
    ) -> CallToolResult:
        with self.tracer.start_as_current_span(
            f"tools/call {tool}",
            kind=SpanKind.CLIENT,
            attributes={
                "mcp.method.name": "tools/call",
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool,
                "gen_ai.tool.call.id": f"call_{uuid.uuid4().hex}",
                "network.transport": "pipe",
            },
        ) as span:
            result = await client.call_tool(tool, arguments)
            if result.is_error:
                span.set_attribute("error.type", "tool_error")
                span.set_status(StatusCode.ERROR, text_of(result))
            return result

    def close(self) -> None:
        """Export what is left and stop the exporter."""
        self.provider.shutdown()


def text_of(result: CallToolResult) -> str:
    """The text parts of a tool result, joined."""
    return " ".join(part.text for part in result.content if isinstance(part, TextContent))
