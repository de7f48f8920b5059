"""Notify throughput: ``custody notify`` posting to a real Alertmanager, against a floor
measured in the same run.

N distinct alerts (``CUSTODY_BENCH_NOTIFY_ALERTS``, default 20,000: the alerts the pure
correlator raises on a simulation and on mixed traffic, copied under new alert ids until
there are N) are encoded with ``AvroCodec`` and produced, keyed by alert id as the
correlator writes them, to ``custody.alerts.v1`` (6 partitions) of a fresh local Tansu
broker before anything is timed. Then, alternately, in this process, each run against a
fresh Alertmanager (Debian's ``prometheus-alertmanager`` on the shipped configuration, its
webhooks sent to a receiver of the benchmark's, as the integration tests run it), so that
every run posts N alerts Alertmanager does not hold yet:

- **floor**: a confluent-kafka consumer under a fresh group reads the topic, looks each
  record's alert up by its key (no decoding) in the postable alerts computed before the
  clock started (:func:`processors.notify.postable.postable`, JSON-encoded), posts them to
  ``/api/v2/alerts`` with urllib3, ``notify_batch_alerts`` (100) per post, as one JSON list
  byte for byte like notify's, and commits synchronously after each 2xx: consuming,
  posting and committing the same batches, nothing else.
- **notify**: the real :class:`processors.notify.app.Notify` in a thread, as ``custody
  notify`` builds it (its :class:`AlertmanagerClient`, metrics, heartbeat and state file,
  the default batch limits), under a fresh consumer group: it also decodes each record,
  maps it to its postable alert, screens it for secrets, and keeps it for the resend
  window.

Rate = N / (time the last batch was committed - time the first ``consume`` call returned
records): the group join and the clients' start-up are not timed. After each run the
Alertmanager must hold N Custody alerts. Medians of :data:`ROUNDS` alternating rounds;
ratio = notify / floor. Goal: ratio >= 0.8. The detail also gives each side's CPU time
per alert in this process (all threads, over the same interval); Alertmanager's own CPU
time is the same work in both runs and is left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from confluent_kafka import Consumer

from processors.batch_consumer import Batch
from processors.consumer_metrics import ConsumerMetrics
from processors.notify.alertmanager import ALERTS_PATH, AlertmanagerClient
from processors.notify.app import LinkResolver, Notify
from processors.notify.postable import SOURCE, postable
from processors.storage.sink import Rejected
from producers.admin import ensure_topics
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec
from schemas.models import Alert
from tests.bench.ingest_worker import Started, consumed, in_thread
from tests.bench.results import (
    Entry,
    TimedRun,
    alternate,
    announce,
    consumer_settings,
    entry,
    env_count,
    first_run_profile,
    produce_all,
    rates_by_round,
)
from tests.support.alertmanager import RunningAlertmanager, WebhookReceiver, config_for_test
from tests.support.broker import local_broker
from tests.support.measure import py_spy
from tests.support.pipeline import simulation
from tests.support.stack import CONFIG
from tests.support.stored import correlate
from tests.support.trees import traffic

DEFAULT_ALERTS = 20_000
ROUNDS = 3
UNIT = "alerts/s"
GOAL_RATIO = 0.8
RUN_TIMEOUT = 300.0
HELD_TIMEOUT = 120.0
EXPLORER = "http://explorer.bench:8470"


# ---- the alerts -----------------------------------------------------------------------


def alerts(count: int) -> list[Alert]:
    """``count`` distinct alerts: the correlator's alerts on a simulation and on mixed
    traffic (every alert type, every severity), copied under new ids."""
    _, simulated = correlate(simulation(roots=100, seed=1).events)
    _, mixed = correlate(traffic(24, CONFIG)[0])
    found = simulated + mixed
    copies = []
    for i in range(count):
        alert = found[i % len(found)]
        # An id shaped like the correlator's (32 hex digits), distinct per copy.
        alert_id = hashlib.sha256(f"{alert.alert_id}/{i}".encode()).hexdigest()[:32]
        copies.append(alert.model_copy(update={"alert_id": alert_id}))
    return copies


def publish(settings: Settings, items: Sequence[Alert]) -> int:
    """The alerts on the alerts topic, keyed by alert id; waits for every ack. The mean
    record size."""
    codec = AvroCodec()
    pairs = [(alert.alert_id.encode(), codec.encode_alert(alert)) for alert in items]
    produce_all(settings, topics.ALERTS, pairs, "alerts")
    return sum(len(value) for _, value in pairs) // len(items)


def bench_settings(bootstrap: str, home: Path) -> Settings:
    """notify's settings in the benchmark (short session timeout, default batches)."""
    return consumer_settings(bootstrap, explorer_url=EXPLORER, home=home)


def postables(settings: Settings, items: Sequence[Alert]) -> dict[bytes, bytes]:
    """Each alert's post as notify encodes it, by record key: the floor's bytes."""
    links = LinkResolver(settings)()
    now = datetime.now(UTC)
    return {a.alert_id.encode(): json.dumps(postable(a, links, now)).encode() for a in items}


# ---- one run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Run(TimedRun):
    """A timed run of alerts (CPU: this process's, all threads) and the posts it took."""

    posts: int


@contextmanager
def fresh_alertmanager(workdir: Path) -> Iterator[RunningAlertmanager]:
    """An Alertmanager holding no alert, on the shipped configuration, with a receiver."""
    directory = Path(tempfile.mkdtemp(prefix="alertmanager-", dir=workdir))
    with WebhookReceiver() as receiver:
        manager = RunningAlertmanager(config_for_test(receiver.url), directory)
        manager.start()
        try:
            yield manager
        finally:
            manager.stop()


def held(manager: RunningAlertmanager) -> int:
    """How many Custody alerts Alertmanager holds."""
    # Listing N alerts takes Alertmanager seconds on a loaded machine: a generous timeout.
    client = AlertmanagerClient(manager.url, HELD_TIMEOUT)
    try:
        return len(client.held(SOURCE))
    finally:
        client.close()


def run_floor(settings: Settings, url: str, bodies: dict[bytes, bytes], count: int) -> Run:
    """Consume, post the precomputed JSON in notify's batches, commit after each 2xx."""
    size = settings.notify_batch_alerts
    consumer = Consumer(
        {
            **settings.kafka_consumer(f"bench-notify-floor-{uuid.uuid4().hex[:8]}"),
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    pool = urllib3.PoolManager(
        retries=False, timeout=urllib3.Timeout(total=settings.notify_timeout_seconds)
    )
    headers = {"Content-Type": "application/json"}
    consumer.subscribe([topics.ALERTS])
    pending: list[bytes] = []
    started = Started()
    posts = 0

    def post() -> None:
        nonlocal posts
        # json.dumps(list)'s separator: the same bytes as notify's post of the same alerts.
        response = pool.request(
            "POST", url + ALERTS_PATH, body=b"[" + b", ".join(pending) + b"]", headers=headers
        )
        if not 200 <= response.status < 300:
            raise RuntimeError(f"floor: Alertmanager answered {response.status}")
        consumer.commit(asynchronous=False)
        posts += 1
        pending.clear()

    try:
        for message in consumed(consumer, count, lambda: size - len(pending), RUN_TIMEOUT, started):
            pending.append(bodies[message.key() or b""])
            if len(pending) == size:
                post()
        if pending:
            post()
        done = time.perf_counter(), time.process_time()
    finally:
        consumer.close()
        pool.clear()
    first = started.at
    assert first is not None
    return Run("floor", count, done[0] - first[0], done[1] - first[1], posts)


class ClockedNotify(Notify):
    """notify, noting when its last batch was committed and how many it committed."""

    done = (0.0, 0.0)
    batches = 0

    def note_committed(self, batch: Batch, rejected: Sequence[Rejected]) -> None:
        super().note_committed(batch, rejected)
        self.done = time.perf_counter(), time.process_time()
        self.batches += 1


def run_notify(settings: Settings, url: str, count: int, workdir: Path) -> Run:
    """The real notify loop in a thread, until it has committed every alert."""
    base = Path(tempfile.mkdtemp(prefix="notify-", dir=workdir))
    own = settings.model_copy(update={"notify_group": f"bench-notify-{uuid.uuid4().hex[:8]}"})
    client = AlertmanagerClient(url, own.notify_timeout_seconds)
    notify = ClockedNotify(
        own,
        client,
        LinkResolver(own),
        base / "notify.heartbeat",
        ConsumerMetrics("notify"),
        base / "notify.state.json",
    )
    running = in_thread(notify, "notify")
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while notify.stats.posted < count:
            running.check("notify", deadline, f"{notify.stats.posted} of {count}")
            # The clock stops on the commit itself (note_committed), not on this poll; 50 ms
            # keeps the watcher from taking the GIL from notify's thread often.
            time.sleep(0.05)
    finally:
        running.stop()
        client.close()
    if notify.stats.posted != count or notify.stats.dead_lettered:
        raise RuntimeError(
            f"notify posted {notify.stats.posted} of {count}, "
            f"dead-lettered {notify.stats.dead_lettered}"
        )
    clock = running.clock
    assert clock.first is not None
    return Run(
        "notify",
        count,
        notify.done[0] - clock.first,
        notify.done[1] - clock.first_cpu,
        notify.batches,
    )


def measured(mode: str, workdir: Path, count: int, attempt: Any) -> Run:
    """One run against a fresh Alertmanager, which must then hold every alert."""
    with fresh_alertmanager(workdir) as manager:
        result: Run = attempt(manager.url)
        found = held(manager)
    if found != count:
        raise RuntimeError(f"{mode}: Alertmanager holds {found} Custody alerts, expected {count}")
    return result


# ---- run ------------------------------------------------------------------------------


def run() -> list[Entry]:
    """Publish once, then floor and notify alternately; medians as entries."""
    count = env_count("CUSTODY_BENCH_NOTIFY_ALERTS", DEFAULT_ALERTS)
    started = announce("notify", count, "making {count} alerts")
    items = alerts(count)
    with local_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        settings = bench_settings(bootstrap, workdir / "home")
        ensure_topics(settings.kafka_admin(), settings.event_topic_partitions())
        record_bytes = publish(settings, items)
        bodies = postables(settings, items)
        post_bytes = sum(len(body) for body in bodies.values()) // count
        print(f"notify: {count:,} alerts published ({record_bytes} bytes each)")

        def floor_run(_: int) -> Run:
            return measured(
                "floor", workdir, count, lambda url: run_floor(settings, url, bodies, count)
            )

        def notify_run(number: int) -> Run:
            profile = first_run_profile("CUSTODY_BENCH_NOTIFY_PYSPY", number)
            with py_spy(os.getpid(), profile):
                return measured(
                    "notify", workdir, count, lambda url: run_notify(settings, url, count, workdir)
                )

        floors, notifies = alternate("notify", ROUNDS, floor_run, notify_run, UNIT)
    floor = statistics.median(r.rate for r in floors)
    rate = statistics.median(r.rate for r in notifies)
    detail = {
        "alerts": count,
        "rounds": ROUNDS,
        "batch_alerts": settings.notify_batch_alerts,
        "mean_record_bytes": record_bytes,
        "mean_post_bytes_per_alert": post_bytes,
        **rates_by_round(floor=floors, notify=notifies),
        "floor_posts": floors[-1].posts,
        "notify_batches": notifies[-1].posts,
        "floor_cpu_us_per_alert": round(statistics.median(r.cpu_us for r in floors), 1),
        "notify_cpu_us_per_alert": round(statistics.median(r.cpu_us for r in notifies), 1),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "goal": f"ratio >= {GOAL_RATIO}",
        "goal_met": rate / floor >= GOAL_RATIO,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    return [
        entry("notify.throughput", rate, UNIT, floor, detail),
        entry("notify.floor_consume_post", floor, UNIT, detail=detail),
    ]
