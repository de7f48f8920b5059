"""The custody context on OpenTelemetry spans and in W3C baggage.

An agent runtime that already traces with OpenTelemetry links its spans to its custody
tree by naming the task on them: :func:`bind_custody_context` sets the ``custody.*``
attributes ``custody collect`` reads on a span and returns a context whose baggage carries
``custody.context`` (:meth:`CustodyContext.format`), so the requests made under it (HTTP,
an MCP ``tools/call``'s ``_meta``) carry the task to the next service.
:func:`use_custody_context` attaches that context for a block. On the receiving side,
:func:`custody_context_from_baggage` reads the task back, and
:class:`CustodyBaggageSpanProcessor` stamps it on every span a service starts, so a
downstream service (an MCP server) reports into the caller's task without code of its own.

Needs OpenTelemetry's API, the ``otel`` extra (``pip install 'custody[otel]'``).
:class:`CustodyBaggageSpanProcessor` is an OpenTelemetry SDK span processor and is defined
where the SDK (``opentelemetry-sdk``) is installed: only a process that records spans
configures the SDK's ``TracerProvider`` it is added to.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypedDict, Unpack

from producers.context import CustodyContext

try:
    from opentelemetry import baggage, trace
    from opentelemetry import context as otel_context
    from opentelemetry.context import Context
    from opentelemetry.trace import Span
except ImportError as error:
    raise ImportError(
        "producers.otel needs OpenTelemetry's API, which the otel extra brings: "
        "pip install 'custody[otel]'"
    ) from error

BAGGAGE_KEY = "custody.context"
"""The W3C baggage entry holding the compact custody context."""
CONTEXT_ATTRIBUTE = "custody.context"
"""The span attribute holding the compact custody context."""
TOKEN_ID_ATTRIBUTE = "custody.token_id"  # noqa: S105 (an attribute name, not a credential)
"""The span attribute naming the credential a span's access used."""
DECISION_ID_ATTRIBUTE = "custody.decision_id"
"""The span attribute naming the policy decision that allowed a span's access."""
DATA_SCOPE_ATTRIBUTE = "custody.data_scope"
"""The span attribute listing the data scopes a span's access touched."""
PURPOSE_ATTRIBUTE = "custody.purpose"
"""The span attribute stating the purpose of a span's task."""


class SpanBinding(TypedDict, total=False):
    """Where :func:`bind_custody_context` puts a custody context (``span``, default: the
    current span) and the custody fields it sets there with it, each as its ``custody.*``
    attribute (a None is left off)."""

    span: Span | None
    token_id: str | None
    decision_id: str | None
    data_scope: Sequence[str] | None
    purpose: str | None


def bind_custody_context(ctx: CustodyContext, **binding: Unpack[SpanBinding]) -> Context:
    """Put ``ctx`` and the given custody fields on ``span`` (default: the current span) as
    ``custody.*`` attributes, and return the current context with ``span`` in it and the
    ``custody.context`` baggage entry set. The caller attaches the returned context
    (:func:`opentelemetry.context.attach`, or :func:`use_custody_context`) so that
    propagators inject the entry into outgoing requests."""
    span = binding.get("span")
    target = span if span is not None else trace.get_current_span()
    target.set_attribute(CONTEXT_ATTRIBUTE, ctx.format())
    for name, value in (
        (TOKEN_ID_ATTRIBUTE, binding.get("token_id")),
        (DECISION_ID_ATTRIBUTE, binding.get("decision_id")),
        (PURPOSE_ATTRIBUTE, binding.get("purpose")),
    ):
        if value is not None:
            target.set_attribute(name, value)
    data_scope = binding.get("data_scope")
    if data_scope is not None:
        target.set_attribute(DATA_SCOPE_ATTRIBUTE, list(data_scope))
    current = otel_context.get_current()
    if span is not None:
        current = trace.set_span_in_context(span, current)
    return baggage.set_baggage(BAGGAGE_KEY, ctx.format(), context=current)


@contextmanager
def use_custody_context(ctx: CustodyContext, **binding: Unpack[SpanBinding]) -> Iterator[Context]:
    """:func:`bind_custody_context`, with its context attached for the ``with`` block and
    detached after it; yields the attached context."""
    bound = bind_custody_context(ctx, **binding)
    token = otel_context.attach(bound)
    try:
        yield bound
    finally:
        otel_context.detach(token)


def custody_context_from_baggage(context: Context | None = None) -> CustodyContext | None:
    """The custody context in the baggage of ``context`` (default: the current context),
    e.g. after :func:`opentelemetry.propagate.extract` of a request's headers; None when
    there is none. Raises :class:`~producers.context.ContextFormatError` for an entry that
    is not a custody context."""
    value = baggage.get_baggage(BAGGAGE_KEY, context)
    return CustodyContext.parse(str(value)) if value is not None else None


try:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.sdk.trace import Span as SdkSpan
except ImportError:
    # An API-only process records no spans: there is nothing for a processor to stamp.
    pass
else:

    class CustodyBaggageSpanProcessor(SpanProcessor):
        """Stamps the custody context on every span a service starts, as its
        ``custody.context`` attribute: the parent span's, when the parent is a span of
        this process that has one, else the ``custody.context`` baggage entry of the
        parent context. A span started with the attribute keeps it.

        Add it to the ``TracerProvider`` of a service that receives requests carrying
        baggage: its spans (an MCP server's ``tools/call`` spans, and those started under
        them, which OpenTelemetry starts under the span but not under the request's
        baggage) then name the caller's task. The value is copied as it came; ``custody
        collect`` validates it. The SDK base class's other hooks do nothing, which is all
        this processor needs at a span's end, a flush or a shutdown."""

        def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
            """Stamp the parent's custody context on ``span``."""
            if CONTEXT_ATTRIBUTE in (span.attributes or {}):
                return
            parent = trace.get_current_span(parent_context)
            inherited = (
                parent.attributes.get(CONTEXT_ATTRIBUTE)
                if isinstance(parent, ReadableSpan) and parent.attributes
                else None
            )
            value = (
                inherited
                if inherited is not None
                else baggage.get_baggage(BAGGAGE_KEY, parent_context)
            )
            if value is not None:
                span.set_attribute(CONTEXT_ATTRIBUTE, str(value))
