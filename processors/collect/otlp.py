"""OpenTelemetry GenAI and MCP spans → contract events: a pure state machine over traces.

:class:`TraceAssembler` takes decoded spans (:mod:`processors.collect.otlp_wire`) and
returns what each became (:mod:`processors.collect.otlp_spans` reads and maps one span):

- an ``invoke_agent`` span → ``TASK_DECLARED`` of its task; under another agent's span
  (the nearest ``invoke_agent`` ancestor, through any spans between) a child task one level
  deeper and a ``DELEGATION`` from that agent's task; with no agent ancestor a root task.
  The task id is ``otel:<trace_id>:<span_id>``: the trace is the custody tree, unless the
  span carries a custody context (``custody.context``, or ``custody.task_id`` and its
  fellows), which then places the task; a ``DELEGATION`` is then published only when that
  context's parent is the task of the agent span above it in this trace (otherwise its
  delegator, the SDK or another trace, publishes it);
- an ``execute_tool`` span or an MCP ``tools/call`` span → ``ACCESS`` in the task of its
  nearest agent ancestor (its own custody context first; no agent: a synthetic root task of
  its trace). One call is one access: a tool span nested in a tool span of the same call
  (the same ``gen_ai.tool.call.id``, or the same tool name when either names no call id;
  e.g. an MCP client span under an ``execute_tool`` span, an MCP server span under the
  client's) is skipped as ``otlp_nested_tool_call``, so the outermost span speaks for the
  call; another span of a call id already mapped in the trace as
  ``otlp_duplicate_tool_call``;
- any other span is skipped (``otlp_not_agent_span``) after its place in the trace is noted.

Exporters send a span when it ends, so children usually arrive before their parents, in
an earlier request. A span whose ancestry reaches a span not yet seen is held until that
span arrives (it is re-resolved whenever an awaited span arrives or an awaited agent is
mapped) or ``hold_seconds`` pass; then its chain is cut where it is unknown (an agent there
becomes a root, a tool span there has no agent). A rejected span (missing attributes, an
absurd timestamp) stays in the ancestry as a plain span.

Event ids derive from the origin, trace, span and event type: a re-sent export maps to
the same ids, and a span seen again is skipped (``otlp_duplicate_span``) while remembered.
Memory is bounded: ``max_remembered_spans`` spans' ancestry (least recently used forgotten
first) and ``max_pending_spans`` held spans (the oldest mapped early when over). It does no
I/O and reads no clock: the caller passes ``now`` (Unix seconds).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from processors.collect import records
from processors.collect.otlp_spans import (
    AGENT,
    OTHER,
    TOOL,
    SpanInfo,
    Task,
    access_event,
    agent_events,
    kind_of,
    read_span,
)
from processors.collect.otlp_wire import Span, span_json
from processors.collect.records import Origin, Outcome, Rejection, Skipped

_LINK = OTHER
_MAX_CHAIN = 4096
_NOT_AGENT = Skipped("otlp_not_agent_span")
_DUPLICATE = Skipped("otlp_duplicate_span")
_NESTED = Skipped("otlp_nested_tool_call")
_DUPLICATE_CALL = Skipped("otlp_duplicate_tool_call")
_SAME_AGENT = Skipped("otlp_nested_agent_span")

_Key = tuple[str, str]
_Call = tuple[str, str | None]


class OtlpMapping(BaseModel):
    """Which span attributes carry what the contract asks for beyond the GenAI and MCP
    conventions, and how long and how much the adapter waits for a span's ancestry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    context_attribute: str = Field(
        "custody.context",
        min_length=1,
        description="Attribute holding the compact custody context '1;depth;root;task;parent' "
        "(what the SDK helper copies from the custody-context baggage); read first.",
    )
    root_task_attribute: str = Field(
        "custody.root_task_id", min_length=1, description="Attribute holding the root task id."
    )
    task_attribute: str = Field(
        "custody.task_id",
        min_length=1,
        description="Attribute holding the task id (when no compact context is given).",
    )
    parent_task_attribute: str = Field(
        "custody.parent_task_id", min_length=1, description="Attribute holding the parent task id."
    )
    depth_attribute: str = Field(
        "custody.depth", min_length=1, description="Attribute holding the depth (0: root)."
    )
    purpose_attribute: str = Field(
        "custody.purpose",
        min_length=1,
        description="Attribute holding an agent task's purpose (else gen_ai.agent.description, "
        "else 'invoke_agent <agent name>').",
    )
    token_attribute: str = Field(
        "custody.token_id",
        min_length=1,
        description="Attribute naming the credential a tool call used (never its value); "
        "absent: 'unattested:<workload>'.",
    )
    decision_attribute: str = Field(
        "custody.decision_id",
        min_length=1,
        description="Attribute naming the decision that allowed a tool call or a delegation.",
    )
    data_scope_attribute: str = Field(
        "custody.data_scope",
        min_length=1,
        description="Attribute holding a tool call's data scope or an agent's requested "
        "scopes: an array of strings, or one comma-separated string.",
    )
    hold_seconds: float = Field(
        30.0,
        ge=0,
        description="How long a span whose ancestry reaches a span not yet seen waits for it "
        "before its chain is cut there.",
    )
    max_pending_spans: int = Field(
        10_000,
        gt=0,
        description="Spans held awaiting their ancestry; past it the oldest is mapped early.",
    )
    max_remembered_spans: int = Field(
        200_000,
        gt=0,
        description="Spans whose place in their trace is remembered (for ancestry and "
        "duplicates), least recently used forgotten first.",
    )
    max_clock_skew_seconds: float = Field(
        86_400.0,
        ge=0,
        description="A span starting further in the future than this is rejected "
        "(otlp_timestamp_absurd).",
    )
    max_span_age_seconds: float = Field(
        10 * 365 * 86_400.0,
        gt=0,
        description="A span starting further in the past than this is rejected "
        "(otlp_timestamp_absurd).",
    )


@dataclass(frozen=True, slots=True)
class _Scope:
    """What a span's descendants inherit: the nearest agent's task, and the tool call
    around them within that agent (for nested-call deduplication)."""

    task: Task | None
    call: _Call | None


_NO_AGENT = _Scope(None, None)


@dataclass(slots=True)
class _Node:
    """A span's place in its trace; ``scope`` is None until its ancestry is resolved."""

    parent: str | None
    kind: int
    call: _Call | None
    scope: _Scope | None = None


@dataclass(slots=True)
class _Held:
    """An agent or tool span awaiting its ancestry."""

    span: Span
    info: SpanInfo
    since: float
    parent: str | None
    blocker: _Key | None = None


def _same_call(outer: _Call, inner: _Call) -> bool:
    if outer[1] is not None and inner[1] is not None:
        return outer[1] == inner[1]
    return outer[0] == inner[0]


class TraceAssembler:
    """Spans in, contract events out; see the module docstring.

    ``feed`` maps what a batch makes mappable (and what waited too long), ``expire`` maps
    what waited too long, ``drain`` maps everything held (the end of an import or a
    shutdown). ``counts`` says what came of the spans, by outcome and reason.
    """

    def __init__(self, origin: Origin, mapping: OtlpMapping, *, observe_only: bool = False) -> None:
        self.origin = origin
        self.mapping = mapping
        self.observe_only = observe_only
        self.counts: Counter[str] = Counter()
        self._nodes: OrderedDict[_Key, _Node] = OrderedDict()
        # Oldest first: an OrderedDict gives its head in constant time however many of its
        # first entries were removed, which a dict does not.
        self._held: OrderedDict[_Key, _Held] = OrderedDict()
        # Held spans by the span they await (a span not yet seen, or a held agent span).
        self._waiting: dict[_Key, dict[_Key, None]] = {}
        self._calls: OrderedDict[_Key, None] = OrderedDict()
        # Held spans to resolve (again): just arrived, or what they awaited came.
        self._ready: list[_Key] = []

    @property
    def pending(self) -> int:
        """Spans held awaiting their ancestry."""
        return len(self._held)

    @property
    def remembered(self) -> int:
        """Spans whose place in their trace is remembered."""
        return len(self._nodes)

    def feed(self, spans: Sequence[Span], now: float) -> list[Outcome]:
        """The outcome of each span of the batch that is not held (in no particular
        order), of each held span the batch made mappable, and of each that waited longer
        than ``hold_seconds``. Invalid ids, missing attributes and absurd timestamps are
        rejected here, in the call that carried the span."""
        out: list[Outcome] = []
        for span in spans:
            outcome = self._admit(span, now)
            if outcome is not None:
                out.append(outcome)
        self.counts["spans"] += len(spans)
        self._settle(out)
        self._expire(now, out)
        return self._counted(out)

    def expire(self, now: float) -> list[Outcome]:
        """Map the spans held longer than ``hold_seconds``, their chains cut at the first
        span not seen."""
        out: list[Outcome] = []
        self._expire(now, out)
        return self._counted(out)

    def drain(self) -> list[Outcome]:
        """Map every held span as if its wait were over."""
        out: list[Outcome] = []
        while self._held:
            self._expire_one(next(iter(self._held)), out, set())
        self._waiting.clear()
        return self._counted(out)

    # ---- arrival ----------------------------------------------------------------------

    def _admit(self, span: Span, now: float) -> Outcome | None:
        if span.problem is not None:
            return Rejection("otlp_invalid_id", span.problem, span_json(span))
        key = (span.trace_id, span.span_id)
        if key in self._nodes:
            return _DUPLICATE
        kind = kind_of(span)
        if kind == OTHER:
            self._remember(key, _Node(span.parent_span_id, _LINK, None))
            return _NOT_AGENT
        info = read_span(span, kind, now, self.mapping)
        if isinstance(info, Rejection):
            # Transparent: the spans below it still find their agent through it.
            self._remember(key, _Node(span.parent_span_id, _LINK, None))
            return Rejection(info.reason, info.detail, span_json(span))
        call = (info.tool, info.call_id) if info.tool is not None else None
        self._remember(key, _Node(span.parent_span_id, kind, call))
        self._held[key] = _Held(span, info, now, span.parent_span_id)
        self._ready.append(key)
        return None

    def _remember(self, key: _Key, node: _Node) -> None:
        self._nodes[key] = node
        if len(self._nodes) > self.mapping.max_remembered_spans:
            self._nodes.popitem(last=False)
        self._wake(key)

    def _wake(self, key: _Key) -> None:
        """Make the spans that awaited ``key`` walk their ancestry again."""
        waiters = self._waiting.pop(key, None)
        if waiters:
            for waiter in waiters:
                held = self._held.get(waiter)
                if held is not None:
                    held.blocker = None
                    self._ready.append(waiter)

    # ---- resolution -------------------------------------------------------------------

    def _walk(self, trace_id: str, parent: str | None) -> _Scope | str:
        """The scope a span under ``parent`` inherits, or the id of the span it awaits
        (not seen yet, or a held agent span)."""
        nodes = self._nodes
        path: list[_Node] = []
        scope = _NO_AGENT
        first = True
        while parent is not None:
            key = (trace_id, parent)
            node = nodes.get(key)
            if node is None:
                return parent
            if first:
                nodes.move_to_end(key)
                first = False
            if node.scope is not None:
                scope = node.scope
                break
            if node.kind == AGENT or len(path) >= _MAX_CHAIN:
                return parent
            path.append(node)
            parent = node.parent
        for node in reversed(path):
            if node.kind == TOOL:
                scope = _Scope(scope.task, node.call)
            node.scope = scope
        return scope

    def _settle(self, out: list[Outcome]) -> None:
        """Resolve the ready spans and those their mapping wakes, until none is left."""
        ready = self._ready
        while ready:
            key = ready.pop()
            held = self._held.get(key)
            if held is None or held.blocker is not None:
                continue
            found = self._walk(key[0], held.parent)
            if isinstance(found, _Scope):
                out.append(self._map(key, held, found))
            else:
                held.blocker = (key[0], found)
                self._waiting.setdefault(held.blocker, {})[key] = None

    def _expire(self, now: float, out: list[Outcome]) -> None:
        deadline = now - self.mapping.hold_seconds
        limit = self.mapping.max_pending_spans
        while self._held:
            key, held = next(iter(self._held.items()))
            if held.since > deadline and len(self._held) <= limit:
                return
            self._expire_one(key, out, set())

    def _expire_one(self, key: _Key, out: list[Outcome], expiring: set[_Key]) -> None:
        """Map a held span now: an awaited agent span is mapped first (its own chain cut
        where unknown), a span not seen is where the chain is cut."""
        held = self._held[key]
        expiring.add(key)
        self.counts["expired"] += 1
        if held.blocker is not None:
            self._unwait(key, held)
        while True:
            found = self._walk(key[0], held.parent)
            if isinstance(found, _Scope):
                break
            blocker = (key[0], found)
            if blocker in self._held and blocker not in expiring:
                self._expire_one(blocker, out, expiring)
                if key not in self._held:
                    return
            else:
                self._cut(key, held, found)
        out.append(self._map(key, held, found))
        self._settle(out)

    def _cut(self, key: _Key, held: _Held, missing: str) -> None:
        """Make the span whose parent is ``missing`` (this one, or an ancestor) a root."""
        self.counts["chains_cut"] += 1
        node = self._nodes.get(key)
        if held.parent == missing:
            held.parent = None
            if node is not None:
                node.parent = None
            return
        node = self._nodes[(key[0], held.parent)] if held.parent is not None else None
        for _ in range(_MAX_CHAIN + 1):
            if node is None or node.parent == missing:
                break
            node = self._nodes.get((key[0], node.parent)) if node.parent is not None else None
        if node is not None:
            node.parent = None

    def _unwait(self, key: _Key, held: _Held) -> None:
        if held.blocker is None:
            return
        waiters = self._waiting.get(held.blocker)
        if waiters is not None:
            waiters.pop(key, None)
            if not waiters:
                del self._waiting[held.blocker]
        held.blocker = None

    # ---- mapping ----------------------------------------------------------------------

    def _map(self, key: _Key, held: _Held, scope: _Scope) -> Outcome:
        del self._held[key]
        node = self._nodes.get(key)
        if node is None:
            # Forgotten while held (the memory bound): its descendants still need it.
            node = _Node(held.parent, held.info.kind, None)
            self._remember(key, node)
        info = held.info
        if info.kind == AGENT:
            above = scope.task
            if (
                above is not None
                and above.remote
                and info.agent is not None
                and above.agent == info.agent
                and info.context is None
            ):
                # The remote agent's own span under its caller's CLIENT span: one task.
                node.kind = _LINK
                node.scope = scope
                self._wake(key)
                return _SAME_AGENT
            outcome, task = agent_events(held.span, info, scope.task, self.origin, self.mapping)
            if task is None:
                node.kind = _LINK
                node.scope = scope
            else:
                node.scope = _Scope(task, None)
            self._wake(key)
            return outcome
        call = (info.tool or "", info.call_id)
        if scope.call is not None and _same_call(scope.call, call):
            return _NESTED
        if info.call_id is not None:
            call_key = (key[0], info.call_id)
            if call_key in self._calls:
                return _DUPLICATE_CALL
            self._calls[call_key] = None
            if len(self._calls) > self.mapping.max_remembered_spans:
                self._calls.popitem(last=False)
        return access_event(
            held.span, info, scope.task, self.origin, self.mapping, self.observe_only
        )

    def _counted(self, outcomes: list[Outcome]) -> list[Outcome]:
        return records.counted(self.counts, outcomes)
