"""The Prometheus metrics every batch consumer (ingest, notify) has, named
``custody_<process>_...`` like the correlator's.

They hold counts, durations, topic
and partition numbers and dead-letter reasons: no event, tenant, task, token or secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from processors.metric_set import ConsumingMetrics
from processors.storage.sink import Record, Rejected

# From a handful of records posted to a near peer to a full batch written to a slow server.
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# What each batch consumer waits for while it retries, and what it counts besides what
# every batch consumer does: name -> (help, labels).
WAITS_FOR = {"ingest": "clickhouse", "notify": "alertmanager"}
COUNTERS: Mapping[str, Mapping[str, tuple[str, tuple[str, ...]]]] = {
    "ingest": {
        "stored": (
            "Records stored in ClickHouse, by topic (a replayed batch counts again).",
            ("topic",),
        ),
        "redacted": ("Records stored with a secret-looking value masked.", ()),
    },
    "notify": {
        "sent": (
            "Alerts Alertmanager accepted (2xx), by severity; a replay posts some again.",
            ("severity",),
        ),
        "failed": (
            "Posts to Alertmanager that failed, by reason (unreachable, http_5xx, http_4xx).",
            ("reason",),
        ),
    },
}


class ConsumerMetrics(ConsumingMetrics):
    """The metrics of batch consumer ``process`` (a key of :data:`WAITS_FOR`), prefixed
    ``custody_<process>``, in :attr:`registry`; its own counters in :attr:`counted`."""

    HELP: ClassVar[Mapping[str, str]] = {
        **ConsumingMetrics.HELP,
        "records": "Records consumed and handled (their batch committed), by topic.",
        "retries": "Attempts at a batch's work (or its dead letters) that failed and were retried.",
        "batch_duration_seconds": "One batch, from its first attempt until its offsets are "
        "committed, retries included (the count is the number of batches).",
    }

    def __init__(self, process: str) -> None:
        super().__init__(process)
        self.records = self.counter("records", ["topic"])
        self.retries = self.counter("retries")
        self.batch_seconds = self.histogram("batch_duration_seconds", BATCH_BUCKETS)
        peer = WAITS_FOR[process]
        waits = f"1 while a batch waits, retrying, for {peer} to take it."
        self.waiting = self.gauge(f"waiting_for_{peer}", text=waits)
        self.counted = {
            name: self.counter(name, labels, text)
            for name, (text, labels) in COUNTERS[process].items()
        }

    def batch_done(
        self, records: Sequence[Record], rejected: Sequence[Rejected], seconds: float
    ) -> None:
        """A batch of ``records`` was committed after ``seconds``, ``rejected`` dead-lettered."""
        by_topic: dict[str, int] = {}
        for record in records:
            by_topic[record.topic] = by_topic.get(record.topic, 0) + 1
        for topic, count in by_topic.items():
            self.records.labels(topic).inc(count)
        for item in rejected:
            self.dead_letters.labels(item.reason).inc()
        self.batch_seconds.observe(seconds)

    def retried(self) -> None:
        """An attempt failed; the consumer waits and tries again."""
        self.retries.inc()
        self.waiting.set(1)
