"""What the crash and ClickHouse-down fault tests share: a simulation with its expected
alerts, a rate-shaped publisher running beside the test, and reads of a stack's evidence.

The expected alerts are the pure correlator's verdict on each custody tree of the
simulation (every deadline passed), with the same grace period and credential lifetime as
the stack under test. A stack decides the deadlines of a partition's last trees only once
that partition's watermark passes them; instead of idling for grace + lateness, the
stream ends with one small clean tree per partition whose event times lie past every
deadline of the simulation (:func:`closing_trees`), so each watermark moves on at once.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from processors.correlation.engine import CorrelationConfig
from producers.context import CustodyContext
from producers.events import Source
from producers.producer import CustodyProducer, DeliveryReport
from producers.settings import Settings
from producers.simulator import SimulationConfig, plan, simulate
from schemas.models import Envelope
from tests.support.events import complete, declare
from tests.support.stack import api_query
from tests.support.trees import by_root, run

# Event-time seconds. The grace period is longer than any wait inside a simulated tree (a
# break-glass approval comes up to 40 s after it), so no alert depends on how fast events
# arrive; it costs no wall-clock time, thanks to the closing trees.
GRACE, LATENESS = 60, 2
MAX_CREDENTIAL_TTL = 86_400
CONFIG = CorrelationConfig.of(GRACE, MAX_CREDENTIAL_TTL)
PARTITIONS = 6
MISBEHAVIOUR_RATE = 0.2

SIMULATION_ENV = {
    "CUSTODY_KAFKA_PROFILE": "development",
    "CUSTODY_KAFKA_SESSION_TIMEOUT_MS": "2000",
    "CUSTODY_EVENT_PARTITIONS": str(PARTITIONS),
    "CUSTODY_GRACE_SECONDS": str(GRACE),
    "CUSTODY_ALLOWED_LATENESS_SECONDS": str(LATENESS),
    "CUSTODY_MAX_CREDENTIAL_TTL_SECONDS": str(MAX_CREDENTIAL_TTL),
}


@dataclass(frozen=True)
class Simulation:
    """The events to publish (the simulation, then the closing trees) and the alert ids
    a clean run raises on them."""

    events: list[Envelope]
    expected_alerts: frozenset[str]
    planted: int
    seed: int

    @property
    def event_ids(self) -> set[str]:
        return {event.event_id for event in self.events}


def simulation(roots: int, seed: int, hours_ago: float = 8.0) -> Simulation:
    """``roots`` simulated custody trees begun ``hours_ago`` hours back (so no event time
    runs ahead of the wall clock), misbehaving at :data:`MISBEHAVIOUR_RATE`."""
    config = SimulationConfig(
        roots=roots,
        misbehaviour_rate=MISBEHAVIOUR_RATE,
        seed=seed,
        start=datetime.now(UTC) - timedelta(hours=hours_ago),
    )
    stream = list(simulate(config))
    stream += closing_trees(stream[-1].event_time + timedelta(seconds=GRACE + LATENESS + 30))
    planted = sum(1 for tree in plan(config) if tree.misbehaviour)
    return Simulation(stream, frozenset(expected_alerts(stream)), planted, seed)


def expected_alerts(stream: Iterable[Envelope]) -> set[str]:
    """The pure correlator's alert ids over each custody tree, every deadline passed."""
    return {alert for tree in by_root(stream).values() for alert in run(tree, CONFIG).ids()}


def partition_of(key: str, partitions: int = PARTITIONS) -> int:
    """librdkafka's default partitioner (consistent_random): CRC-32 of the key."""
    return zlib.crc32(key.encode()) % partitions


def closing_trees(at: datetime) -> list[Envelope]:
    """One declared-and-completed root task per partition at ``at``: clean, so they raise
    nothing, and late enough to carry every partition's watermark past the deadlines."""
    source = Source.of("acme", "faults", "spiffe://acme/faults/closer", "SERVICE", "closer-0")
    roots: dict[int, str] = {}
    candidate = 0
    while len(roots) < PARTITIONS:
        name = f"faults-closing-{candidate}"
        roots.setdefault(partition_of(name), name)
        candidate += 1
    closing: list[Envelope] = []
    for root in roots.values():
        ctx = CustodyContext.new_root(root)
        closing.append(declare(ctx, at, source=source, purpose="close the stream", scopes=[]))
        closing.append(complete(ctx, at + timedelta(seconds=1), source=source))
    return closing


class Publisher(threading.Thread):
    """Publishes ``stream`` through the SDK at ``rate`` events/s, counting as it goes; the
    broker's acks are collected, so :attr:`acknowledged` is what was really published."""

    def __init__(
        self, settings: Settings, stream: list[Envelope], rate: float, instance: str
    ) -> None:
        super().__init__(daemon=True, name="fault-publisher")
        self.settings, self.stream, self.rate, self.instance = settings, stream, rate, instance
        self.sent = 0
        self.acknowledged: set[str] = set()
        self.failed: list[str] = []
        self.partitions: set[int] = set()
        self.finished_at: float | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def _report(self, report: DeliveryReport) -> None:
        with self._lock:
            if report.ok:
                self.acknowledged.add(report.event_id)
                if report.partition is not None:
                    self.partitions.add(report.partition)
            else:
                self.failed.append(f"{report.event_id}: {report.error}")

    def run(self) -> None:
        try:
            with CustodyProducer(self.settings, producer_instance=self.instance) as producer:
                started = time.monotonic()
                for sent, event in enumerate(self.stream):
                    due = started + sent / self.rate
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    producer.publish(event, on_delivery=self._report)
                    self.sent = sent + 1
                producer.flush(60)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    @property
    def done(self) -> bool:
        return self.finished_at is not None


@dataclass(frozen=True)
class Stored:
    """What a reader of ClickHouse sees of the published events, and what is below it."""

    published: int
    stored: int  # distinct event ids a reader sees (FINAL)
    duplicates: int  # event ids a reader sees more than once (FINAL): must be 0
    lost: int  # published, not stored
    unexpected: int  # stored, never published
    raw_rows: int  # rows in the table's active parts, before merges (no FINAL)

    @property
    def raw_duplicates(self) -> int:
        """Replayed rows that ReplacingMergeTree has not merged away yet (harmless)."""
        return self.raw_rows - self.stored - self.duplicates

    @property
    def exactly_once(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and self.unexpected == 0


def stored_events(
    published: set[str],
    rows: Callable[[str], list[dict[str, Any]]],
    raw_rows: int,
) -> Stored:
    """Compare the stored event ids (``rows(sql)`` reads with FINAL) with ``published``."""
    counts = {
        str(row["event_id"]): int(row["n"])
        for row in rows("SELECT event_id, count() AS n FROM events GROUP BY event_id")
    }
    ids = set(counts)
    return Stored(
        published=len(published),
        stored=len(ids),
        duplicates=sum(1 for n in counts.values() if n > 1),
        lost=len(published - ids),
        unexpected=len(ids - published),
        raw_rows=raw_rows,
    )


def stored_through_api(address: str, published: set[str]) -> Stored:
    """:func:`stored_events` read through a running query API, with the raw row count of
    the active parts (rows a merge has not collapsed yet are counted there)."""
    raw = api_query(
        address,
        "SELECT sum(rows) AS n FROM system.parts "
        "WHERE database = 'custody' AND table = 'events' AND active",
    )
    return stored_events(published, lambda sql: api_query(address, sql), int(raw[0]["n"]))
