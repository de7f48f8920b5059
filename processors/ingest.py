"""``custody ingest``: the ClickHouse sink, a plain Kafka consumer (no faust).

It consumes ``custody.events.v1``, ``custody.state.v1`` and ``custody.alerts.v1`` and,
for each batch (bounded by records, bytes and time):

1. writes it with :class:`~processors.storage.sink.BatchWriter` (idempotent inserts);
2. sends what could not be stored to ``custody.dlq.v1`` and waits for the broker's ack;
3. only then commits the batch's offsets.

A crash anywhere before 3 replays the batch, and the replay stores nothing twice. While
ClickHouse is unreachable (or refuses the statement, e.g. a missing table) the consumer
pauses its partitions and retries the same batch with exponential backoff, staying in its
group; nothing is committed, so nothing is lost even if it is killed meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from processors.dead_letters import dlq_headers, dlq_key, dlq_value
from processors.storage.backend import StorageError, StorageRejected
from processors.storage.sink import BatchWriter, Record, Rejected, WriteResult
from producers.settings import Settings
from schemas import topics

TOPICS = (topics.EVENTS, topics.STATE, topics.ALERTS)
_FETCH_MAX = 10_000

_log = logging.getLogger("custody.ingest")


class Stopped(Exception):
    """A stop was requested while a batch waited to be stored; it was not committed."""


class _Retry(Exception):
    """A step failed in a way that waiting can cure (ClickHouse or the broker is away)."""


_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass
class IngestStats:
    """Counters the query API reports under /health."""

    batches: int = 0
    stored: int = 0
    stored_by_topic: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0
    redacted: int = 0
    retries: int = 0
    waiting_for_clickhouse: bool = False
    last_error: str | None = None
    last_commit_at: float | None = None
    started_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Batch:
    records: list[Record] = field(default_factory=list)
    size: int = 0
    opened_at: float = 0.0
    # The offset to commit per partition: a partition's records arrive in offset order.
    ends: dict[tuple[str, int], int] = field(default_factory=dict)

    def add(self, record: Record) -> None:
        if not self.records:
            self.opened_at = time.monotonic()
        self.records.append(record)
        self.size += len(record.value or b"")
        self.ends[record.topic, record.partition] = record.offset + 1


def _record(message: Message) -> Record:
    """A consumed message (without error, so it has a topic, partition and offset)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError(f"a consumed message without its place: {topic} [{partition}] {offset}")
    return Record(topic, partition, offset, message.key(), message.value())


class Ingest:
    """One ingest consumer. ``run`` blocks until ``stop`` is set, then finishes its batch."""

    def __init__(
        self,
        settings: Settings,
        writer: BatchWriter,
        heartbeat: Path | None = None,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.heartbeat = heartbeat
        if heartbeat is not None:
            # `custody ingest` run on its own (a server deployment, not `custody up`) may be
            # the first to use CUSTODY_HOME.
            heartbeat.parent.mkdir(parents=True, exist_ok=True)
        self.stats = IngestStats()
        self.stop = threading.Event()
        self._consumer = Consumer(
            {
                **settings.kafka_consumer(settings.ingest_group),
                "fetch.max.bytes": 64 * 1024 * 1024,
            }
        )
        self._producer = Producer(
            {**settings.kafka_producer(), "message.timeout.ms": 30_000, "linger.ms": 0}
        )
        self._assigned: set[tuple[str, int]] = set()

    # ---- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Consume, store, dead-letter, commit; until :attr:`stop` is set."""
        self._consumer.subscribe(list(TOPICS), on_assign=self._on_assign, on_revoke=self._on_revoke)
        batch = _Batch()
        try:
            while not self.stop.is_set():
                self._beat()
                wait = self._time_left(batch)
                wanted = min(_FETCH_MAX, self.settings.ingest_batch_rows - len(batch.records))
                for message in self._consumer.consume(max(wanted, 1), timeout=wait):
                    error = message.error()
                    if error is not None:
                        _log.warning("consumer error: %s", error)
                        continue
                    batch.add(_record(message))
                if batch.records and self._full(batch):
                    self._flush(batch)
                    batch = _Batch()
            if batch.records:
                self._flush(batch)
        except Stopped as exc:
            _log.warning("%s", exc)
        finally:
            self._consumer.close()
            self._producer.flush(10)

    def _time_left(self, batch: _Batch) -> float:
        if not batch.records:
            return 1.0
        left = self.settings.ingest_batch_seconds - (time.monotonic() - batch.opened_at)
        return min(max(left, 0.0), 1.0)

    def _full(self, batch: _Batch) -> bool:
        return (
            len(batch.records) >= self.settings.ingest_batch_rows
            or batch.size >= self.settings.ingest_batch_bytes
            or time.monotonic() - batch.opened_at >= self.settings.ingest_batch_seconds
        )

    # ---- one batch -----------------------------------------------------------------------

    def _flush(self, batch: _Batch) -> None:
        result = self._retrying("ClickHouse cannot take the batch", self._store, batch.records)
        if result.rejected:
            self._retrying(
                "the broker has not acknowledged the dead letters",
                self._dead_letter,
                list(result.rejected),
            )
        self._commit(batch.ends)
        self.stats.batches += 1
        self.stats.stored += result.stored
        for topic, count in result.stored_by_topic.items():
            self.stats.stored_by_topic[topic] = self.stats.stored_by_topic.get(topic, 0) + count
        self.stats.dead_lettered += len(result.rejected)
        self.stats.redacted += result.redacted

    def _store(self, records: list[Record]) -> WriteResult:
        try:
            return self.writer.write(records)
        except StorageRejected as exc:
            if exc.data_error:
                raise  # the writer isolates bad records itself: this is a bug, not an outage
            raise _Retry(str(exc)) from None
        except StorageError as exc:
            raise _Retry(str(exc)) from None

    def _retrying(self, what: str, step: Callable[[_T], _R], argument: _T) -> _R:
        """Run ``step`` until it succeeds, pausing the partitions and backing off between
        attempts, staying in the group. A stop request ends the wait with :class:`Stopped`
        (the batch is not committed, so it is replayed after a restart)."""
        delay = 0.5
        paused = False
        try:
            while True:
                try:
                    outcome = step(argument)
                    self.stats.waiting_for_clickhouse = False
                    return outcome
                except _Retry as exc:
                    self.stats.retries += 1
                    self.stats.waiting_for_clickhouse = True
                    self.stats.last_error = f"{what}: {exc}"[:500]
                    _log.warning("%s (%s); retrying in %.1fs", what, str(exc)[:300], delay)
                if not paused:
                    self._consumer.pause(self._assignment())
                    paused = True
                self._wait(delay)
                delay = min(delay * 2, self.settings.ingest_retry_max_seconds)
        finally:
            if paused:
                self._consumer.resume(self._assignment())

    def _wait(self, seconds: float) -> None:
        """Wait while keeping the group membership alive (paused: nothing is fetched)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.stop.is_set():
                raise Stopped("stopped while waiting to retry; the batch was not committed")
            self._beat()
            # ``left`` is computed once: a negative timeout means "block forever" to
            # confluent-kafka, and paused partitions would never end that wait.
            messages = self._consumer.consume(1, timeout=min(0.5, left))
            # Paused partitions deliver nothing; a message here is from a partition assigned
            # during the pause, and it will be fetched again after the commit of this batch.
            if messages:
                self._seek_back(messages)

    def _seek_back(self, messages: list[Message]) -> None:
        for message in messages:
            if message.error() is None:
                record = _record(message)
                self._consumer.seek(TopicPartition(record.topic, record.partition, record.offset))
        self._consumer.pause(self._assignment())

    def _dead_letter(self, rejected: list[Rejected]) -> None:
        """Send dead letters and wait for the broker's ack; what fails is sent again on the
        next attempt (the DLQ is at-least-once, like every output)."""
        failed: list[Rejected] = []

        def delivered(item: Rejected) -> Callable[[Any, Message], None]:
            def report(error: Any, _message: Message) -> None:
                if error is not None:
                    failed.append(item)

            return report

        for item in rejected:
            record = item.record
            value, kept = dlq_value(record.value)
            headers: list[tuple[str, str | bytes | None]] = [
                *dlq_headers(
                    item.reason,
                    item.detail,
                    "ingest",
                    record.topic,
                    record.partition,
                    record.offset,
                ),
                *kept,
            ]
            _log.warning(
                "dead-lettered %s[%d]@%d: %s: %s",
                record.topic,
                record.partition,
                record.offset,
                item.reason,
                item.detail[:200],
            )
            self._producer.produce(
                topics.DLQ,
                key=dlq_key(record.key),
                value=value,
                headers=headers,
                on_delivery=delivered(item),
            )
        while self._producer.flush(5):
            if self.stop.is_set():
                raise Stopped("stopped while dead letters were unacknowledged")
        if failed:
            rejected[:] = failed
            raise _Retry(f"{len(failed)} dead letters failed")

    def _commit(self, ends: dict[tuple[str, int], int]) -> None:
        # A partition revoked while the batch was stored now belongs to another consumer,
        # which will store those records again (idempotently); it is not ours to commit.
        offsets = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in ends.items()
            if (topic, partition) in self._assigned
        ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Not fatal: the batch is stored, and a replay stores nothing twice.
            _log.warning("commit failed, the batch will be replayed: %s", exc)
            return
        self.stats.last_commit_at = time.time()

    # ---- group membership and health -------------------------------------------------

    def _assignment(self) -> list[TopicPartition]:
        return [TopicPartition(topic, partition) for topic, partition in self._assigned]

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((p.topic, p.partition) for p in partitions)
        _log.info("assigned %d partitions", len(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.difference_update((p.topic, p.partition) for p in partitions)

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.touch()


def run(settings: Settings, serve: bool | None = None) -> None:
    """Run ingest until SIGTERM/SIGINT; with ``serve`` (default: on the embedded engine,
    which only this process may open) also the query API, on the same connection.

    On the embedded engine ingest applies the migrations itself, so ``custody up`` needs
    no extra step; a server's migrations are an operator's ``custody migrate`` (ingest's
    user need not be allowed DDL), and ingest waits, retrying, until the tables exist.
    """
    import signal

    from processors.serve import QueryApi
    from processors.stack import INGEST, heartbeat_path
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
    ingest = Ingest(settings, BatchWriter(backend), heartbeat_path(settings, INGEST))
    api = QueryApi(settings, backend, ingest.stats.as_dict) if (serve or embedded) else None
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
