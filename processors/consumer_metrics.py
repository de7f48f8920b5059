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


class ConsumerMetrics(ConsumingMetrics):
    """A batch consumer's metrics, prefixed ``custody_<process>``, in :attr:`registry`;
    ``waiting`` names what the consumer waits for while it retries."""

    HELP: ClassVar[Mapping[str, str]] = {
        **ConsumingMetrics.HELP,
        "records": "Records consumed and handled (their batch committed), by topic.",
        "retries": "Attempts at a batch's work (or its dead letters) that failed and were retried.",
        "batch_duration_seconds": "One batch, from its first attempt until its offsets are "
        "committed, retries included (the count is the number of batches).",
    }

    def __init__(self, process: str, waiting: str) -> None:
        super().__init__(process)
        self.records = self.counter("records", ["topic"])
        self.retries = self.counter("retries")
        self.batch_seconds = self.histogram("batch_duration_seconds", BATCH_BUCKETS)
        waits = f"1 while a batch waits, retrying, for {waiting} to take it."
        self.waiting = self.gauge(f"waiting_for_{waiting}", text=waits)

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
