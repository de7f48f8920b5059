"""One GenAI or MCP span read and mapped: which kind it is, what it says, and its events.

The pure half of the OTLP adapter (:mod:`processors.collect.otlp` holds the state machine
that decides, from a trace's ancestry, which task a span belongs to). A span is:

- an *agent* span: ``gen_ai.operation.name`` = ``invoke_agent`` (or, without that
  attribute, a name ``invoke_agent`` or ``invoke_agent {gen_ai.agent.name}``);
- a *tool* span: ``execute_tool`` the same way, or an MCP span whose ``mcp.method.name`` is
  ``tools/call`` (an MCP span with another method is neither);
- anything else (model calls, HTTP, database spans): neither, and never read further.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from processors.collect import records
from processors.collect.otlp_wire import AttributeValue, Span
from processors.collect.records import Rejection, text_of
from producers.context import ContextFormatError, CustodyContext
from schemas.models import Envelope

if TYPE_CHECKING:
    from processors.collect.otlp import OtlpMapping

OTHER, AGENT, TOOL = 0, 1, 2
"""What a span is to the adapter (:func:`kind_of`)."""

OBSERVE_ONLY_ATTRIBUTE = "custody.observe_only"
"""Attribute set to ``"true"`` on an access of an observe-only source: recorded, and not
judged as ``UNAUTHORIZED_ACCESS`` (a runtime that holds no credentials or decisions)."""
TRACE_ATTRIBUTE = "otel.trace_id"
"""Attribute naming the trace an event came from."""
SPAN_ATTRIBUTE = "otel.span_id"
"""Attribute naming the span an event came from."""
UNATTESTED_PREFIX = "unattested:"
"""Prefix of the stand-in ``token_id`` of an access whose span names no credential: the
workload that used the tool follows it, so its accesses are one credential's and never
another workload's (no ``SHARED_CREDENTIAL``), and no issuance is ever claimed for it."""

_STATUS_ERROR = 2
SPAN_KIND_CLIENT = 3
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ID_LIMIT = 200


def _named(name: str, operation: str) -> bool:
    return name == operation or name.startswith(f"{operation} ")


def kind_of(span: Span) -> int:
    """:data:`AGENT`, :data:`TOOL` or :data:`OTHER`: two attribute lookups for most spans."""
    attributes = span.attributes
    method = attributes.get("mcp.method.name")
    if method is not None:
        return TOOL if method == "tools/call" else OTHER
    operation = attributes.get("gen_ai.operation.name")
    if operation is not None:
        return (
            AGENT if operation == "invoke_agent" else TOOL if operation == "execute_tool" else OTHER
        )
    name = span.name
    if name[:1] not in ("i", "e"):
        return OTHER
    return (
        AGENT if _named(name, "invoke_agent") else TOOL if _named(name, "execute_tool") else OTHER
    )


@dataclass(frozen=True, slots=True)
class SpanInfo:
    """What an agent or tool span says, read once when it arrives (so a span missing what
    it needs is rejected in the request that carried it, not when its ancestry is known)."""

    kind: int
    context: CustodyContext | None
    workload_id: str
    instance_id: str
    label: str
    tool: str | None
    call_id: str | None
    mcp: bool
    agent: str | None = None


def _text(value: AttributeValue | None, limit: int = 512) -> str | None:
    if type(value) is str:
        return value[:limit] or None
    return text_of(value, limit)


def _missing(what: str) -> Rejection:
    return Rejection("otlp_missing_attribute", what)


def _context(attributes: dict[str, AttributeValue], m: OtlpMapping) -> CustodyContext | None:
    """The custody context a span carries (compact form first), or None; raises
    :class:`ContextFormatError` when it is malformed."""
    compact = attributes.get(m.context_attribute)
    if compact is not None:
        if not isinstance(compact, str):
            raise ContextFormatError(f"{m.context_attribute} is not a string")
        return CustodyContext.parse(compact)
    task = _text(attributes.get(m.task_attribute))
    if task is None:
        return None
    depth_value = attributes.get(m.depth_attribute, 0)
    depth = (
        int(depth_value) if isinstance(depth_value, str) and depth_value.isdigit() else depth_value
    )
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise ContextFormatError(f"{m.depth_attribute} is not a non-negative integer")
    root = _text(attributes.get(m.root_task_attribute)) or (task if depth == 0 else None)
    if root is None:
        raise ContextFormatError(f"{m.root_task_attribute} is missing below the root")
    return CustodyContext(root, task, depth, _text(attributes.get(m.parent_task_attribute)))


def timestamp_problem(span: Span, now: float, m: OtlpMapping) -> str | None:
    """Why the span's times cannot be evidence, or None."""
    if span.start_ns <= 0 or span.end_ns < span.start_ns:
        return "the span ends before it starts, or has no start"
    start = span.start_ns / 1e9
    if start > now + m.max_clock_skew_seconds:
        return f"the span starts more than {m.max_clock_skew_seconds:g}s in the future"
    if start < now - m.max_span_age_seconds:
        return f"the span starts more than {m.max_span_age_seconds:g}s in the past"
    return None


def read_span(span: Span, kind: int, now: float, m: OtlpMapping) -> SpanInfo | Rejection:
    """The :class:`SpanInfo` of an agent or tool span, or why it is rejected."""
    problem = timestamp_problem(span, now, m)
    if problem is not None:
        return Rejection("otlp_timestamp_absurd", problem)
    attributes = span.attributes
    try:
        context = _context(attributes, m)
    except ContextFormatError as exc:
        return Rejection("otlp_custody_context_invalid", str(exc))
    service = _text(span.resource.get("service.name"), _ID_LIMIT)
    if kind == AGENT:
        agent = _text(attributes.get("gen_ai.agent.id"), _ID_LIMIT) or _text(
            attributes.get("gen_ai.agent.name"), _ID_LIMIT
        )
        if agent is None and service is None:
            return _missing(
                "invoke_agent span without gen_ai.agent.id, gen_ai.agent.name or the "
                "resource's service.name"
            )
        # An OTel SDK not told its service name calls it "unknown_service" too.
        workload = f"otel://{service or 'unknown_service'}" + (f"/agent/{agent}" if agent else "")
        label = _text(attributes.get("gen_ai.agent.name")) or agent or service or ""
        tool = call_id = None
        mcp = False
    else:
        mcp = "mcp.method.name" in attributes
        tool = _text(attributes.get("gen_ai.tool.name"))
        if tool is None and mcp and span.name.startswith("tools/call "):
            tool = span.name[len("tools/call ") :][:512] or None
        if tool is None:
            return _missing(
                f"{'MCP tools/call' if mcp else 'execute_tool'} span without gen_ai.tool.name"
            )
        workload = f"otel://{service or 'unknown_service'}"
        label = tool
        call_id = _text(attributes.get("gen_ai.tool.call.id"))
        agent = None
    instance = _text(span.resource.get("service.instance.id")) or service or workload
    return SpanInfo(kind, context, workload, instance, label, tool, call_id, mcp, agent)


@dataclass(frozen=True, slots=True)
class Task:
    """An agent span's task: where it sits, who runs it, the agent (id or name) and
    whether its span is a ``CLIENT`` span (the caller's view of a remote agent)."""

    context: CustodyContext
    actor: dict[str, str]
    agent: str | None = None
    remote: bool = False


def event_time(span: Span) -> datetime:
    """The span's start, to the microsecond (the contract's precision)."""
    return _EPOCH + timedelta(microseconds=span.start_ns // 1000)


def scopes_of(value: AttributeValue | None) -> list[str]:
    """A data scope attribute: an array, or one comma-separated string."""
    if isinstance(value, str):
        return [part for item in value.split(",") if (part := item.strip()[:512])]
    if isinstance(value, tuple):
        return [text for item in value if (text := _text(item)) is not None]
    return []


@dataclass(frozen=True, slots=True)
class _SpanEvents:
    """What the events one span makes share: their origin, the span (their ids and time)
    and the attributes copied from it."""

    origin: records.Origin
    span: Span
    attributes: dict[str, str]

    def build(
        self,
        event_type: str,
        context: CustodyContext,
        actor: dict[str, str],
        body: dict[str, Any],
    ) -> Envelope | Rejection:
        """The span's ``event_type`` event in ``context``'s task, or why it is rejected."""
        origin, span = self.origin, self.span
        event_id = records.event_id_for(origin, "otlp", span.trace_id, span.span_id, event_type)
        data = {
            "event_id": event_id,
            "event_type": event_type,
            "event_time": event_time(span),
            "tenant": origin.tenant,
            "producer": origin.source,
            "root_task_id": context.root_task_id,
            "task_id": context.task_id,
            "parent_task_id": context.parent_task_id,
            "depth": context.depth,
            "actor": actor,
            "attributes": self.attributes,
            "body": body,
        }
        return records.build_event(data, "otlp_contract_violation")


def _copied(span: Span, origin: records.Origin, names: tuple[str, ...]) -> dict[str, str]:
    attributes = {
        records.SOURCE_ATTRIBUTE: origin.source,
        TRACE_ATTRIBUTE: span.trace_id,
        SPAN_ATTRIBUTE: span.span_id,
    }
    for name in names:
        value = _text(span.attributes.get(name))
        if value is not None:
            attributes[name] = value
    return attributes


_AGENT_ATTRIBUTES = (
    "gen_ai.agent.id",
    "gen_ai.agent.name",
    "gen_ai.conversation.id",
    "gen_ai.provider.name",
)
_TOOL_ATTRIBUTES = (
    "gen_ai.tool.call.id",
    "gen_ai.tool.type",
    "mcp.session.id",
    "gen_ai.conversation.id",
)


def agent_events(
    span: Span, info: SpanInfo, parent: Task | None, origin: records.Origin, m: OtlpMapping
) -> tuple[records.Outcome, Task | None]:
    """An agent span's ``TASK_DECLARED`` (and its ``DELEGATION`` from the ``parent`` agent's
    task), and its task for the spans below it (None when it is rejected)."""
    attributes = span.attributes
    own_id = f"otel:{span.trace_id}:{span.span_id}"
    context = info.context
    delegated = parent is not None
    if context is None:
        context = parent.context.child(own_id) if parent else CustodyContext.new_root(own_id)
    elif parent is None or context.parent_task_id != parent.context.task_id:
        # A context names a parent this trace does not show delegating: its delegator
        # (the SDK, another trace) publishes the DELEGATION itself.
        delegated = False
    actor = {"workload_id": info.workload_id, "kind": "AGENT", "instance_id": info.instance_id}
    scopes = scopes_of(attributes.get(m.data_scope_attribute))
    purpose = (
        _text(attributes.get(m.purpose_attribute), 8192)
        or _text(attributes.get("gen_ai.agent.description"), 8192)
        or f"invoke_agent {info.label}"
    )
    made = _SpanEvents(origin, span, _copied(span, origin, _AGENT_ATTRIBUTES))
    declaration = {"purpose": purpose, "requested_scopes": scopes}
    declared = made.build("TASK_DECLARED", context, actor, declaration)
    if isinstance(declared, Rejection):
        return declared, None
    events = [declared]
    if delegated and parent is not None:
        decision = _text(attributes.get(m.decision_attribute)) or f"otel-delegation:{span.span_id}"
        grant = {
            "delegator": parent.actor["workload_id"],
            "delegatee": info.workload_id,
            "child_task_id": context.task_id,
            "scopes": scopes,
            "decision_id": decision,
        }
        delegation = made.build("DELEGATION", parent.context, parent.actor, grant)
        if isinstance(delegation, Rejection):
            return delegation, None
        events.append(delegation)
    task = Task(context, actor, info.agent, span.kind == SPAN_KIND_CLIENT)
    return records.Mapped(tuple(events)), task


def _resource(span: Span, info: SpanInfo) -> str:
    if not info.mcp:
        return f"tool://{info.tool}"
    host = _text(span.attributes.get("server.address"))
    if host is None:
        # An MCP server over stdio has no address: the client's service names it.
        return f"mcp://{_text(span.resource.get('service.name')) or 'unknown_service'}"
    port = span.attributes.get("server.port")
    return (
        f"mcp://{host}:{port}"
        if isinstance(port, int) and not isinstance(port, bool)
        else f"mcp://{host}"
    )


def access_event(
    span: Span,
    info: SpanInfo,
    agent: Task | None,
    origin: records.Origin,
    m: OtlpMapping,
    observe_only: bool,
) -> records.Outcome:
    """A tool span's ``ACCESS``: in its own custody context's task, else its agent's, else
    a synthetic root task of its trace."""
    attributes = span.attributes
    copied = _copied(span, origin, _TOOL_ATTRIBUTES)
    if agent is not None:
        actor = agent.actor
        context = info.context or agent.context
    else:
        actor = {
            "workload_id": info.workload_id,
            "kind": "SERVICE",
            "instance_id": info.instance_id,
        }
        if info.context is not None:
            context = info.context
        else:
            context = CustodyContext.new_root(
                records.synthetic_task_id(origin, "otel-trace", span.trace_id)
            )
            copied[records.SYNTHETIC_ATTRIBUTE] = "true"
    if observe_only:
        copied[OBSERVE_ONLY_ATTRIBUTE] = "true"
    error_type = _text(attributes.get("error.type"))
    failed = error_type is not None or span.status_code == _STATUS_ERROR
    detail = None
    if failed:
        parts = [f"error.type {error_type}" if error_type else "span status ERROR"]
        if span.status_message:
            parts.append(span.status_message[:1024])
        detail = ": ".join(parts)
    token = _text(attributes.get(m.token_attribute)) or f"{UNATTESTED_PREFIX}{actor['workload_id']}"
    access = {
        "token_id": token,
        "tool": info.tool,
        "resource": _resource(span, info),
        "action": "tools/call" if info.mcp else "execute_tool",
        "data_scope": scopes_of(attributes.get(m.data_scope_attribute)),
        "decision_id": _text(attributes.get(m.decision_attribute)),
        "outcome": "FAILURE" if failed else "SUCCESS",
        "detail": detail,
    }
    event = _SpanEvents(origin, span, copied).build("ACCESS", context, actor, access)
    return event if isinstance(event, Rejection) else records.Mapped((event,))
