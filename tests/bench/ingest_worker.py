"""The subprocess side of the ingest benchmark: one run on a fresh chdb directory.

``python -m tests.bench.ingest_worker MODE BOOTSTRAP COUNT CHDB_DIR RESULT_PATH``

- ``floor``: a confluent-kafka consumer assigned every partition of ``custody.events.v1``
  from the beginning reads ``COUNT`` records with ``consume(10000)``, strips each value's
  10-byte single-object header, frames 10,000 bodies per container with
  :func:`processors.storage.avro_frames.container` and inserts each container with chdb's
  ``send_insert("INSERT INTO events_avro", "Avro")``: consume + ClickHouse-side Avro
  parsing, no project logic (no batching rules, commits, DLQ or secret checks).
- ``ingest``: the real :class:`processors.ingest.Ingest` with a
  :class:`processors.storage.sink.BatchWriter` on the embedded backend, run in a thread,
  under a consumer group of its own (``ingest_group`` is set per run, so a round never
  resumes from an earlier round's commits).

Both start the clock when their first ``consume`` call returns records (the group join
of ``ingest`` and any client start-up are not timed) and stop it once
``SELECT count() FROM events FINAL`` answers ``COUNT``. Both migrate the directory before
consuming (not timed). The result file holds ``first``, ``done`` (``time.perf_counter``
of this process), ``cpu_seconds`` (``time.process_time`` between the two: every thread of
this process), the count and, for ``ingest``, its counters.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from processors.batch_consumer import BatchConsumer
from processors.storage.avro_frames import container
from processors.storage.backend import ChdbBackend
from processors.storage.migrations import migrate
from processors.storage.target import ChdbTarget
from producers.settings import Settings
from schemas import catalog, topics
from schemas.codec import SINGLE_OBJECT_HEADER_SIZE
from tests.bench.results import consumer_settings
from tests.support.broker import payload

BATCH = 10_000
FETCH_MAX_BYTES = 64 * 1024 * 1024
"""``fetch.max.bytes`` of ingest's consumer, given to the floor's consumer too."""
DEADLINE_SECONDS = 300.0
COUNT_SQL = "SELECT count() AS n FROM events FINAL"


def bench_settings(bootstrap: str, chdb_dir: Path) -> Settings:
    """Ingest's settings in the benchmark (short session timeout, 10k-row batches)."""
    return consumer_settings(
        bootstrap,
        ingest_batch_rows=BATCH,
        event_partitions=6,
        clickhouse_url=f"chdb://{chdb_dir}",
        home=chdb_dir.parent / "home",
    )


def migrated(chdb_dir: Path, settings: Settings) -> ChdbBackend:
    """A backend on a freshly migrated directory."""
    target = ChdbTarget(chdb_dir)
    backend = ChdbBackend(target)
    migrate(target, settings.retention_days, backend)
    return backend


def stored(backend: ChdbBackend) -> int:
    return int(backend.select(COUNT_SQL)[0]["n"])


# ---- floor ----------------------------------------------------------------------------


@dataclass
class Started:
    """When a floor's first record came: wall clock and CPU time."""

    at: tuple[float, float] | None = None


def consumed(
    consumer: Consumer,
    count: int,
    size: Callable[[], int],
    timeout: float,
    started: Started,
) -> Iterator[Message]:
    """The first ``count`` good records ``consumer`` gives, fetched ``size()`` at a time,
    noting in ``started`` when the first came; fails past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"floor: {seen} of {count} records after the deadline")
        messages = consumer.consume(max(size(), 1), timeout=1.0)
        if messages and started.at is None:
            started.at = time.perf_counter(), time.process_time()
        for message in messages:
            if message.error() is None:
                seen += 1
                yield message


def run_floor(settings: Settings, count: int, chdb_dir: Path) -> dict[str, Any]:
    """Consume, strip, frame, let chdb parse; no project logic on the way."""
    migrated(chdb_dir, settings).close()
    from chdb import session

    open_session: Any = session.Session  # chdb has no type hints
    chdb = open_session(str(chdb_dir))
    chdb.query("USE custody", "TSV")
    schema_json = json.dumps(catalog.latest(catalog.EVENT).raw)
    consumer = Consumer(
        {
            **settings.kafka_consumer(f"bench-ingest-floor-{uuid.uuid4().hex[:8]}"),
            "fetch.max.bytes": FETCH_MAX_BYTES,
        }
    )
    metadata = consumer.list_topics(topics.EVENTS, timeout=10).topics[topics.EVENTS]
    consumer.assign(
        [TopicPartition(topics.EVENTS, p, OFFSET_BEGINNING) for p in metadata.partitions]
    )
    header = SINGLE_OBJECT_HEADER_SIZE
    started = Started()
    seen = 0
    bodies: list[bytes] = []
    inserts = 0

    def insert() -> None:
        nonlocal inserts
        with chdb.send_insert("INSERT INTO events_avro", "Avro") as inserter:
            inserter.append(container(schema_json, bodies))
            inserter.finish()
        inserts += 1
        bodies.clear()

    try:
        for message in consumed(consumer, count, lambda: BATCH, DEADLINE_SECONDS, started):
            bodies.append(payload(message)[header:])
            seen += 1
            if len(bodies) == BATCH:
                insert()
        if bodies:
            insert()
        found = int(chdb.query(COUNT_SQL, "TSV").bytes())
        done, done_cpu = time.perf_counter(), time.process_time()
    finally:
        consumer.close()
        chdb.close()
    assert started.at is not None
    first, first_cpu = started.at
    return {
        "first": first,
        "done": done,
        "cpu_seconds": done_cpu - first_cpu,
        "count": found,
        "consumed": seen,
        "inserts": inserts,
    }


# ---- ingest ---------------------------------------------------------------------------


class ClockedConsumer:
    """Ingest's consumer, noting when the first ``consume`` call returned records."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.first: float | None = None
        self.first_cpu = 0.0

    def consume(self, *args: Any, **kwargs: Any) -> list[Message]:
        messages = self._consumer.consume(*args, **kwargs)
        if messages and self.first is None:
            self.first, self.first_cpu = time.perf_counter(), time.process_time()
        return messages

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


@dataclass
class InThread:
    """A batch consumer (ingest, notify) run in a thread of its own, its Kafka consumer
    clocked (:class:`ClockedConsumer`), and what ended the thread if it failed."""

    worker: BatchConsumer
    clock: ClockedConsumer
    thread: threading.Thread
    failure: list[BaseException] = field(default_factory=list)

    def check(self, name: str, deadline: float, progress: str) -> None:
        """Raise if the thread failed or ``deadline`` (monotonic) passed."""
        if self.failure or not self.thread.is_alive():
            raise RuntimeError(f"{name} stopped: {self.failure[:1]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {progress} after the deadline")

    def stop(self) -> None:
        self.worker.stop.set()
        self.thread.join(timeout=30)


def in_thread(worker: BatchConsumer, name: str) -> InThread:
    """Start ``worker.run()`` in a thread, its consumer clocked."""
    clock = ClockedConsumer(worker._consumer)
    # A proxy that times the real consumer stands in for it (it is no Consumer subclass).
    worker._consumer = clock  # type: ignore[assignment]
    running = InThread(worker, clock, threading.Thread(name=name))

    def loop() -> None:
        try:
            worker.run()
        except BaseException as exc:
            running.failure.append(exc)
            raise

    running.thread = threading.Thread(target=loop, name=name)
    running.thread.start()
    return running


def run_ingest(settings: Settings, count: int, chdb_dir: Path) -> dict[str, Any]:
    """The real ingest loop in a thread, until ``events`` holds every record."""
    from processors import ingest as ingest_module
    from processors.storage.sink import BatchWriter

    backend = migrated(chdb_dir, settings)
    fresh_group = settings.model_copy(
        update={"ingest_group": f"bench-ingest-{uuid.uuid4().hex[:8]}"}
    )
    ingest = ingest_module.Ingest(fresh_group, BatchWriter(backend))
    running = in_thread(ingest, "ingest")
    deadline = time.monotonic() + DEADLINE_SECONDS
    found = 0
    try:
        # Cheap trigger first (the counter is updated after each batch's commit), then the
        # count itself, which is what the clock stops on.
        while True:
            running.check("ingest", deadline, f"{ingest.stats.stored} of {count}")
            if ingest.stats.stored >= count:
                found = stored(backend)
                if found >= count:
                    break
            # Not tighter: a thread waking every few ms takes the GIL from the ingest
            # thread often enough to slow it (the floor has no such watcher); 50 ms is
            # under 2% of a run.
            time.sleep(0.05)
        done, done_cpu = time.perf_counter(), time.process_time()
    finally:
        running.stop()
        backend.close()
    clock = running.clock
    assert clock.first is not None
    stats = ingest.stats
    return {
        "first": clock.first,
        "done": done,
        "cpu_seconds": done_cpu - clock.first_cpu,
        "count": found,
        "batches": stats.batches,
        "stored": stats.stored,
        "dead_lettered": stats.dead_lettered,
        "redacted": stats.redacted,
        "retries": stats.retries,
    }


def main(argv: list[str]) -> None:
    mode, bootstrap, count_text, chdb_text, result_text = argv
    count, chdb_dir = int(count_text), Path(chdb_text)
    settings = bench_settings(bootstrap, chdb_dir)
    if mode == "floor":
        result = run_floor(settings, count, chdb_dir)
    elif mode == "ingest":
        result = run_ingest(settings, count, chdb_dir)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    result["pid"] = os.getpid()
    Path(result_text).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
