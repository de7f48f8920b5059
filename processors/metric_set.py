"""The Prometheus metrics of one process, named ``custody_<process>_<name>`` and kept in a
registry of the process's own (never the process-wide default), so a test reads exactly
the metrics of what it ran; every process's metrics are declared through it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# A ``_created`` series per counter and histogram (when it was made) doubles the
# exposition and tells a scrape nothing; the flag is prometheus_client's, per process.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client


class MetricSet:
    """Declares the metrics of process ``process`` in :attr:`registry`; each class keeps
    the help text of the metrics it declares in :attr:`HELP`, by name."""

    HELP: ClassVar[Mapping[str, str]] = {}

    def __init__(self, process: str, registry: CollectorRegistry | None = None) -> None:
        self.prefix = f"custody_{process}"
        self.registry = registry or CollectorRegistry()

    def counter(self, name: str, labels: Sequence[str] = (), text: str | None = None) -> Counter:
        """The counter ``<prefix>_<name>_total`` (``text``: its help, when not in HELP)."""
        help_text = text or self.HELP[name]
        return Counter(f"{self.prefix}_{name}", help_text, labels, registry=self.registry)

    def gauge(self, name: str, labels: Sequence[str] = (), text: str | None = None) -> Gauge:
        """The gauge ``<prefix>_<name>`` (``text``: its help, when it is not in HELP)."""
        help_text = text or self.HELP[name]
        return Gauge(f"{self.prefix}_{name}", help_text, labels, registry=self.registry)

    def histogram(
        self, name: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Histogram:
        """The histogram ``<prefix>_<name>``."""
        text = self.HELP[name]
        return Histogram(
            f"{self.prefix}_{name}", text, labels, buckets=buckets, registry=self.registry
        )


class ConsumingMetrics(MetricSet):
    """The metrics of a process that consumes partitions and dead-letters what it cannot
    take: its dead letters by reason, and its lag per owned partition."""

    HELP: ClassVar[Mapping[str, str]] = {
        "dead_letters": "Records sent to custody.dlq.v1, by their custody-dlq-reason header.",
        "consumer_lag": "Records of an owned partition not processed yet: its highwater in "
        "the last fetch response minus the next offset to process.",
    }

    def __init__(self, process: str, registry: CollectorRegistry | None = None) -> None:
        super().__init__(process, registry)
        self.dead_letters = self.counter("dead_letters", ["reason"])
        self.lag = self.gauge("consumer_lag", ["topic", "partition"])

    def lagging(self, topic: str, partition: int, behind: int) -> None:
        """``partition`` of ``topic`` has ``behind`` records not processed yet."""
        self.lag.labels(topic, str(partition)).set(max(0, behind))

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """The partitions are no longer this process's: their lag is another's to tell."""
        for topic, partition in partitions:
            try:
                self.lag.remove(topic, str(partition))
            except KeyError:
                continue
