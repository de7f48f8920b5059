"""The SDK's OpenTelemetry helper (producers/otel.py) with the real OpenTelemetry SDK: the
custody attributes on spans, the ``custody.context`` baggage through the W3C propagators,
the span processor stamping it on a receiving service's spans, and the message naming the
extra when OpenTelemetry is not installed."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from producers.context import ContextFormatError, CustodyContext
from producers.otel import (
    BAGGAGE_KEY,
    CONTEXT_ATTRIBUTE,
    CustodyBaggageSpanProcessor,
    bind_custody_context,
    custody_context_from_baggage,
    use_custody_context,
)

# What a runtime configures: W3C trace context and baggage (OpenTelemetry's default).
W3C = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
# Task ids holding every character the baggage and the compact form give a meaning to.
ROOT = CustodyContext.new_root("plan; a=b, c%20 d/é")


class Traced:
    """A tracer provider of its own (the global one is never set) exporting to memory."""

    def __init__(self, *, stamp_baggage: bool = False) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        if stamp_baggage:
            self.provider.add_span_processor(CustodyBaggageSpanProcessor())
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test_sdk_otel")

    def span(self, name: str) -> ReadableSpan:
        [found] = [s for s in self.exporter.get_finished_spans() if s.name == name]
        return found


@pytest.fixture
def traced() -> Iterator[Traced]:
    running = Traced()
    yield running
    running.provider.shutdown()


@pytest.fixture
def receiving() -> Iterator[Traced]:
    running = Traced(stamp_baggage=True)
    yield running
    running.provider.shutdown()


def test_bind_sets_the_custody_attributes_on_the_current_span(traced: Traced) -> None:
    with traced.tracer.start_as_current_span("invoke_agent planner"):
        bound = bind_custody_context(
            ROOT,
            token_id="tok-7",
            decision_id="dec-9",
            data_scope=["tickets:read", "crm:read"],
            purpose="triage the queue",
        )
    attributes = dict(traced.span("invoke_agent planner").attributes or {})
    assert attributes == {
        "custody.context": ROOT.format(),
        "custody.token_id": "tok-7",
        "custody.decision_id": "dec-9",
        "custody.data_scope": ("tickets:read", "crm:read"),
        "custody.purpose": "triage the queue",
    }
    assert baggage.get_baggage(BAGGAGE_KEY, bound) == ROOT.format()


def test_fields_not_given_are_not_set(traced: Traced) -> None:
    with traced.tracer.start_as_current_span("invoke_agent planner"):
        bind_custody_context(ROOT)
    assert dict(traced.span("invoke_agent planner").attributes or {}) == {
        "custody.context": ROOT.format()
    }


def test_bind_on_a_given_span_makes_it_the_context_s_span(traced: Traced) -> None:
    child = ROOT.child("research")
    with traced.tracer.start_as_current_span("invoke_agent planner") as planner:
        researcher = traced.tracer.start_span("invoke_agent researcher")
        bound = bind_custody_context(child, span=researcher)
        researcher.end()
    assert trace.get_current_span(bound) is researcher
    assert trace.get_current_span(bound) is not planner
    assert dict(traced.span("invoke_agent researcher").attributes or {}) == {
        "custody.context": child.format()
    }
    assert "custody.context" not in (traced.span("invoke_agent planner").attributes or {})


def test_the_context_crosses_a_request_through_the_w3c_propagators(traced: Traced) -> None:
    carrier: dict[str, str] = {}
    with (
        traced.tracer.start_as_current_span("invoke_agent planner") as planner,
        use_custody_context(ROOT),
    ):
        W3C.inject(carrier)
    assert set(carrier) == {"traceparent", "baggage"}
    assert carrier["baggage"].startswith(f"{BAGGAGE_KEY}=")
    received = W3C.extract(carrier)
    assert custody_context_from_baggage(received) == ROOT
    parent = trace.get_current_span(received).get_span_context()
    assert parent.trace_id == planner.get_span_context().trace_id
    assert parent.span_id == planner.get_span_context().span_id


def test_use_custody_context_detaches_after_the_block(traced: Traced) -> None:
    with traced.tracer.start_as_current_span("invoke_agent planner"):
        assert custody_context_from_baggage() is None
        with use_custody_context(ROOT) as attached:
            assert custody_context_from_baggage() == ROOT
            assert custody_context_from_baggage(attached) == ROOT
        assert custody_context_from_baggage() is None


def test_a_malformed_baggage_entry_is_an_error_not_a_context() -> None:
    # Percent-encoded as W3C baggage values are: version 2 of the compact form.
    carrier = {"baggage": f"{BAGGAGE_KEY}=2%3B0%3Ba%3Ba%3B"}
    with pytest.raises(ContextFormatError):
        custody_context_from_baggage(W3C.extract(carrier))
    assert custody_context_from_baggage(W3C.extract({})) is None


def test_the_processor_stamps_the_callers_context_on_a_receiving_services_spans(
    traced: Traced, receiving: Traced
) -> None:
    research = ROOT.child("research")
    carrier: dict[str, str] = {}
    with (
        traced.tracer.start_as_current_span("invoke_agent researcher"),
        use_custody_context(research),
    ):
        W3C.inject(carrier)
    # The receiving service starts its span under the extracted context, as an MCP
    # server does with a request's _meta, and a span of its own under that.
    with (
        receiving.tracer.start_as_current_span(
            "tools/call search_tickets", context=W3C.extract(carrier)
        ),
        receiving.tracer.start_as_current_span("SELECT tickets"),
    ):
        pass
    with receiving.tracer.start_as_current_span("health"):
        pass
    for name in ("tools/call search_tickets", "SELECT tickets"):
        attributes = receiving.span(name).attributes or {}
        assert attributes.get(CONTEXT_ATTRIBUTE) == research.format(), name
    assert CONTEXT_ATTRIBUTE not in (receiving.span("health").attributes or {})


def test_the_processor_keeps_a_context_the_span_was_started_with(receiving: Traced) -> None:
    delegated = ROOT.child("delegated")
    with (
        use_custody_context(ROOT),
        receiving.tracer.start_as_current_span(
            "invoke_agent researcher", attributes={CONTEXT_ATTRIBUTE: delegated.format()}
        ),
    ):
        pass
    attributes = receiving.span("invoke_agent researcher").attributes or {}
    assert attributes[CONTEXT_ATTRIBUTE] == delegated.format()


def test_a_span_takes_its_parent_span_s_context_before_the_baggage(receiving: Traced) -> None:
    research = ROOT.child("research")
    with (
        use_custody_context(ROOT),
        receiving.tracer.start_as_current_span("invoke_agent researcher"),
    ):
        # Bound on the span, not attached: the baggage still names the planner's task.
        bind_custody_context(research)
        with receiving.tracer.start_as_current_span("execute_tool lookup"):
            pass
    for name in ("invoke_agent researcher", "execute_tool lookup"):
        attributes = receiving.span(name).attributes or {}
        assert attributes[CONTEXT_ATTRIBUTE] == research.format(), name


def test_without_opentelemetry_the_import_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes the import system refuse the package, as if absent.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "producers.otel")
    with pytest.raises(ImportError, match=r"pip install 'custody\[otel\]'"):
        importlib.import_module("producers.otel")
