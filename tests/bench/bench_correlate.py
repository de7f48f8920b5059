"""Correlator: throughput against a bare-faust floor, two workers against one, state
memory, alert latency.

**Throughput.** Realistic custody trees (:func:`tests.support.trees.mischievous`, each
misbehaviour in turn, every fourth tree clean, 2 s of event time apart so trees overlap)
are published once, in event-time order, to a local Tansu broker. Then, alternately and
each in its own subprocesses with its own app id (:mod:`tests.bench.correlate_worker`):

- **floor**: a faust agent with the correlator's app settings that decodes and counts;
- **two correlators**: two real workers in one consumer group, started together (each
  waits until both are ready, so they join the group at once);
- **correlator**: the real worker, counting the records its ``on_events`` processed.

Rate = events published / (time the last published offset of every partition was
processed - time of the first record), so faust's start-up and group join are not counted;
the records each run handed to its code are reported (fewer than published: faust lost
some; more: a rebalance replayed some). Medians over :data:`ROUNDS` rounds.
``correlate.throughput`` is the correlator against the floor, ``correlate.two_workers``
two correlators against one. The events come from :data:`PRODUCER_INSTANCES` producer
instances (hash chains), each serving whole trees: with a single instance, the chain
check's pending links (a backlog is read unevenly across partitions) grew past 1 MB in one
changelog record and aiokafka's ``MessageSizeTooLargeError`` crashed the worker.

**State memory.** The pure correlator folds 2,000 trees whose tokens are all live (no
revocation, no completion), decoding each event from Avro as the worker does; tracemalloc
measures what the states keep once the events are gone, per live token. Also the size of
their changelog form (``TreeState.to_json``) per live token.

**Alert latency.** With the last single correlator worker caught up (its metrics show no
lag on the events nor on its chain links, which trail the events after a backlog and
share the worker with them), small live trees
(event time = now) are published at a steady 20 trees/s, each ending with an access after
its token's revocation; latency = arrival of its ``TOKEN_USED_AFTER_REVOCATION`` on the
alerts topic - the call that published the access.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from processors.correlation.engine import CorrelationConfig, observe
from processors.correlation.tree import TreeState
from processors.correlator.step import CHAIN_LINKS
from processors.stack import metrics_url
from producers.admin import ensure_topics
from producers.context import CustodyContext
from producers.producer import CustodyProducer, DeliveryReport
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec
from schemas.models import AlertType, CredentialRevokedEvent, Envelope, TaskCompletedEvent
from tests.bench.correlate_worker import bench_settings, links_topic, read_stats
from tests.bench.results import Entry, entry, env_count, first_run_profile, rates_by_round
from tests.support.broker import free_port, local_broker, payload
from tests.support.events import CODER, allow, declare, issue, revoke, use
from tests.support.measure import percentile, py_spy
from tests.support.polling import poll
from tests.support.samples import Chain
from tests.support.trees import in_turn, mischievous

DEFAULT_EVENTS = 30_000
ROUNDS = 3
TREE_SPACING_SECONDS = 2.0
PRODUCER_INSTANCES = 32
MEMORY_TREES = 2_000
LATENCY_TREES = 200
LATENCY_SECONDS = 10.0
UNIT = "events/s"
PARTITIONS = 6
START_TIMEOUT = 60.0
"""Seconds a worker may take to start, join its group and see its first record."""
MIN_RATE = 300
"""The slowest rate (events/s) a run may have before it counts as failed."""
GROUP_ATTEMPTS = 4
"""Runs of two workers, at most, to get one whose group did not rebalance mid-run."""

# ---- traffic --------------------------------------------------------------------------


def traffic(count: int) -> list[Envelope]:
    """``count`` events of overlapping custody trees, in event-time order."""
    stream: list[Envelope] = []
    index = 0
    while len(stream) < count:
        stream += mischievous(in_turn(index), f"b{index}-", TREE_SPACING_SECONDS * index)
        index += 1
    stream.sort(key=lambda e: (e.event_time, e.event_id))
    return stream[:count]


def stamped(stream: list[Envelope], instances: int) -> list[Envelope]:
    """The events stamped with the hash chains of ``instances`` producer instances, each
    serving whole trees (one chain holding a whole backlog crashes the worker: see the
    module docstring)."""
    chains = [Chain(f"bench-correlate/{index}") for index in range(instances)]
    return [
        chains[zlib.crc32(event.root_task_id.encode()) % instances].stamp(event)[0]
        for event in stream
    ]


def publish(settings: Settings, stream: list[Envelope]) -> dict[int, int]:
    """Publish every event through the SDK, wait for every acknowledgement and return
    the last offset written to each partition."""
    ends: dict[int, int] = {}
    lock = threading.Lock()

    def delivered(report: DeliveryReport) -> None:
        if report.partition is None or report.offset is None:
            raise RuntimeError(f"event {report.event_id} not delivered: {report.error}")
        with lock:
            ends[report.partition] = max(ends.get(report.partition, -1), report.offset)

    with CustodyProducer(
        settings, producer_instance="bench-correlate", create_topics=False
    ) as producer:
        for event in stream:
            producer.publish(event, on_delivery=delivered)
    return ends


# ---- worker subprocesses --------------------------------------------------------------


@dataclass
class WorkerRun:
    """A worker subprocess and the stats file it writes."""

    mode: str
    process: subprocess.Popen[bytes]
    stats_path: Path
    log_path: Path
    metrics: str
    """The URL of its metrics (a correlator's)."""

    def stats(self) -> dict[str, Any]:
        return read_stats(self.stats_path)

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far (user and system), start-up included."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def check(self) -> None:
        """Raise if the process has exited (a worker runs until it is killed)."""
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.mode} worker exited, see {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextmanager
def workers(
    mode: str, bootstrap: str, ends_path: Path, workdir: Path, count: int = 1
) -> Iterator[list[WorkerRun]]:
    """Start ``count`` worker subprocesses in one consumer group under a fresh app id, let
    them go together once each is ready; kill them on the way out. ``ends_path`` holds the
    last offset published to each partition."""
    app_id = f"bench-{mode}-{uuid.uuid4().hex[:8]}"
    go = workdir / f"{app_id}.go"
    if mode == "correlator":
        # Made here, not by each worker at its start: the workers' starts stay as short
        # and as even as possible, so that they join their group together.
        ensure_topics(bench_settings(bootstrap).kafka_admin(), {links_topic(app_id): PARTITIONS})
    runs = []
    try:
        for index in range(1, count + 1):
            name = f"{app_id}-{index}"
            stats_path, log_path = workdir / f"{name}.json", workdir / f"{name}.log"
            command = [sys.executable, "-m", "tests.bench.correlate_worker", mode, bootstrap]
            port = free_port()
            command += [app_id, name, str(stats_path), str(ends_path), str(go), f"127.0.0.1:{port}"]
            with log_path.open("wb") as log:
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            runs.append(
                WorkerRun(mode, process, stats_path, log_path, metrics_url("127.0.0.1", port))
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not all(run.stats().get("ready") for run in runs):
            for run in runs:
                run.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode} workers not ready after {START_TIMEOUT}s")
            time.sleep(0.05)
        go.touch()
        yield runs
    finally:
        for run in runs:
            run.stop()


@dataclass(frozen=True)
class Round:
    """One run (of one worker or a group) over the published events."""

    rate: float
    """Events published / (time the last published offset of every partition was
    processed - time of the first record)."""
    processed: int
    """Records handed to the workers' code: fewer than published if faust lost some, more
    if a rebalance replayed some."""
    rebalanced: bool = False
    """Whether a correlator's partitions were assigned more than once (the group changed
    while it ran)."""
    cpu_seconds: float = 0.0
    """CPU time its processes used, start-up included: the work, whatever the cores the
    machine could give them."""


def finished(runs: list[WorkerRun], count: int, partitions: int) -> Round:
    """Poll the workers' stats until every partition's last published offset has been
    processed (by any of them); raise if one dies or they are too slow."""
    deadline = time.monotonic() + START_TIMEOUT + count / MIN_RATE
    while time.monotonic() < deadline:
        stats = [run.stats() for run in runs]
        reached = [float(t) for s in stats for t in s.get("reached", {}).values()]
        if len({p for s in stats for p in s.get("reached", {})}) == partitions:
            first = min(float(s["first"]) for s in stats if s.get("first"))
            processed = sum(int(s["count"]) for s in stats)
            rebalanced = any(len(s.get("assignments", [])) > 1 for s in stats)
            cpu = sum(run.cpu_seconds() for run in runs)
            return Round(count / (max(reached) - first), processed, rebalanced, cpu)
        for run in runs:
            run.check()
        time.sleep(0.1)
    raise RuntimeError(f"{runs[0].mode} too slow: {[r.stats() for r in runs]}")


# ---- alert latency --------------------------------------------------------------------


@dataclass
class AlertReader:
    """Reads the alerts topic from the beginning on a thread, timing the awaited ones."""

    bootstrap: str
    published: dict[str, float] = field(default_factory=dict)
    """Event id of each triggering access -> wall time it was published."""
    arrived: dict[str, float] = field(default_factory=dict)
    drained: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _consumer(self) -> Consumer:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"bench-alerts-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        partitions = consumer.list_topics(topics.ALERTS, timeout=10).topics[topics.ALERTS]
        consumer.assign(
            [TopicPartition(topics.ALERTS, p, OFFSET_BEGINNING) for p in partitions.partitions]
        )
        return consumer

    def _read(self) -> None:
        try:
            self._consume()
        except BaseException as exc:
            self.failure = exc
            raise

    def _consume(self) -> None:
        consumer = self._consumer()
        codec = AvroCodec()
        try:
            while not self._stop.is_set():
                messages = consumer.consume(1000, timeout=0.05)
                now = time.time()
                if not messages:
                    self.drained.set()
                for message in messages:
                    if message.error() is None:
                        self._arrived(codec, payload(message), now)
        finally:
            consumer.close()

    def _arrived(self, codec: AvroCodec, value: bytes, now: float) -> None:
        alert = codec.decode_alert(value)
        if alert.alert_type != AlertType.TOKEN_USED_AFTER_REVOCATION:
            return
        with self._lock:
            for event_id in alert.evidence_event_ids:
                if event_id in self.published:
                    self.arrived.setdefault(event_id, now)

    def sent(self, event_id: str, at: float) -> None:
        with self._lock:
            self.published[event_id] = at

    def complete(self) -> bool:
        with self._lock:
            return len(self.arrived) == len(self.published)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def latencies_ms(self) -> list[float]:
        with self._lock:
            return sorted((self.arrived[key] - self.published[key]) * 1000 for key in self.arrived)


def late_use_tree(name: str) -> tuple[list[Envelope], Envelope]:
    """A live tree (event time = now): a token issued, used, revoked, then used again.
    Returns the setup events and the access that completes the condition."""
    ctx = CustodyContext.new_root(f"{name}root")
    token = f"{name}tok"
    now = datetime.now(UTC)
    setup = [
        declare(ctx, now, source=CODER, purpose="render"),
        allow(ctx, f"dec-{token}", now),
        issue(ctx, token, now),
        use(ctx, token, now),
        revoke(ctx, token, now + timedelta(milliseconds=1)),
    ]
    return setup, use(ctx, token, now + timedelta(milliseconds=2))


def measure_latency(settings: Settings) -> tuple[list[float], list[float]]:
    """Publish live late-use trees at a steady pace; return the alert latencies (ms) and
    how long each triggering ``publish_sync`` took (ms). The correlator must be running."""
    reader = AlertReader(settings.kafka_bootstrap)
    reader.start()
    acks: list[float] = []
    try:
        if not reader.drained.wait(60):
            raise RuntimeError("alert reader did not catch up with the alerts topic")
        with CustodyProducer(
            settings, producer_instance="bench-live", create_topics=False
        ) as producer:
            start = time.monotonic()
            for index in range(LATENCY_TREES):
                _pace(start + index * LATENCY_SECONDS / LATENCY_TREES)
                setup, trigger = late_use_tree(f"live{index}-{uuid.uuid4().hex[:6]}-")
                for event in setup:
                    producer.publish(event)
                sent = time.time()
                producer.publish_sync(trigger)
                acks.append((time.time() - sent) * 1000)
                reader.sent(trigger.event_id, sent)
        poll(reader.complete, 30, 0.05)
    finally:
        reader.stop()
    missing = len(reader.published) - len(reader.arrived)
    if missing:
        raise RuntimeError(f"{missing} of {len(reader.published)} alerts did not arrive")
    return reader.latencies_ms(), acks


def _pace(until: float) -> None:
    delay = until - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# ---- state memory ---------------------------------------------------------------------


def live_messages(trees: int) -> list[bytes]:
    """The events of ``trees`` trees with every token still live, stamped and encoded."""
    chain = Chain("bench-memory")
    return [
        chain.encode(event)
        for index in range(trees)
        for event in mischievous(set(), f"m{index}-", TREE_SPACING_SECONDS * index)
        if not isinstance(event, CredentialRevokedEvent | TaskCompletedEvent)
    ]


@dataclass(frozen=True)
class StateMemory:
    live_tokens: int
    trees: int
    state_bytes: int
    changelog_bytes: int


def measure_state_memory(trees: int) -> StateMemory:
    """Fold live trees decoded from Avro (like the worker) and measure what their states
    hold once the events are gone."""
    messages = live_messages(trees)
    codec = AvroCodec()
    codec.decode_event(messages[0])  # fill the codec's caches before measuring
    config = CorrelationConfig.of(3, 86_400)
    detected = datetime.now(UTC)
    states: dict[str, TreeState] = {}
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for message in messages:
            event = codec.decode_event(message)
            state, _ = observe(states.get(event.root_task_id), event, config, detected)
            states[event.root_task_id] = state
        del event, state
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    if any(s.revocations for s in states.values()):
        raise RuntimeError("memory trees hold revocations")
    tokens = sum(len(s.tokens) for s in states.values())
    changelog = sum(len(s.to_json()) for s in states.values())
    return StateMemory(tokens, len(states), held, changelog)


# ---- run ------------------------------------------------------------------------------


def floor_round(bootstrap: str, count: int, ends_path: Path, workdir: Path) -> Round:
    """One bare-faust run to completion."""
    with workers("floor", bootstrap, ends_path, workdir) as runs:
        return finished(runs, count, PARTITIONS)


def correlator_round(
    bootstrap: str,
    count: int,
    ends_path: Path,
    workdir: Path,
    settings: Settings | None,
    profile: Path | None,
) -> tuple[Round, list[float], list[float]]:
    """One correlator run to completion; then, given ``settings``, the alert latency
    against the same worker (caught up, and with the state of the whole run)."""
    with workers("correlator", bootstrap, ends_path, workdir) as runs:
        with py_spy(runs[0].process.pid, profile):
            result = finished(runs, count, PARTITIONS)
        if settings is None:
            return result, [], []
        url = runs[0].metrics
        if not poll(lambda: caught_up(url), START_TIMEOUT, 0.2):
            raise RuntimeError(f"the correlator did not catch up: {lags(url)}")
        latencies, acks = measure_latency(settings)
        return result, latencies, acks


def lags(url: str) -> dict[tuple[str, str], float]:
    """What the worker's metrics say of its consumer lag, by topic and partition."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.labels["topic"], sample.labels["partition"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "custody_correlator_consumer_lag"
    }


def caught_up(url: str) -> bool:
    """Whether the worker has read every partition of both its topics to the end: the
    events, and the chain links its own steps sent (those trail the events after a
    backlog, and their steps share the worker with the events')."""
    behind = lags(url)
    return len(behind) == 2 * PARTITIONS and not any(behind.values())


def group_round(bootstrap: str, count: int, ends_path: Path, workdir: Path) -> tuple[Round, int]:
    """Two correlator workers in one group, started together, to completion; and how many
    runs it took. Started together, they still join the group one after the other now
    and then (the local broker completes a new group's first join at once, where Kafka
    waits for more members), so that the first reads alone until the rebalance that
    follows moves partitions. Such a run measures a rebalance, not two workers: it is run
    again, up to :data:`GROUP_ATTEMPTS` times."""
    for attempt in range(1, GROUP_ATTEMPTS + 1):
        with workers("correlator", bootstrap, ends_path, workdir, count=2) as runs:
            result = finished(runs, count, PARTITIONS)
        if not result.rebalanced or attempt == GROUP_ATTEMPTS:
            break
    return result, attempt


@dataclass
class Rounds:
    """Every run's result, by kind."""

    floors: list[Round] = field(default_factory=list)
    correlators: list[Round] = field(default_factory=list)
    groups: list[Round] = field(default_factory=list)
    group_attempts: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    acks: list[float] = field(default_factory=list)


def run() -> list[Entry]:
    """Memory, then rounds of a floor, two correlators in one group and a correlator
    (alternately), then latency against the last single correlator worker."""
    count = env_count("CUSTODY_BENCH_CORRELATE_EVENTS", DEFAULT_EVENTS)
    memory = measure_state_memory(MEMORY_TREES)
    print(
        f"correlate: {memory.live_tokens:,} live tokens in {memory.trees:,} trees: "
        f"{memory.state_bytes / memory.live_tokens:,.0f} B state, "
        f"{memory.changelog_bytes / memory.live_tokens:,.0f} B changelog per token"
    )
    print(f"correlate: generating {count:,} events")
    stream = stamped(traffic(count), PRODUCER_INSTANCES)
    rounds = Rounds()
    # Two workers can go twice as fast only with two cores free: say what else ran.
    load = round(os.getloadavg()[0], 2)
    with local_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        settings = bench_settings(bootstrap, workdir / "home")
        ensure_topics(
            settings.kafka_admin(),
            {**settings.event_topic_partitions(), CHAIN_LINKS: settings.event_partitions},
        )
        ends_path = workdir / "ends.json"
        ends_path.write_text(json.dumps(publish(settings, stream)), encoding="utf-8")
        for number in range(1, ROUNDS + 1):
            rounds.floors.append(floor_round(bootstrap, count, ends_path, workdir))
            group, attempts = group_round(bootstrap, count, ends_path, workdir)
            rounds.groups.append(group)
            rounds.group_attempts.append(attempts)
            # Last: its latency measurement publishes more events to the topic.
            result, latencies, acks = correlator_round(
                bootstrap,
                count,
                ends_path,
                workdir,
                settings if number == ROUNDS else None,
                first_run_profile("CUSTODY_BENCH_PYSPY", number),
            )
            rounds.correlators.append(result)
            rounds.latencies += latencies
            rounds.acks += acks
            floor = rounds.floors[-1]
            print(
                f"correlate: round {number}: floor {floor.rate:,.0f} {UNIT}, "
                f"correlator {result.rate:,.0f} {UNIT} (ratio {result.rate / floor.rate:.3f}), "
                f"two correlators {group.rate:,.0f} {UNIT} "
                f"(ratio {group.rate / result.rate:.3f}, run {attempts}); records processed "
                f"{floor.processed} / {result.processed} / {group.processed} of {count}; "
                f"CPU s {result.cpu_seconds:.1f} / two {group.cpu_seconds:.1f}"
            )
    return entries(count, memory, rounds, load)


def entries(count: int, memory: StateMemory, rounds: Rounds, load: float) -> list[Entry]:
    floor = statistics.median(r.rate for r in rounds.floors)
    correlator = statistics.median(r.rate for r in rounds.correlators)
    group = statistics.median(r.rate for r in rounds.groups)
    detail = {
        "events": count,
        "rounds": len(rounds.floors),
        **rates_by_round(floor=rounds.floors, correlator=rounds.correlators),
        "floor_processed": [r.processed for r in rounds.floors],
        "correlator_processed": [r.processed for r in rounds.correlators],
        "tree_spacing_seconds": TREE_SPACING_SECONDS,
        "producer_instances": PRODUCER_INSTANCES,
    }
    group_detail = {
        "events": count,
        "rounds": len(rounds.groups),
        **rates_by_round(one_worker=rounds.correlators, two_worker=rounds.groups),
        # More than the events: records a rebalance handed to both workers.
        "two_worker_processed": [r.processed for r in rounds.groups],
        "two_worker_runs": rounds.group_attempts,
        # The same work either way: a ratio below 2 with equal CPU time means cores.
        "one_worker_cpu_seconds": [round(r.cpu_seconds, 1) for r in rounds.correlators],
        "two_worker_cpu_seconds": [round(r.cpu_seconds, 1) for r in rounds.groups],
        "load_average_at_start": load,
        "cores": os.cpu_count(),
    }
    memory_detail = {"trees": memory.trees, "live_tokens": memory.live_tokens}
    latencies = sorted(rounds.latencies)
    latency_detail = {
        "alerts": len(latencies),
        "trees_per_second": LATENCY_TREES / LATENCY_SECONDS,
        "max_ms": round(latencies[-1], 1),
        "publish_sync_p50_ms": round(statistics.median(rounds.acks), 1),
    }
    return [
        entry("correlate.throughput", correlator, UNIT, floor, detail),
        entry("correlate.floor_bare_faust", floor, UNIT, detail=detail),
        entry("correlate.two_workers", group, UNIT, correlator, group_detail),
        entry(
            "correlate.state_bytes_per_live_token",
            memory.state_bytes / memory.live_tokens,
            "bytes",
            detail=memory_detail,
        ),
        entry(
            "correlate.changelog_bytes_per_live_token",
            memory.changelog_bytes / memory.live_tokens,
            "bytes",
            detail=memory_detail,
        ),
        entry(
            "correlate.alert_latency_p50", percentile(latencies, 0.5), "ms", detail=latency_detail
        ),
        entry(
            "correlate.alert_latency_p99", percentile(latencies, 0.99), "ms", detail=latency_detail
        ),
    ]
