"""The correlator's Prometheus metrics, served as text on ``/metrics``.

A thin adapter: the worker step (:class:`processors.correlator.step.Correlation`) knows
nothing of Prometheus. What the step holds and counts (live trees and chains, retired
ones, late events) is read from it when the metrics are scraped; what a step did (records
taken, alerts and dead letters sent, how long it took) is counted from its inputs and
outputs after each step; the consumer lag is set by the faust app, which knows the
offsets.

Each worker has a registry of its own (never the process-wide default), so a test reads
exactly the metrics of the worker it ran. The endpoint is read-only and says nothing but
counts, durations and partition numbers: no event, tenant, task, token or secret value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import ClassVar, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from processors.correlator.step import Outbound
from processors.metric_set import ConsumingMetrics
from processors.metrics_endpoint import Endpoint, serve_registry
from processors.stack import METRICS_ADDRESS_VARIABLE
from schemas import topics
from schemas.codec import AvroCodec

PREFIX = "custody_correlator"
# The worker's steps, the label of the duration histogram.
EVENTS_STEP, LINKS_STEP, TIMER_STEP = "events", "links", "timer"
# From a step of a few records to a heavy backlog batch delivered to a slow broker.
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REASON_HEADER = "custody-dlq-reason"


class StepState(Protocol):
    """What the metrics read of the worker step when scraped."""

    @property
    def live_trees(self) -> int: ...

    @property
    def live_chains(self) -> int: ...

    @property
    def trees_retired(self) -> int: ...

    @property
    def chains_retired(self) -> int: ...

    @property
    def late_events(self) -> Mapping[str, int]: ...


class _StepCollector(Collector):
    """What the step holds and has counted, read from it at scrape time."""

    def __init__(self, step: StepState) -> None:
        self._step = step

    def collect(self) -> Iterator[Metric]:
        # The HTTP server's thread reads what the worker's thread writes: ints, and a copy
        # of a small dict, each read whole under the interpreter lock.
        step = self._step
        yield GaugeMetricFamily(
            f"{PREFIX}_trees",
            "Custody trees kept (stored, not retired) in the partitions this worker owns.",
            value=step.live_trees,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_chains",
            "Producer-instance hash chains kept in the partitions this worker owns.",
            value=step.live_chains,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_trees_retired",
            "Trees retired (deleted from memory and the table) since the worker started.",
            value=step.trees_retired,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_chains_retired",
            "Producer-instance chains retired since the worker started.",
            value=step.chains_retired,
        )
        late = CounterMetricFamily(
            f"{PREFIX}_late_events",
            "Events and chain links not judged (their tree or chain is retired, or they "
            "are older than the retention), by reason; ingest stores them all the same.",
            labels=["reason"],
        )
        for reason, count in sorted(dict(step.late_events).items()):
            late.add_metric([reason], count)
        yield late


class CorrelatorMetrics(ConsumingMetrics):
    """One worker's metrics, in a registry of their own (:attr:`registry`)."""

    HELP: ClassVar[Mapping[str, str]] = {
        **ConsumingMetrics.HELP,
        "events": "Records of custody.events.v1 the worker step took (dead letters included).",
        "alerts": "Alerts sent to custody.alerts.v1 (a replay after a crash sends some again).",
        "step_duration_seconds": "One worker step: compute, send the outputs and wait for "
        "Kafka, store the state.",
    }

    def __init__(self, step: StepState) -> None:
        super().__init__("correlator")
        self._codec = AvroCodec()
        self.registry.register(_StepCollector(step))
        self.events = self.counter("events")
        self.alerts = self.counter("alerts", ["alert_type"])
        self.step_seconds = self.histogram("step_duration_seconds", _STEP_BUCKETS, ["step"])

    def stepped(self, step: str, records: int, sends: Iterable[Outbound], seconds: float) -> None:
        """A step of kind ``step`` took ``records`` source records, sent ``sends`` and
        lasted ``seconds``."""
        if records:
            self.events.inc(records)
        for send in sends:
            if send.topic == topics.ALERTS and send.value is not None:
                # Alerts are few (a fraction of the events): decoding them costs little.
                self.alerts.labels(str(self._codec.decode_alert(send.value).alert_type)).inc()
            elif send.topic == topics.DLQ:
                self.dead_letters.labels(_reason(send.headers)).inc()
        self.step_seconds.labels(step).observe(seconds)


def _reason(headers: list[tuple[str, bytes]] | None) -> str:
    for name, value in headers or []:
        if name == _REASON_HEADER:
            return value.decode(errors="replace")
    return "unknown"


def serve(metrics: CorrelatorMetrics, address: str) -> Endpoint:
    """Serve ``metrics`` on ``address`` (``HOST:PORT``, port 0: the system's choice).
    Raises :class:`~processors.metrics_endpoint.MetricsError` when the address is not one
    or cannot be bound."""
    return serve_registry(metrics.registry, address, METRICS_ADDRESS_VARIABLE)
