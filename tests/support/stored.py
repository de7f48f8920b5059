"""A simulation stored in ClickHouse the way ingest stores it, without a broker: the events,
and the state changes and alerts of the pure correlator run over each custody tree with
every deadline passed. For tests of what reads the tables (dashboards, the explorer); and a
freshly migrated embedded engine to store into (the ``backend`` fixture)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from processors.storage.backend import Backend, ChdbBackend
from processors.storage.migrations import migrate
from processors.storage.sink import BatchWriter, Record
from processors.storage.target import ChdbTarget
from schemas import catalog, topics
from schemas.codec import AvroCodec, event_to_avro
from schemas.models import Alert, Envelope, StateChange
from tests.support.trees import by_root, run

CODEC = AvroCodec()


@contextmanager
def migrated_chdb(path: Path, kind: type[ChdbBackend] = ChdbBackend) -> Iterator[ChdbBackend]:
    """An embedded engine (chdb) of ``kind`` at ``path`` with every migration applied (400
    days' retention), closed after the block."""
    target = ChdbTarget(path)
    opened = kind(target)
    migrate(target, 400, opened)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[ChdbBackend]:
    """The test's own migrated embedded engine."""
    with migrated_chdb(tmp_path / "chdb") as opened:
        yield opened


def _records(topic: str, values: list[bytes]) -> list[Record]:
    return [Record(topic, 0, offset, None, value) for offset, value in enumerate(values)]


def correlate(events: Sequence[Envelope]) -> tuple[list[StateChange], list[Alert]]:
    """The pure correlator over each custody tree, every deadline passed."""
    changes: list[StateChange] = []
    alerts: list[Alert] = []
    for tree in by_root(events).values():
        result = run(tree)
        changes += result.changes
        alerts += result.alerts
    return changes, alerts


def store(backend: Backend, events: Sequence[Envelope], producer: str = "sim/1") -> list[Alert]:
    """Store ``events`` with their state and alerts through the sink; the alerts."""
    changes, alerts = correlate(events)
    values = [
        CODEC.encode(catalog.EVENT, event_to_avro(event, chain=(producer, i + 1, None)))
        for i, event in enumerate(events)
    ]
    writer = BatchWriter(backend)
    for batch in (
        _records(topics.EVENTS, values),
        _records(topics.STATE, [CODEC.encode_state(change) for change in changes]),
        _records(topics.ALERTS, [CODEC.encode_alert(alert) for alert in alerts]),
    ):
        result = writer.write(batch)
        assert (result.stored, result.rejected) == (len(batch), [])
    return alerts
