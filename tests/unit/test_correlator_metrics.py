"""The correlator's Prometheus metrics: after steps over known events, the exposition
holds every metric with the values the step produced, and the endpoint serves it."""

from __future__ import annotations

import re
import socket
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from processors.correlator.metrics import (
    EVENTS_STEP,
    LINKS_STEP,
    CorrelatorMetrics,
    serve,
)
from processors.correlator.step import CHAIN_LINKS, Correlation, Outbound
from processors.metrics_endpoint import MetricsError
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec
from schemas.models import Envelope
from tests.support.samples import stamped
from tests.support.trees import mischievous

CODEC = AvroCodec()
WALL = 1_900_000_000 * 1_000_000
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
NAMES = {
    "custody_correlator_trees",
    "custody_correlator_chains",
    "custody_correlator_trees_retired_total",
    "custody_correlator_chains_retired_total",
    "custody_correlator_events_total",
    "custody_correlator_late_events_total",
    "custody_correlator_alerts_total",
    "custody_correlator_dead_letters_total",
    "custody_correlator_consumer_lag",
    "custody_correlator_step_duration_seconds",
}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _records(events: list[Envelope]) -> list[tuple[int, int, bytes | None, bytes | None]]:
    return [
        (0, seq - 1, e.root_task_id.encode(), CODEC.encode_event(stamped(e, seq, "p/1")))
        for seq, e in enumerate(events, start=1)
    ]


def _samples(metrics: CorrelatorMetrics) -> Samples:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _alert_types(sends: list[Outbound]) -> Counter[str]:
    return Counter(
        str(CODEC.decode_alert(s.value).alert_type)
        for s in sends
        if s.topic == topics.ALERTS and s.value is not None
    )


@pytest.fixture
def stepped() -> tuple[Correlation, CorrelatorMetrics, int, list[Outbound]]:
    """A step over three trees (two misbehaving, the last one's events older than the
    retention by the time they come) and a record that is not an event, then a step over
    the chain links it sent; the metrics told of both."""
    work = Correlation(
        Settings(
            grace_seconds=3,
            allowed_lateness_seconds=1,
            event_partitions=1,
            tree_retention_seconds=60,
        )
    )
    metrics = CorrelatorMetrics(work)
    events = (
        mischievous({"shared"}, "a-")
        + mischievous({"self_approval"}, "b-", offset=5_000)
        + mischievous(set(), "c-")
    )
    records = [*_records(events), (0, len(events), b"k", b"not avro")]
    sends, trees = work.on_events(records, lambda _: None, WALL)
    work.written(trees, {}, WALL)
    metrics.stepped(EVENTS_STEP, len(records), sends, 0.025)
    links = [(s.partition or 0, s.key, s.value) for s in sends if s.topic == CHAIN_LINKS]
    link_sends, chains = work.on_links(links, WALL)
    work.written({}, chains, WALL)
    metrics.stepped(LINKS_STEP, 0, link_sends, 0.002)
    metrics.lagging(topics.EVENTS, 0, 7)
    return work, metrics, len(records), sends + link_sends


def test_the_exposition_holds_what_the_steps_did(
    stepped: tuple[Correlation, CorrelatorMetrics, int, list[Outbound]],
) -> None:
    work, metrics, records, sends = stepped
    samples = _samples(metrics)
    assert _value(samples, "custody_correlator_events_total") == records
    alerts = _alert_types(sends)
    assert {"SHARED_CREDENTIAL", "SELF_APPROVAL"} <= set(alerts)
    for alert_type, count in alerts.items():
        assert _value(samples, "custody_correlator_alerts_total", alert_type=alert_type) == count
    [letter] = [s for s in sends if s.topic == topics.DLQ]
    reason = dict(letter.headers or [])["custody-dlq-reason"].decode()
    assert _value(samples, "custody_correlator_dead_letters_total", reason=reason) == 1
    assert work.live_trees > 0
    assert work.live_chains == 1
    assert _value(samples, "custody_correlator_trees") == work.live_trees
    assert _value(samples, "custody_correlator_chains") == work.live_chains
    assert _value(samples, "custody_correlator_trees_retired_total") == work.trees_retired
    assert _value(samples, "custody_correlator_chains_retired_total") == work.chains_retired
    # The third tree came after the second had moved the watermark past its retention.
    assert work.late_events
    for late_reason, count in work.late_events.items():
        name = "custody_correlator_late_events_total"
        assert _value(samples, name, reason=late_reason) == count
    duration = "custody_correlator_step_duration_seconds"
    assert _value(samples, f"{duration}_count", step=EVENTS_STEP) == 1
    assert _value(samples, f"{duration}_sum", step=EVENTS_STEP) == pytest.approx(0.025)
    assert _value(samples, f"{duration}_count", step=LINKS_STEP) == 1
    lag = {"topic": topics.EVENTS, "partition": "0"}
    assert _value(samples, "custody_correlator_consumer_lag", **lag) == 7
    assert {name for name, _ in samples} >= {
        name for name in NAMES if not name.endswith("_seconds")
    }


def test_a_partition_given_up_leaves_the_lag_to_its_new_owner(
    stepped: tuple[Correlation, CorrelatorMetrics, int, list[Outbound]],
) -> None:
    _, metrics, _, _ = stepped
    metrics.lagging(topics.EVENTS, 3, -2)
    samples = _samples(metrics)
    lag = "custody_correlator_consumer_lag"
    assert _value(samples, lag, topic=topics.EVENTS, partition="3") == 0
    metrics.forget((topics.EVENTS, partition) for partition in (0, 3, 5))
    assert not [name for name, _ in _samples(metrics) if name == lag]


def test_every_metric_is_documented(
    stepped: tuple[Correlation, CorrelatorMetrics, int, list[Outbound]],
) -> None:
    _, metrics, _, _ = stepped
    families = text_string_to_metric_families(generate_latest(metrics.registry).decode())
    names = {f"{f.name}_total" if f.type == "counter" else f.name for f in families}
    assert names == NAMES
    section = DOCS.read_text().partition("\n### Metrics\n")[2].partition("\n#")[0]
    assert [name for name in sorted(NAMES) if f"`{name}`" not in section] == []


def test_the_endpoint_serves_the_exposition_read_only() -> None:
    metrics = CorrelatorMetrics(Correlation(Settings()))
    metrics.events.inc(3)
    endpoint = serve(metrics, "127.0.0.1:0")
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:[0-9]+/metrics", endpoint.url)
        with urllib.request.urlopen(endpoint.url, timeout=5) as answer:
            body = answer.read().decode()
            kind = answer.headers["Content-Type"]
    finally:
        endpoint.close()
    assert kind.startswith("text/plain")
    assert "custody_correlator_events_total 3.0" in body


def test_an_address_it_cannot_serve_on_says_what_to_change() -> None:
    metrics = CorrelatorMetrics(Correlation(Settings()))
    with pytest.raises(MetricsError, match="HOST:PORT"):
        serve(metrics, "nowhere")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(MetricsError, match="CUSTODY_CORRELATOR_METRICS_ADDRESS"):
            serve(metrics, address)
