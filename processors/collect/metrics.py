"""``custody collect``'s Prometheus metrics (``custody_collect_...``): records by source
kind and what became of them, requests by route and status code, connections refused.
Sources are a fixed set of kinds (``opa``, ``vault``), never a tenant or token name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from prometheus_client import CollectorRegistry

from processors.collect.publisher import Tally
from processors.metric_set import MetricSet

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class CollectMetrics(MetricSet):
    """The collector's metrics, in :attr:`registry`."""

    HELP: ClassVar[Mapping[str, str]] = {
        "records": "Records received, by source kind and outcome "
        "(published, dead_lettered, skipped).",
        "events": "Contract events published, by source kind.",
        "requests": "HTTP requests answered, by route and status code.",
        "batch_duration_seconds": "From a batch's arrival to Kafka's last ack, by source kind.",
        "refused": "Connections or uploads refused, by source kind and reason "
        "(unauthenticated, forbidden, unavailable, bad_request).",
    }

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("collect", registry)
        self.records = self.counter("records", ["kind", "outcome"])
        self.events = self.counter("events", ["kind"])
        self.requests = self.counter("requests", ["route", "code"])
        self.refused = self.counter("refused", ["kind", "reason"])
        self.seconds = self.histogram("batch_duration_seconds", _BUCKETS, ["kind"])

    def counted(self, kind: str, tally: Tally, seconds: float) -> None:
        """A batch of source ``kind`` was published as ``tally`` says, in ``seconds``."""
        mapped = tally.records - sum(tally.dead_lettered.values()) - sum(tally.skipped.values())
        self.records.labels(kind, "published").inc(mapped)
        self.records.labels(kind, "dead_lettered").inc(sum(tally.dead_lettered.values()))
        self.records.labels(kind, "skipped").inc(sum(tally.skipped.values()))
        self.events.labels(kind).inc(tally.published)
        self.seconds.labels(kind).observe(seconds)
