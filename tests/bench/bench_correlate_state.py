"""Correlator state over a long run: memory stays flat while history grows, and a restart
after ``kill -9`` does not replay history.

The traffic of :mod:`tests.bench.bench_correlate` (custody trees 2 s of event time apart,
each misbehaviour in turn, :data:`PRODUCER_INSTANCES` hash chains), generated as a stream in
event-time order and published in chunks as the worker reads, at most :data:`LEAD` events
ahead of it: steady traffic, not a backlog (read unevenly across partitions, a backlog
makes chain links wait for each other, and their memory would be the backlog's, not
history's). The worker runs with a short tree retention (:data:`RETENTION_SECONDS` of
event time): a tree is retired about 16 minutes of event time after it starts (its tokens
live 15 minutes), so live trees stay about constant while the run goes on for days of
event time. Each worker is the real one (:func:`processors.correlator.app.run_worker`) in
a subprocess of its own (this module, ``worker`` mode), on a broker of its own, with its
own data directory; it writes what its step holds and has processed to a small JSON file.

- ``correlate.soak_rss_growth``: the worker's resident memory (``VmRSS``) once it has
  processed the whole run (``CUSTODY_BENCH_SOAK_EVENTS``, default 2,000,000) against the
  same process's once it had processed the first tenth (200,000), each once it has caught
  up with everything published and a few timer steps more; goal at most 1.2. The detail
  has the live trees and the trees retired at both points.
- ``correlate.restart_growth``: the time from starting the worker again after ``kill -9``
  to its first processed event, after the whole run against after the first tenth (a
  second run, on a broker of its own, to the tenth and killed there); goal at most 1.5.
  A few events are published while the worker is down, so the restarted one has work at
  once; the time includes the interpreter's start, the group join (the killed member's
  session, 2 s, runs out first), the recovery of the tables and their indexing.

``python -m tests.bench correlate_state``; ``CUSTODY_BENCH_SOAK_EVENTS=300000`` for a quick
run (about three minutes on an idle machine; the full run about fifteen).
"""

from __future__ import annotations

import heapq
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from processors.correlation.chains import ChainState
from processors.correlator import app as correlator_app
from processors.correlator.step import Correlation, Outbound, Record, TreeWrites
from producers.admin import ensure_topics
from producers.settings import Settings
from schemas.models import Envelope
from tests.bench.bench_correlate import (
    PRODUCER_INSTANCES,
    TREE_SPACING_SECONDS,
    publish,
)
from tests.bench.correlate_worker import bench_settings, read_stats
from tests.bench.results import Entry, entry, env_count
from tests.support.broker import local_broker
from tests.support.events import T0
from tests.support.polling import poll
from tests.support.samples import Chain
from tests.support.trees import in_turn, mischievous

DEFAULT_EVENTS = 2_000_000
# The first checkpoint is this fraction of the run.
CHECKPOINT = 0.1
# Events published per call of the SDK producer.
CHUNK = 20_000
# Events published while a killed worker is down.
PROBE = 2_000
# How far publishing runs ahead of the worker.
LEAD = 2 * CHUNK
RETENTION_SECONDS = 60.0
# Each producer instance serves the trees whose root hashes to it, one every 64 s of event
# time on average, irregularly: with a chain retention of a minute, instances would be
# retired between two of their trees (their links then counted late, not checked).
CHAIN_RETENTION_SECONDS = 3600.0
# Seconds a worker may take to start and see its first record.
START_TIMEOUT = 120.0
# The slowest rate (events/s) a worker may process at before the run counts as failed.
MIN_RATE = 300
# After catching up: a few timer steps (one a second) retire what is due.
SETTLE_SECONDS = 3.0


def soak_settings(bootstrap: str, home: Path) -> Settings:
    """The correlator benchmark's settings, a short retention and a home of its own."""
    return bench_settings(bootstrap).model_copy(
        update={
            "tree_retention_seconds": RETENTION_SECONDS,
            "chain_retention_seconds": CHAIN_RETENTION_SECONDS,
            "home": home,
        }
    )


# ---- traffic ----------------------------------------------------------------------------


def stream() -> Iterator[Envelope]:
    """The benchmark's traffic, without end: trees in turn, :data:`TREE_SPACING_SECONDS`
    apart, merged in event-time order as they are made (a tree's first event is at its
    own offset, so every tree that can hold an earlier event has been made), stamped with
    the chain of the instance that serves its root."""
    chains = [Chain(f"bench-state/{index}") for index in range(PRODUCER_INSTANCES)]
    heap: list[tuple[datetime, str, Envelope]] = []
    made = 0

    def next_start() -> float:
        return TREE_SPACING_SECONDS * made

    while True:
        while not heap or _seconds(heap[0][0]) >= next_start():
            for event in mischievous(in_turn(made), f"s{made}-", next_start()):
                heapq.heappush(heap, (event.event_time, event.event_id, event))
            made += 1
        event = heapq.heappop(heap)[2]
        chain = chains[zlib.crc32(event.root_task_id.encode()) % PRODUCER_INSTANCES]
        yield chain.stamp(event)[0]


def _seconds(event_time: datetime) -> float:
    return (event_time - T0).total_seconds()


class Publisher:
    """Publishes the stream on demand, counting what was published."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events = stream()
        self.published = 0

    def publish(self, count: int, reader: Worker | None = None) -> None:
        """Publish the next ``count`` events, in chunks; with a ``reader``, at most
        :data:`LEAD` events ahead of what it has processed (steady traffic: a backlog
        read unevenly across partitions makes chain links wait for each other, and the
        memory they take would be the backlog's, not history's)."""
        while count > 0:
            if reader is not None:
                reader.caught_up(self.published - LEAD, settle=0)
            size = min(CHUNK, count)
            publish(self.settings, [next(self.events) for _ in range(size)])
            self.published += size
            count -= size


# ---- the worker side --------------------------------------------------------------------


def run_worker(bootstrap: str, app_id: str, home: str, stats_path: str) -> None:
    """The real worker under ``app_id`` with its data under ``home``, writing to
    ``stats_path`` (atomically, at each step) how many records it processed, when the
    first was, and what its step holds."""
    path = Path(stats_path)
    stats: dict[str, Any] = {"pid": os.getpid(), "first": None, "count": 0}

    def write(work: Correlation) -> None:
        stats.update(
            live_trees=work.live_trees,
            live_chains=work.live_chains,
            trees_retired=work.trees_retired,
            late_events=dict(work.late_events),
        )
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(stats), encoding="utf-8")
        partial.replace(path)

    on_events, due = Correlation.on_events, Correlation.due

    def counting(
        self: Correlation,
        records: Sequence[Record],
        load: Callable[[str], bytes | None],
        wall_us: int,
    ) -> tuple[list[Outbound], TreeWrites]:
        result = on_events(self, records, load, wall_us)
        if records and stats["first"] is None:
            stats["first"] = time.time()
        stats["count"] += len(records)
        write(self)
        return result

    def timer(
        self: Correlation,
        event_partitions: Iterable[int],
        link_partitions: Iterable[int],
        wall_us: int,
    ) -> tuple[list[Outbound], TreeWrites, dict[str, tuple[int, ChainState]]]:
        result = due(self, event_partitions, link_partitions, wall_us)
        write(self)
        return result

    Correlation.on_events = counting  # type: ignore[method-assign]
    Correlation.due = timer  # type: ignore[method-assign]
    settings = soak_settings(bootstrap, Path(home))
    correlator_app.run_worker(
        settings,
        app_id=app_id,
        links_topic=f"{app_id}-chain-links",
        metrics_address="127.0.0.1:0",
    )


# ---- the bench side ---------------------------------------------------------------------


@dataclass
class Worker:
    """A worker subprocess (one app id, one data directory) and its stats file."""

    bootstrap: str
    app_id: str
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    starts: int = 0

    @property
    def stats_path(self) -> Path:
        return self.workdir / f"{self.app_id}-{self.starts}.json"

    def start(self) -> None:
        self.starts += 1
        home = self.workdir / self.app_id
        command = [
            sys.executable,
            "-m",
            "tests.bench.bench_correlate_state",
            "worker",
            self.bootstrap,
            self.app_id,
            str(home),
            str(self.stats_path),
        ]
        log = (self.workdir / f"{self.app_id}.log").open("ab")
        self.started = time.time()
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stats(self) -> dict[str, Any]:
        return read_stats(self.stats_path)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def caught_up(self, count: int, settle: float = SETTLE_SECONDS) -> dict[str, Any]:
        """Wait until this start of the worker processed ``count`` records, then
        ``settle`` seconds (timer steps) more; its stats."""
        timeout = START_TIMEOUT + count / MIN_RATE

        def done() -> bool:
            if not self.alive():
                raise RuntimeError(f"worker {self.app_id} exited, see {self.workdir}")
            return int(self.stats().get("count", 0)) >= count

        if not poll(done, timeout, 0.2):
            raise RuntimeError(f"worker {self.app_id} too slow: {self.stats()}")
        time.sleep(settle)
        return self.stats()

    def first_event_seconds(self) -> float:
        """Seconds from this start to its first processed event."""
        if not poll(lambda: self.stats().get("first") is not None, START_TIMEOUT, 0.05):
            raise RuntimeError(f"worker {self.app_id} processed nothing after a restart")
        return float(self.stats()["first"]) - self.started

    def rss_bytes(self) -> int:
        """The worker's resident memory now."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text(encoding="utf-8")
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()


@contextmanager
def worker(bootstrap: str, workdir: Path) -> Iterator[Worker]:
    """A worker under a fresh app id; killed on the way out."""
    running = Worker(bootstrap, f"bench-state-{uuid.uuid4().hex[:8]}", workdir)
    try:
        yield running
    finally:
        running.kill()


def restarted(run: Worker, publisher: Publisher) -> float:
    """``kill -9`` the worker, publish a few events while it is down, start it again:
    seconds from the start to its first processed event."""
    run.kill()
    publisher.publish(PROBE)
    run.start()
    return run.first_event_seconds()


@dataclass(frozen=True)
class Checkpoint:
    events: int
    rss: int
    live_trees: int
    trees_retired: int
    late_events: dict[str, int]


def checkpoint(run: Worker, count: int) -> Checkpoint:
    stats = run.caught_up(count)
    return Checkpoint(
        count, run.rss_bytes(), stats["live_trees"], stats["trees_retired"], stats["late_events"]
    )


def soak(events: int, checkpoints: list[int]) -> tuple[list[Checkpoint], float]:
    """On a broker of its own, a worker fed the stream at a steady lead up to ``events``:
    its memory at each of ``checkpoints`` (events processed) and at the end, then the
    seconds its restart after ``kill -9`` takes to its first processed event."""
    with local_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        settings = soak_settings(bootstrap, workdir)
        ensure_topics(settings.kafka_admin(), settings.event_topic_partitions())
        publisher = Publisher(settings)
        seen: list[Checkpoint] = []
        with worker(bootstrap, workdir) as run:
            run.start()
            for count in [*checkpoints, events]:
                publisher.publish(count - publisher.published, run)
                seen.append(checkpoint(run, publisher.published))
                print(f"correlate_state: {seen[-1]}")
            restart = restarted(run, publisher)
        print(f"correlate_state: restart after {events:,} events: {restart:.2f} s")
    return seen, restart


def run() -> list[Entry]:
    """A worker through the whole run, its memory at a tenth and at the end, then killed
    and restarted; another, on a broker of its own, through the first tenth, then killed
    and restarted (the restart's baseline)."""
    total = env_count("CUSTODY_BENCH_SOAK_EVENTS", DEFAULT_EVENTS)
    first = int(total * CHECKPOINT)
    (early, late), restart_last = soak(total, [first])
    _, restart_first = soak(first, [])
    return entries(early, late, (first, restart_first), (total, restart_last))


def entries(
    early: Checkpoint,
    late: Checkpoint,
    restart_first: tuple[int, float],
    restart_last: tuple[int, float],
) -> list[Entry]:
    common = {
        "retention_seconds": RETENTION_SECONDS,
        "chain_retention_seconds": CHAIN_RETENTION_SECONDS,
        "probe_events": PROBE,
    }
    memory = {
        **common,
        "events": [early.events, late.events],
        "rss_mib": [round(early.rss / 2**20, 1), round(late.rss / 2**20, 1)],
        "live_trees": [early.live_trees, late.live_trees],
        "trees_retired": [early.trees_retired, late.trees_retired],
        # None expected: every event arrives within retention.
        "late_events": [early.late_events, late.late_events],
    }
    restart = {
        **common,
        "events": [restart_first[0], restart_last[0]],
        "seconds": [round(restart_first[1], 2), round(restart_last[1], 2)],
    }
    return [
        entry("correlate.soak_rss_growth", late.rss / 2**20, "MiB", early.rss / 2**20, memory),
        entry("correlate.restart_growth", restart_last[1], "s", restart_first[1], restart),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        run_worker(*sys.argv[2:])
    else:
        raise SystemExit("usage: python -m tests.bench.bench_correlate_state worker ...")
