"""Collector throughput, OTLP: ``collect.otlp``, spans of OTLP/HTTP protobuf exports
through a real ``custody collect`` against the SDK publishing the same events (the row's
method, sizes and variables: :mod:`tests.bench.bench_collect`'s docstring, which describes
every collector row; the shared machinery lives there)."""

from __future__ import annotations

import copy
import gc
import http.client
import random
import re
import socket
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from processors.collect.otlp import OtlpMapping, TraceAssembler
from processors.collect.otlp_route import PROTOBUF, TRACES
from processors.collect.otlp_spans import AGENT, OTHER, kind_of
from processors.collect.otlp_wire import spans_of_protobuf
from processors.collect.records import Mapped, Origin, Skipped
from producers.admin import ensure_topics
from producers.settings import Settings
from schemas.models import Envelope
from tests.bench.bench_collect import (
    DEFAULT_SPANS,
    EPOCH,
    EXPORT_SPANS,
    OTLP_SOURCE,
    ROUNDS,
    SEED,
    TENANT,
    UPLOAD_TIMEOUT,
    Baseline,
    Bench,
    CollectProcess,
    Run,
    bench_settings,
    finish,
)
from tests.bench.results import (
    Entry,
    alternate,
    announce,
    env_count,
    first_run_profile,
    rates_by_round,
)
from tests.support.broker import local_broker
from tests.support.collect import protobuf_of, sample_json
from tests.support.measure import py_spy

# The sample's spans, as an exporter sends them (children first, as they end).
_SAMPLE = "otlp/multi_agent.json"
_CHAT, _TOOL_SPAN, _MCP_CLIENT, _RESEARCHER, _PLANNER = range(5)
# A trace is the sample's six spans and 0-2 more chat spans (the agents' other model
# calls); the last trace of an export takes up to seven more, to fill the export.
_BASE_TRACE_SPANS = 6
_EXTRA_CHATS = 3
# One MCP call in four fails as the sample's does; the others succeed.
_FAILING_CALL_EVERY = 4
_NANOS = 1_000_000_000


@dataclass(frozen=True)
class Export:
    """One OTLP/HTTP protobuf export of whole traces."""

    spans: int
    body: bytes


def _hex_id(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits - 1) | 1 << (bits - 1):0{bits // 4}x}"


def _attribute(span: dict[str, Any], key: str) -> dict[str, Any] | None:
    return next((a for a in span["attributes"] if a["key"] == key), None)


def _trace(
    sample: dict[str, Any], number: int, extra_chats: int, rng: random.Random
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Trace ``number`` (its client spans, its MCP server span): the sample's spans with
    their own trace, span, call and session ids, times and ``extra_chats`` more chat spans,
    the parent links kept."""
    crew = sample["resourceSpans"][0]["scopeSpans"][0]["spans"]
    server = sample["resourceSpans"][1]["scopeSpans"][0]["spans"][0]
    trace_id = _hex_id(rng, 128)
    ids = {span["spanId"]: _hex_id(rng, 64) for span in [*crew, server]}
    shift = (
        int((EPOCH + timedelta(milliseconds=37 * number)).timestamp()) * _NANOS
        - int(crew[_PLANNER]["startTimeUnixNano"])
        + number % 1000 * 1000
    )
    failing = number % _FAILING_CALL_EVERY == 0
    session = _hex_id(rng, 128)

    def copied(span: dict[str, Any], span_id: str) -> dict[str, Any]:
        span = copy.deepcopy(span)
        span["traceId"] = trace_id
        span["spanId"] = span_id
        if "parentSpanId" in span:
            span["parentSpanId"] = ids[span["parentSpanId"]]
        for key in ("startTimeUnixNano", "endTimeUnixNano"):
            span[key] = str(int(span[key]) + shift)
        for key, value in (("gen_ai.tool.call.id", None), ("mcp.session.id", session)):
            found = _attribute(span, key)
            if found is not None:
                text = found["value"]["stringValue"]
                found["value"]["stringValue"] = value or f"{text}-{number}"
        conversation = _attribute(span, "gen_ai.conversation.id")
        if conversation is not None:
            conversation["value"]["stringValue"] = f"conv_{trace_id[:24]}"
        if not failing and _attribute(span, "error.type") is not None:
            span["attributes"] = [a for a in span["attributes"] if a["key"] != "error.type"]
            span["status"] = {}
        return span

    spans = [copied(span, ids[span["spanId"]]) for span in crew]
    for extra in range(extra_chats):
        chat = copied(crew[_CHAT], _hex_id(rng, 64))
        # Alternately the planner's and the researcher's other model calls.
        below = crew[_PLANNER if extra % 2 == 0 else _RESEARCHER]["spanId"]
        chat["parentSpanId"] = ids[below]
        spans.insert(0, chat)
    return spans, copied(server, ids[server["spanId"]])


def otlp_exports(spans: int, seed: int = SEED) -> list[Export]:
    """Exports of :data:`EXPORT_SPANS` spans (``spans`` rounded down to whole exports, one
    at least), each of whole traces: the client spans as one resource, the MCP server
    spans as another, as one collector pipeline forwards both services' spans."""
    sample = sample_json(_SAMPLE)
    rng = random.Random(seed)
    exports: list[Export] = []
    number = 0
    for _ in range(max(1, spans // EXPORT_SPANS)):
        crew: list[dict[str, Any]] = []
        servers: list[dict[str, Any]] = []
        room = EXPORT_SPANS
        while room:
            size = _BASE_TRACE_SPANS + number % _EXTRA_CHATS
            if room - size < _BASE_TRACE_SPANS:
                size = room
            client, server = _trace(sample, number, size - _BASE_TRACE_SPANS, rng)
            crew.extend(client)
            servers.append(server)
            room -= size
            number += 1
        document = copy.deepcopy(sample)
        document["resourceSpans"][0]["scopeSpans"][0]["spans"] = crew
        document["resourceSpans"][1]["scopeSpans"][0]["spans"] = servers
        exports.append(Export(len(crew) + len(servers), protobuf_of(document)))
    return exports


@dataclass
class OtlpEvents:
    """What a fresh trace assembler makes of a round's exports, each fed alone: the
    events, and the spans by what they are (every one of them must map or be skipped,
    none held for a parent)."""

    events: list[Envelope]
    kinds: Counter[str]
    skipped: Counter[str]


def otlp_events(exports: Sequence[Export], origin: Origin) -> OtlpEvents:
    """The events the collector is to publish for ``exports`` (mapped as it maps them)."""
    assembler = TraceAssembler(origin, OtlpMapping(), observe_only=origin.observe_only)
    found = OtlpEvents([], Counter(), Counter())
    for export in exports:
        spans = spans_of_protobuf(export.body)
        for span in spans:
            kind = kind_of(span)
            found.kinds[
                "agent"
                if kind == AGENT
                else "other"
                if kind == OTHER
                else "mcp"
                if "mcp.method.name" in span.attributes
                else "tool"
            ] += 1
        for outcome in assembler.feed(spans, time.time()):
            if isinstance(outcome, Mapped):
                found.events.extend(outcome.events)
            elif isinstance(outcome, Skipped):
                found.skipped[outcome.reason] += 1
            else:
                raise RuntimeError(f"OTLP: a span was rejected: {outcome!r}")
        if assembler.pending:
            raise RuntimeError(f"OTLP: {assembler.pending} spans wait for a parent")
    return found


# ---- OTLP: the collector process --------------------------------------------------------


def _free_port() -> int:
    """A port nothing listens on now (for the collector's metrics, read by the run)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def published_events(collector: CollectProcess) -> float:
    """The OTLP events the collector says it published so far (its metrics)."""
    connection = http.client.HTTPConnection("127.0.0.1", collector.metrics_port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    found = re.search(r'^custody_collect_events_total\{kind="otlp"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def export_each(port: int, token: str, exports: Sequence[Export]) -> None:
    """POST each export on one kept-alive connection, the next once the previous was
    answered, as an SDK's batch span processor does; each answer must be 200 with no
    span rejected."""
    headers = {"Content-Type": PROTOBUF, "Authorization": f"Bearer {token}"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=UPLOAD_TIMEOUT)
    try:
        for export in exports:
            connection.request("POST", TRACES, export.body, headers)
            answer = connection.getresponse()
            body = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"export answered {answer.status}: {body[:500]!r}")
            partial = ExportTraceServiceResponse.FromString(body).partial_success
            if partial.rejected_spans:
                raise RuntimeError(f"export of {export.spans} spans answered {partial}")
    finally:
        connection.close()


def collect_otlp_run(
    collector: CollectProcess, exports: Sequence[Export], count: int, expected: int
) -> Run:
    """Send every export; the collector's CPU time over the run. Its metrics must count
    ``expected`` more events published."""
    gc.collect()
    before = published_events(collector)
    cpu = collector.cpu_seconds()
    started = time.perf_counter()
    export_each(collector.port, collector.token, exports)
    seconds = time.perf_counter() - started
    run = Run("collect", count, seconds, collector.cpu_seconds() - cpu)
    published = published_events(collector) - before
    if published != expected:
        raise RuntimeError(f"the collector published {published:.0f} events, not {expected}")
    return run


def bench_otlp(settings: Settings, workdir: Path) -> Entry:
    """The ``collect.otlp`` row."""
    count = env_count("CUSTODY_BENCH_COLLECT_SPANS", DEFAULT_SPANS)
    started = announce("collect.otlp", count, "making {count} spans for each round")
    origin = Origin(TENANT, OTLP_SOURCE)
    # Every round its own traces: the collector remembers the spans it has seen, and
    # would skip a second sending as duplicates.
    rounds = [otlp_exports(count, seed=SEED + 10 * number) for number in range(ROUNDS)]
    mapped = [otlp_events(exports, origin) for exports in rounds]
    spans = sum(e.spans for e in rounds[0])
    warm_exports = otlp_exports(EXPORT_SPANS, seed=SEED + 1)
    warmup = otlp_events(warm_exports, origin).events[0]
    first = mapped[0]
    body_bytes = sum(len(e.body) for e in rounds[0]) // len(rounds[0])
    print(
        f"collect.otlp: {len(rounds[0])} exports of {EXPORT_SPANS} spans a round "
        f"({body_bytes:,} bytes each, {body_bytes // EXPORT_SPANS} per span); spans "
        f"{dict(first.kinds)}, {len(first.events):,} events, skipped {dict(first.skipped)}"
    )
    collector = CollectProcess(
        settings, workdir / "collect-tokens.json", workdir, OTLP_SOURCE, _free_port()
    )
    try:
        export_each(collector.port, collector.token, warm_exports)

        def collect_run(number: int) -> Run:
            profile = first_run_profile("CUSTODY_BENCH_COLLECT_OTLP_PYSPY", number)
            index = number - 1
            with py_spy(collector.process.pid, profile):
                return collect_otlp_run(collector, rounds[index], spans, len(mapped[index].events))

        baseline = Baseline(settings, [m.events for m in mapped], spans, warmup)
        sdks, runs = alternate("collect.otlp", ROUNDS, baseline, collect_run, "spans/s")
    finally:
        collector.stop()
    detail = {
        "spans": spans,
        "export_spans": EXPORT_SPANS,
        "exports": len(rounds[0]),
        "events": len(first.events),
        "span_kinds": dict(sorted(first.kinds.items())),
        "skipped": dict(sorted(first.skipped.items())),
        "rounds": ROUNDS,
        "mean_protobuf_export_bytes": body_bytes,
        **rates_by_round(sdk=sdks, collect=runs),
        "sdk_cpu_us_per_span": round(statistics.median(r.cpu_us for r in sdks), 1),
        "collector_cpu_us_per_span": round(statistics.median(r.cpu_us for r in runs), 1),
        **baseline.detail("span"),
    }
    return finish("collect.otlp", "spans/s", sdks, runs, detail, started)


# ---- run ------------------------------------------------------------------------------


def run() -> list[Entry]:
    """The OTLP row on a fresh broker of its own."""
    benches: list[Bench] = [bench_otlp]
    with local_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        settings = bench_settings(bootstrap, workdir)
        ensure_topics(settings.kafka_admin(), settings.event_topic_partitions())
        return [bench(settings, workdir) for bench in benches]
