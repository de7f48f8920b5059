"""A period of evidence stored on the embedded engine for the auditor's report's tests: a
simulation (the planted misbehaviours) and mixed traffic (break-glass, revoked use, broken
chains, ...), all of tenant acme, with the correlator's alerts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from processors.reporting.report import Period
from processors.storage.backend import ChdbBackend
from processors.storage.migrations import migrate
from processors.storage.sink import BatchWriter, Record
from processors.storage.target import ChdbTarget
from producers.simulator import SimulationConfig, simulate
from schemas import topics
from schemas.models import Alert, Envelope
from tests.support.stack import CONFIG
from tests.support.stored import CODEC, store
from tests.support.trees import traffic

TENANT = "acme"
GRACE, MAX_TTL = CONFIG.grace_us // 1_000_000, CONFIG.max_credential_ttl_us // 1_000_000


@dataclass
class StoredPeriod:
    """The chdb directory, what was stored there, and the period that covers it all."""

    directory: Path
    events: list[Envelope]
    alerts: list[Alert]
    period: Period

    def open(self) -> ChdbBackend:
        return ChdbBackend(ChdbTarget(self.directory))

    def add_alert(self, alert: Alert) -> None:
        """Store one more alert, as ingest would."""
        backend = self.open()
        try:
            record = Record(topics.ALERTS, 0, len(self.alerts), None, CODEC.encode_alert(alert))
            assert BatchWriter(backend).write([record]).stored == 1
        finally:
            backend.close()
        self.alerts.append(alert)


def stored_period(directory: Path, mixed_trees: int, roots: int, seed: int) -> StoredPeriod:
    """``roots`` simulated trees (half misbehaving) and ``mixed_trees`` of mixed traffic,
    stored with their state and alerts in a new chdb ``directory``."""
    mixed, _ = traffic(mixed_trees, CONFIG)
    start = min(e.event_time for e in mixed) - timedelta(hours=2)
    config = SimulationConfig(roots=roots, misbehaviour_rate=0.5, seed=seed, start=start)
    events = list(simulate(config)) + mixed
    target = ChdbTarget(directory)
    backend = ChdbBackend(target)
    try:
        migrate(target, 400, backend)
        alerts = store(backend, events)
    finally:
        backend.close()
    first = min(e.event_time for e in events)
    end = max(e.event_time for e in events) + timedelta(seconds=1)
    return StoredPeriod(directory, events, alerts, Period(TENANT, first, end, GRACE, MAX_TTL))
