"""``custody ingest``: the ClickHouse sink, a plain Kafka consumer (no faust).

It consumes ``custody.events.v1``, ``custody.state.v1`` and ``custody.alerts.v1`` and,
for each batch (bounded by records, bytes and time):

1. writes it with :class:`~processors.storage.sink.BatchWriter` (idempotent inserts);
2. sends what could not be stored to ``custody.dlq.v1`` and waits for the broker's ack;
3. only then commits the batch's offsets.

A crash anywhere before 3 replays the batch, and the replay stores nothing twice. While
ClickHouse is unreachable (or refuses the statement, e.g. a missing table) the consumer
pauses its partitions and retries the same batch with exponential backoff, staying in its
group (:mod:`processors.batch_consumer`); nothing is committed, so nothing is lost even if
it is killed meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from processors.batch_consumer import Batch, BatchConsumer, BatchLimits, ConsumerStats, Retry
from processors.consumer_metrics import ConsumerMetrics
from processors.storage.backend import StorageError, StorageRejected
from processors.storage.sink import BatchWriter, Record, Rejected
from producers.settings import Settings
from schemas import topics

TOPICS = (topics.EVENTS, topics.STATE, topics.ALERTS)

_log = logging.getLogger("custody.ingest")


@dataclass
class IngestStats(ConsumerStats):
    """Counters the query API reports under /health."""

    batches: int = 0
    stored: int = 0
    stored_by_topic: dict[str, int] = field(default_factory=dict)
    redacted: int = 0
    waiting_for_clickhouse: bool = False


class Ingest(BatchConsumer):
    """One ingest consumer. ``run`` blocks until ``stop`` is set, then finishes its batch."""

    stage = "ingest"

    def __init__(
        self,
        settings: Settings,
        writer: BatchWriter,
        heartbeat: Path | None = None,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        super().__init__(
            settings,
            settings.ingest_group,
            TOPICS,
            BatchLimits(
                settings.ingest_batch_rows,
                settings.ingest_batch_bytes,
                settings.ingest_batch_seconds,
            ),
            settings.ingest_retry_max_seconds,
            heartbeat,
            metrics,
        )
        self.writer = writer
        self.stats = IngestStats()

    def process(self, records: list[Record]) -> Sequence[Rejected]:
        """Store the records; what cannot be stored is returned for the dead-letter topic."""
        try:
            result = self.writer.write(records)
        except StorageRejected as exc:
            if exc.data_error:
                raise  # the writer isolates bad records itself: this is a bug, not an outage
            raise Retry(f"ClickHouse cannot take the batch: {exc}") from None
        except StorageError as exc:
            raise Retry(f"ClickHouse cannot take the batch: {exc}") from None
        self.stats.stored += result.stored
        for topic, count in result.stored_by_topic.items():
            self.stats.stored_by_topic[topic] = self.stats.stored_by_topic.get(topic, 0) + count
            if self.metrics is not None:
                self.metrics.counted["stored"].labels(topic).inc(count)
        self.stats.redacted += result.redacted
        if self.metrics is not None and result.redacted:
            self.metrics.counted["redacted"].inc(result.redacted)
        return result.rejected

    def note_waiting(self, error: str | None) -> None:
        self.stats.waiting_for_clickhouse = self.stats.waited(error)

    def note_committed(self, batch: Batch, rejected: Sequence[Rejected]) -> None:
        self.stats.batches += 1
        self.stats.committed(len(rejected), self.last_commit_at)


def run(settings: Settings, serve: bool | None, metrics_address: str) -> None:
    """Run ingest until SIGTERM/SIGINT, its metrics on ``metrics_address``; with ``serve``
    (default: on the embedded engine, which only this process may open) also the query
    API, on the same connection, its metrics on the same endpoint.

    On the embedded engine ingest applies the migrations itself, so ``custody up`` needs
    no extra step; a server's migrations are an operator's ``custody migrate`` (ingest's
    user need not be allowed DDL), and ingest waits, retrying, until the tables exist.
    """
    import signal

    from processors.metrics_endpoint import serve_registry
    from processors.serve import QueryApi
    from processors.serving.metrics import ServeMetrics
    from processors.stack import INGEST, INGEST_METRICS_VARIABLE, heartbeat_path
    from processors.storage.backend import open_backend
    from processors.storage.migrations import migrate
    from processors.storage.target import ChdbTarget, parse_target

    # The driver logs a traceback per failed connection attempt; the retry loop already
    # logs each failure once, in one line.
    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)
    target = parse_target(settings.clickhouse())
    embedded = isinstance(target, ChdbTarget)
    backend = open_backend(target)
    if embedded:
        applied = migrate(target, settings.retention_days, backend)
        if applied:
            _log.info("applied migrations %s", ", ".join(applied))
    metrics = ConsumerMetrics("ingest")
    endpoint = serve_registry(metrics.registry, metrics_address, INGEST_METRICS_VARIABLE)
    ingest = Ingest(settings, BatchWriter(backend), heartbeat_path(settings, INGEST), metrics)
    api = (
        QueryApi(settings, backend, ingest.stats.as_dict, ServeMetrics(metrics.registry))
        if (serve or embedded)
        else None
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: ingest.stop.set())
    if api is not None:
        api.start()
    _log.info("ingesting %s into %s", ", ".join(TOPICS), target.describe())
    try:
        ingest.run()
    finally:
        if api is not None:
            api.stop()
        backend.close()
        endpoint.close()
