"""Ingest throughput: ``custody ingest`` on the embedded engine against a floor measured
in the same run.

N events (``CUSTODY_BENCH_INGEST_EVENTS``, default 200,000) of realistic custody trees
(:class:`tests.bench.bench_producer.TreeGenerator`; about 580 bytes per event, unique
event ids) are stamped with a hash chain (``event_to_avro(event, chain=...)``), encoded
with ``AvroCodec`` and produced raw, keyed by ``root_task_id``, to ``custody.events.v1``
(6 partitions) of a fresh local Tansu broker before anything is timed. Then, alternately,
each in its own subprocess (:mod:`tests.bench.ingest_worker`) on a fresh, migrated chdb
directory:

- **floor**: a confluent-kafka consumer (partitions assigned directly) reads every record
  with ``consume(10000)``, strips the 10-byte single-object header, frames 10,000 bodies
  per Avro container (:func:`processors.storage.avro_frames.container`) and inserts it
  with ``send_insert("INSERT INTO events_avro", "Avro")``: consuming plus ClickHouse's own
  Avro parsing of the same events, nothing else.
- **ingest**: the real :class:`processors.ingest.Ingest` with
  :class:`processors.storage.sink.BatchWriter` (``ingest_batch_rows`` 10,000, development
  profile, 2 s session timeout) in a thread, under a fresh consumer group; it also
  subscribes to the (empty) state and alerts topics, checks every record, commits after
  every batch.

Rate = events / (time the ``events`` table answers ``SELECT count() FROM events FINAL`` =
N - time the first ``consume`` call returned records). Starting at the first record keeps
ingest's group join (about 1 s on Tansu) and both processes' start-up (importing chdb,
migrating) out of both figures. Medians of :data:`ROUNDS` alternating rounds; ratio =
ingest / floor. Goal: ratio >= 0.8 and >= 80k events/s. The detail also gives each side's
CPU time per event (the worker process, all threads, over the same interval): the broker,
the consumer threads, chdb and Python share two cores, so CPU per event is what the rate
follows, and it moves less than the rate when other work runs on the machine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producers.admin import ensure_topics
from producers.chain import HashChain
from producers.settings import Settings
from schemas import catalog, topics
from schemas.codec import AvroCodec, body_bytes, event_to_avro
from tests.bench.bench_producer import generate
from tests.bench.results import (
    Entry,
    alternate,
    announce,
    entry,
    env_count,
    first_run_profile,
    produce_all,
    rates_by_round,
)
from tests.support.broker import local_broker
from tests.support.measure import py_spy

DEFAULT_EVENTS = 200_000
ROUNDS = 3
PARTITIONS = 6
INSTANCES = 8
UNIT = "events/s"
GOAL_RATIO = 0.8
GOAL_RATE = 80_000
RUN_TIMEOUT = 300.0


# ---- the events -----------------------------------------------------------------------


@dataclass(frozen=True)
class Messages:
    """The encoded events, as produced: (key, value) pairs."""

    pairs: list[tuple[bytes, bytes]]

    @property
    def mean_bytes(self) -> float:
        return sum(len(value) for _, value in self.pairs) / len(self.pairs)


def encoded(count: int) -> Messages:
    """``count`` realistic events, stamped with :data:`INSTANCES` hash chains (one per
    tree, round-robin) and encoded as the SDK sends them."""
    codec = AvroCodec()
    chains: dict[str, HashChain] = {}
    owner: dict[str, str] = {}
    pairs = []
    for event in generate(count):
        root = event.root_task_id
        instance = owner.setdefault(root, f"bench-ingest/{len(owner) % INSTANCES}")
        chain = chains.setdefault(instance, HashChain())
        link = chain.next_link()
        message = codec.encode(
            catalog.EVENT, event_to_avro(event, chain=(instance, link.seq, link.prev_hash))
        )
        chain.advance(link.seq, body_bytes(message))
        pairs.append((root.encode(), message))
    return Messages(pairs)


def produce(settings: Settings, messages: Messages) -> None:
    """Every message to the events topic, keyed by root task; waits for every ack."""
    produce_all(settings, topics.EVENTS, messages.pairs, "events")


# ---- one run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    mode: str
    rate: float
    result: dict[str, Any]

    @property
    def cpu_us(self) -> float:
        """CPU time of the worker process (all its threads) per event, in microseconds:
        less sensitive than the rate to other load on the machine."""
        return float(self.result["cpu_seconds"]) / int(self.result["count"]) * 1e6


def run_worker(
    mode: str, bootstrap: str, count: int, workdir: Path, profile: Path | None = None
) -> Run:
    """One worker subprocess on a fresh chdb directory, to completion."""
    base = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=workdir))
    result_path = base / "result.json"
    log_path = base / "worker.log"
    command = [
        sys.executable,
        "-m",
        "tests.bench.ingest_worker",
        mode,
        bootstrap,
        str(count),
        str(base / "chdb"),
        str(result_path),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        with py_spy(process.pid, profile):
            code = process.wait(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if code != 0 or not result_path.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{mode} worker failed ({code}):\n{tail}")
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    if result["count"] != count:
        raise RuntimeError(f"{mode}: events holds {result['count']} rows, expected {count}")
    return Run(mode, count / (result["done"] - result["first"]), result)


# ---- run ------------------------------------------------------------------------------


def run() -> list[Entry]:
    """Produce once, then floor and ingest alternately; medians as entries."""
    count = env_count("CUSTODY_BENCH_INGEST_EVENTS", DEFAULT_EVENTS)
    started = announce("ingest", count, "generating {count} events")
    messages = encoded(count)
    with local_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(kafka_bootstrap=bootstrap, event_partitions=PARTITIONS)
        ensure_topics(settings.kafka_admin(), settings.event_topic_partitions())
        produce(settings, messages)
        print(f"ingest: {count:,} events produced ({messages.mean_bytes:,.0f} bytes each)")
        workdir = Path(tmp)

        def measured(number: int) -> Run:
            profile = first_run_profile("CUSTODY_BENCH_INGEST_PYSPY", number)
            return run_worker("ingest", bootstrap, count, workdir, profile)

        floors, ingests = alternate(
            "ingest",
            ROUNDS,
            lambda _: run_worker("floor", bootstrap, count, workdir),
            measured,
            UNIT,
        )
    floor = statistics.median(r.rate for r in floors)
    rate = statistics.median(r.rate for r in ingests)
    last = ingests[-1].result
    detail = {
        "events": count,
        "rounds": ROUNDS,
        "mean_message_bytes": round(messages.mean_bytes, 1),
        **rates_by_round(floor=floors, ingest=ingests),
        "floor_cpu_us_per_event": round(statistics.median(r.cpu_us for r in floors), 2),
        "ingest_cpu_us_per_event": round(statistics.median(r.cpu_us for r in ingests), 2),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "ingest_batches": last["batches"],
        "dead_lettered": last["dead_lettered"],
        "goal": f"ratio >= {GOAL_RATIO} and >= {GOAL_RATE:,} {UNIT}",
        "goal_met": rate / floor >= GOAL_RATIO and rate >= GOAL_RATE,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    return [
        entry("ingest.throughput", rate, UNIT, floor, detail),
        entry("ingest.floor_consume_chdb_avro", floor, UNIT, detail=detail),
    ]
