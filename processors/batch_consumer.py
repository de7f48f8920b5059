"""A plain Kafka consumer (no faust) that handles records in batches and commits after
the work: the loop shared by ``custody ingest`` and ``custody notify``.

For each batch (bounded by records, bytes and time) a subclass's :meth:`BatchConsumer.process`
does the work (store it, post it) and returns what it could not take; those go to
``custody.dlq.v1`` and the broker's ack is awaited; only then are the batch's offsets
committed. A crash anywhere before the commit replays the batch.

While the work cannot be done (ClickHouse or Alertmanager unreachable, a refused
statement) ``process`` raises :class:`Retry`: the consumer pauses its partitions and
retries the same batch with exponential backoff, staying in its group; nothing is
committed, so nothing is lost even if it is killed meanwhile.

The retry loop is written here rather than taken from a retry library (tenacity,
stamina): between attempts it must keep the consumer's group membership alive, pause and
resume partitions, and end on a stop request, which a generic retry wrapper cannot do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from processors.consumer_metrics import ConsumerMetrics
from processors.dead_letters import dlq_headers, dlq_key, dlq_value
from processors.storage.sink import Record, Rejected
from producers.settings import Settings
from schemas import topics

_FETCH_MAX = 10_000

_T = TypeVar("_T")
_R = TypeVar("_R")


class Stopped(Exception):
    """A stop was requested while a batch waited to be handled; it was not committed."""


class Retry(Exception):
    """A step failed in a way that waiting can cure (a peer or the broker is away)."""


@dataclass
class ConsumerStats:
    """What a batch consumer reports of its work (a process adds its own counters)."""

    dead_lettered: int = 0
    retries: int = 0
    last_error: str | None = None
    last_commit_at: float | None = None
    started_at: float = field(default_factory=time.time)

    def waited(self, error: str | None) -> bool:
        """Note an attempt that failed with ``error`` (None: one that succeeded); whether
        the consumer now waits."""
        if error is not None:
            self.retries += 1
            self.last_error = error
        return error is not None

    def committed(self, rejected: int, at: float | None) -> None:
        """Note a batch committed at ``at`` with ``rejected`` records dead-lettered."""
        self.dead_lettered += rejected
        self.last_commit_at = at

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BatchLimits:
    """When a batch is handled: once it holds ``records`` records or ``size`` bytes, or
    once its first record has waited ``seconds``."""

    records: int
    size: int
    seconds: float


@dataclass(slots=True)
class Batch:
    """The records of one batch and the offsets that commit it."""

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


def as_record(message: Message) -> Record:
    """A consumed message (without error, so it has a topic, partition and offset)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError(f"a consumed message without its place: {topic} [{partition}] {offset}")
    return Record(topic, partition, offset, message.key(), message.value())


class BatchConsumer:
    """One consumer of ``subscribed`` in ``group``. ``run`` blocks until ``stop`` is set,
    then finishes its batch. Subclasses implement :meth:`process` and
    :meth:`note_waiting`."""

    stage: str = "consumer"
    """The stage named in dead letters and logs."""

    def __init__(
        self,
        settings: Settings,
        group: str,
        subscribed: Sequence[str],
        limits: BatchLimits,
        retry_max_seconds: float,
        heartbeat: Path | None = None,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.subscribed = tuple(subscribed)
        self.limits = limits
        self.retry_max_seconds = retry_max_seconds
        self.heartbeat = heartbeat
        self.metrics = metrics
        if heartbeat is not None:
            # A process run on its own (a server deployment, not `custody up`) may be the
            # first to use CUSTODY_HOME.
            heartbeat.parent.mkdir(parents=True, exist_ok=True)
        self.stop = threading.Event()
        self.log = logging.getLogger(f"custody.{self.stage}")
        self.last_commit_at: float | None = None
        self._consumer = Consumer(
            {**settings.kafka_consumer(group), "fetch.max.bytes": 64 * 1024 * 1024}
        )
        self._producer = Producer(
            {**settings.kafka_producer(), "message.timeout.ms": 30_000, "linger.ms": 0}
        )
        self._assigned: set[tuple[str, int]] = set()

    # ---- what a subclass does ------------------------------------------------------------

    def process(self, records: list[Record]) -> Sequence[Rejected]:
        """Do the batch's work; return the records it cannot take (they are
        dead-lettered). Raise :class:`Retry` when waiting can cure a failure."""
        raise NotImplementedError

    def note_waiting(self, error: str | None) -> None:
        """The work failed with ``error`` and is waited for; None: it succeeded."""
        raise NotImplementedError

    def note_committed(self, batch: Batch, rejected: Sequence[Rejected]) -> None:
        """A batch was handled and its offsets committed (or left to a new owner)."""

    def tick(self) -> None:
        """Called about once a second between batches, for periodic work."""

    # ---- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Consume, process, dead-letter, commit; until :attr:`stop` is set."""
        self._consumer.subscribe(
            list(self.subscribed), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        batch = Batch()
        try:
            while not self.stop.is_set():
                self._beat()
                self.tick()
                wait = self._time_left(batch)
                wanted = min(_FETCH_MAX, self.limits.records - len(batch.records))
                for message in self._consumer.consume(max(wanted, 1), timeout=wait):
                    error = message.error()
                    if error is not None:
                        self.log.warning("consumer error: %s", error)
                        continue
                    batch.add(as_record(message))
                if batch.records and self._full(batch):
                    self.flush(batch)
                    batch = Batch()
            if batch.records:
                self.flush(batch)
        except Stopped as exc:
            self.log.warning("%s", exc)
        finally:
            self._consumer.close()
            self._producer.flush(10)

    def _time_left(self, batch: Batch) -> float:
        if not batch.records:
            return 1.0
        left = self.limits.seconds - (time.monotonic() - batch.opened_at)
        return min(max(left, 0.0), 1.0)

    def _full(self, batch: Batch) -> bool:
        return (
            len(batch.records) >= self.limits.records
            or batch.size >= self.limits.size
            or time.monotonic() - batch.opened_at >= self.limits.seconds
        )

    # ---- one batch -----------------------------------------------------------------------

    def flush(self, batch: Batch) -> None:
        """Process ``batch``, dead-letter what it rejected, commit its offsets."""
        started = time.perf_counter()
        rejected = self._retrying(self.process, batch.records)
        if rejected:
            self._retrying(self._dead_letter, list(rejected))
        self._commit(batch.ends)
        if self.metrics is not None:
            self.metrics.batch_done(batch.records, rejected, time.perf_counter() - started)
            self._measure_lag(self.metrics, batch.ends)
        self.note_committed(batch, rejected)

    def _retrying(self, step: Callable[[_T], _R], argument: _T) -> _R:
        """Run ``step`` until it succeeds, pausing the partitions and backing off between
        attempts, staying in the group. A stop request ends the wait with :class:`Stopped`
        (the batch is not committed, so it is replayed after a restart)."""
        delay = 0.5
        paused = False
        try:
            while True:
                try:
                    outcome = step(argument)
                    self.note_waiting(None)
                    if self.metrics is not None:
                        self.metrics.waiting.set(0)
                    return outcome
                except Retry as exc:
                    self.note_waiting(str(exc)[:500])
                    if self.metrics is not None:
                        self.metrics.retried()
                    self.log.warning("%s; retrying in %.1fs", str(exc)[:300], delay)
                if not paused:
                    self._consumer.pause(self._assignment())
                    paused = True
                self._wait(delay)
                delay = min(delay * 2, self.retry_max_seconds)
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
                record = as_record(message)
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
                    self.stage,
                    record.topic,
                    record.partition,
                    record.offset,
                ),
                *kept,
            ]
            self.log.warning(
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
            raise Retry(f"the broker has not acknowledged {len(failed)} dead letters")

    def _commit(self, ends: dict[tuple[str, int], int]) -> None:
        # A partition revoked while the batch was handled now belongs to another consumer,
        # which will handle those records again; it is not ours to commit.
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
            # Not fatal: the work is done, and a replay does it again harmlessly.
            self.log.warning("commit failed, the batch will be replayed: %s", exc)
            return
        self.last_commit_at = time.time()

    def _measure_lag(self, metrics: ConsumerMetrics, ends: dict[tuple[str, int], int]) -> None:
        """The lag of each partition the batch touched: the highwater mark of the last
        fetch minus the next offset to handle (no request: the client's cached value)."""
        for (topic, partition), next_offset in ends.items():
            if (topic, partition) not in self._assigned:
                continue
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high >= 0:
                metrics.lagging(topic, partition, high - next_offset)

    # ---- group membership and health -------------------------------------------------

    def _assignment(self) -> list[TopicPartition]:
        return [TopicPartition(topic, partition) for topic, partition in self._assigned]

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((p.topic, p.partition) for p in partitions)
        self.log.info("assigned %d partitions", len(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.difference_update((p.topic, p.partition) for p in partitions)
        if self.metrics is not None:
            self.metrics.forget((p.topic, p.partition) for p in partitions)

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.touch()
