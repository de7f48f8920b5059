"""The tests' MCP server: a ticket desk over stdio (``python -m tests.support.mcp_server``),
built with the ``mcp`` SDK and traced with the OpenTelemetry SDK as any MCP server would be.

The ``mcp`` SDK (2.x) traces every request it serves per the MCP semantic conventions (its
``OpenTelemetryMiddleware``, on by default): a ``tools/call <tool>`` span of kind SERVER
with ``mcp.method.name``, ``gen_ai.operation.name`` = ``execute_tool``,
``gen_ai.tool.name``, ``jsonrpc.request.id`` and, for a tool that failed, ``error.type`` =
``tool_error``, whose parent is the trace context the client put in the request's
``params._meta`` (W3C ``traceparent``, ``tracestate`` and ``baggage``, SEP-414). Over
stdio there is no MCP session, hence no ``mcp.session.id``. This module adds only what a
deployment adds: a tracer provider exporting to ``custody collect`` with the OTLP/HTTP
exporter, which reads its endpoint and headers (the collect token) from
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` and ``OTEL_EXPORTER_OTLP_TRACES_HEADERS``, and the
custody span processor, which stamps the caller's task (the ``custody.context`` baggage
entry) on the server's spans.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from producers.otel import CustodyBaggageSpanProcessor

SERVICE_NAME = "ticket-desk-mcp"
"""The server's ``service.name``."""
SEARCH = "search_tickets"
"""The tool that answers."""
EXPORT = "export_tickets"
"""The tool that always fails."""

TICKETS = {
    "T-101": "Refund not received after cancellation",
    "T-102": "Refund amount differs from the invoice",
    "T-103": "Cannot log in after password reset",
}

server = MCPServer("ticket-desk")


@server.tool(name=SEARCH)
def search_tickets(query: str) -> list[str]:
    """The tickets whose title mentions ``query``, as ``id: title``."""
    return [f"{key}: {title}" for key, title in TICKETS.items() if query.lower() in title.lower()]


@server.tool(name=EXPORT)
def export_tickets(queue: str) -> str:
    """Export a whole queue: refused, always (the failing tool of the tests). A
    :class:`ToolError` is a failure the tool means: the client gets its message as an
    error result."""
    raise ToolError(f"exporting the {queue} queue needs an approval")


def main() -> None:
    """Serve over stdio until the client closes stdin, exporting every span."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(CustodyBaggageSpanProcessor())
    # Each span is exported as it ends, before the answer goes back: the stdio client
    # stops the server two seconds after closing its stdin (SIGTERM, then SIGKILL), too
    # soon to count on a batch flushed at exit reaching a collector on a loaded host.
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    try:
        server.run("stdio")
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
