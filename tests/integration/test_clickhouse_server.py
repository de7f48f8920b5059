"""Storage against a real ClickHouse server over the native protocol: Debian's
``clickhouse-server`` 18.16, started privately by each test (tests/support/
clickhouse_server.py).

18.16 is older than the 24.3 the production schema needs, so ``custody migrate`` must refuse
it, clearly and before creating anything. The driver path (``ServerBackend`` and
``BatchWriter``) and ``custody ingest`` are exercised on reduced tables 18.16 can hold
(derived from the migrations there): the sink writes only the columns a table has.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from processors.storage import rows
from processors.storage.backend import ServerBackend, StorageUnavailable
from processors.storage.sink import BatchWriter, Record
from processors.storage.target import ServerTarget, parse_target
from producers.producer import CustodyProducer
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec
from schemas.models import Envelope
from tests.support.broker import CUSTODY, read_to_end
from tests.support.clickhouse_server import (
    DATABASE,
    ClickHouseServer,
    create_reduced_tables,
    custody_url,
    server_binary,
)
from tests.support.polling import until
from tests.support.samples import many_trees, stamped
from tests.support.trees import CONFIG, MISCHIEF, mischievous, run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        server_binary() is None,
        reason="clickhouse-server is not installed "
        "(apt-get install -y --no-install-recommends clickhouse-server)",
    ),
]

CODEC = AvroCodec()
STATE_TABLES = {"TASK": "tasks", "DELEGATION": "delegations", "CREDENTIAL": "credentials"}
SORTING_KEYS = {
    "events": "tenant, root_task_id, event_time, event_id",
    "tasks": "tenant, root_task_id, task_id",
    "delegations": "tenant, root_task_id, child_task_id",
    "credentials": "tenant, root_task_id, token_id",
    "alerts": "tenant, root_task_id, alert_id",
}


# ---- the server -----------------------------------------------------------------------------


@pytest.fixture
def clickhouse(tmp_path: Path) -> Iterator[ClickHouseServer]:
    server = ClickHouseServer(tmp_path / "clickhouse")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def query(server: ClickHouseServer, sql: str) -> list[tuple[Any, ...]]:
    return server.execute(sql, database=DATABASE)


# ---- records as ingest consumes them -------------------------------------------------------


def event_records(events: list[Envelope], instance: str) -> list[Record]:
    encoded = [
        CODEC.encode_event(stamped(event, seq=i + 1, instance=instance))
        for i, event in enumerate(events)
    ]
    return [
        Record(topics.EVENTS, i % 6, i, event.root_task_id.encode(), value)
        for i, (event, value) in enumerate(zip(events, encoded, strict=True))
    ]


def to_second(value: Any) -> Any:
    """What a DateTime (second precision) column gives back for a value, as a row holds it."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


# ---- (a) the driver path: ServerBackend and BatchWriter --------------------------------------


def test_batch_writer_stores_events_state_and_alerts_on_18_16_and_reads_them_back(
    clickhouse: ClickHouseServer,
) -> None:
    create_reduced_tables(clickhouse)
    target = parse_target(custody_url(clickhouse))
    assert isinstance(target, ServerTarget)
    backend = ServerBackend(target)
    try:
        assert backend.version() == "18.16.1"
        assert backend.select("SELECT currentDatabase() AS db") == [{"db": DATABASE}]

        # Eight custody trees, each with one misbehaviour, and what the correlator makes of
        # them: events, every kind of state change, alerts.
        events = [
            event
            for i, kind in enumerate(MISCHIEF)
            for event in mischievous({kind}, name=f"t{i}-", offset=40 * i)
        ]
        verdict = run(events, CONFIG)
        assert verdict.alerts
        assert {c.kind for c in verdict.changes} == set(STATE_TABLES)
        records = event_records(events, "ch-batch")
        records += [
            Record(topics.STATE, 0, i, change.root_task_id.encode(), CODEC.encode_state(change))
            for i, change in enumerate(verdict.changes)
        ]
        records += [
            Record(topics.ALERTS, 0, i, alert.alert_id.encode(), CODEC.encode_alert(alert))
            for i, alert in enumerate(verdict.alerts)
        ]
        garbage = Record(topics.EVENTS, 0, 10_000, b"garbage", b"not avro at all")

        writer = BatchWriter(backend)
        stored = 0
        batches = [records[i : i + 97] for i in range(0, len(records), 97)]
        batches[1] = [*batches[1][:10], garbage, *batches[1][10:]]
        for batch in batches:
            result = writer.write(batch)
            stored += result.stored
            if garbage in batch:
                assert [(r.record, r.reason) for r in result.rejected] == [
                    (garbage, "unknown_wire_format")
                ]
            else:
                assert result.rejected == []
        assert stored == len(records)

        # Every event once, each kept column as the flattened record says (times to the
        # second: the reduced table has DateTime, not DateTime64).
        columns = [
            name
            for name, kind in query(
                clickhouse,
                f"SELECT name, default_kind FROM system.columns "
                f"WHERE database = '{DATABASE}' AND table = 'events'",
            )
            if kind == ""
        ]
        assert "attributes" not in columns
        assert "context" not in columns
        stored_events = {
            row["event_id"]: row
            for row in backend.select(f"SELECT {', '.join(columns)} FROM events FINAL")
        }
        assert len(stored_events) == len(events)
        for record in records[: len(events)]:
            flat = rows.event_row(CODEC.decode(record.value or b"").datum)
            expected = {name: to_second(rows_value(flat, name)) for name in columns}
            assert stored_events[expected["event_id"]] == expected

        # State: one row per key, the latest version of it.
        for kind, table in STATE_TABLES.items():
            changes = [c for c in verdict.changes if c.kind == kind]
            latest: dict[str, int] = {}
            for change in changes:
                latest[change.key] = max(latest.get(change.key, -1), change.version)
            key_column = {"TASK": "task_id", "DELEGATION": "child_task_id"}.get(kind, "token_id")
            found = backend.select(f"SELECT {key_column} AS k, version FROM {table} FINAL")
            assert {row["k"]: row["version"] for row in found} == latest, table
        alerts = backend.select("SELECT alert_id, detail, event_time FROM alerts FINAL")
        assert sorted(a["alert_id"] for a in alerts) == sorted(a.alert_id for a in verdict.alerts)
        sample = verdict.alerts[0]
        assert {
            "alert_id": sample.alert_id,
            "detail": sample.detail,
            "event_time": to_second(sample.event_time),
        } in alerts

        # A replayed batch (ingest after a crash) is the same rows: nothing stored twice.
        assert writer.write(records).stored == len(records)
        for table, key in SORTING_KEYS.items():
            total, distinct = query(
                clickhouse, f"SELECT count(), uniqExact({key}) FROM {table} FINAL"
            )[0]
            assert total == distinct, table
        assert query(clickhouse, "SELECT count() FROM events FINAL") == [(len(events),)]

        # With the server gone the backend says "unavailable" (retry), then recovers by
        # itself on the same object once the server is back.
        clickhouse.stop()
        with pytest.raises(StorageUnavailable, match=str(clickhouse.tcp_port)):
            backend.select("SELECT 1 AS one")
        clickhouse.start()
        assert backend.select("SELECT count() AS n FROM events FINAL") == [{"n": len(events)}]
    finally:
        backend.close()


def rows_value(row: rows.Row, column: str) -> Any:
    return row[column] if column in row else rows.event_defaults(column)


# ---- (b) custody migrate refuses 18.16 --------------------------------------------------------


def test_custody_migrate_refuses_18_16_clearly_and_creates_nothing(
    clickhouse: ClickHouseServer,
) -> None:
    before = query_default(clickhouse)
    result = subprocess.run(
        [CUSTODY, "migrate"],
        env={**os.environ, "CUSTODY_CLICKHOUSE_URL": custody_url(clickhouse)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert result.returncode == 1, result.stdout + result.stderr
    assert "custody migrate failed" in message
    assert "ClickHouse 18.16.1 found" in message
    assert "needs ClickHouse 24.3 or newer" in message
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert query_default(clickhouse) == before
    assert DATABASE not in before[0]


def query_default(server: ClickHouseServer) -> tuple[list[str], list[str]]:
    """The databases, and the tables outside the system database."""
    databases = sorted(name for (name,) in server.execute("SHOW DATABASES"))
    tables = sorted(
        f"{db}.{name}"
        for db, name in server.execute(
            "SELECT database, name FROM system.tables WHERE database != 'system'"
        )
    )
    return databases, tables


# ---- (c) custody ingest across a server stop and restart ----------------------------------


class IngestProcess:
    """``custody ingest --no-serve`` as a child process, its stderr in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [CUSTODY, "ingest", "--no-serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


EVENTS_PER_PHASE = 2_007  # 223 trees of nine events; three phases
OUTAGE_SECONDS = 4
FIRST_STORED = 250  # one ingest batch (CUSTODY_INGEST_BATCH_ROWS)


def test_ingest_survives_a_server_stop_and_restart_mid_stream_without_loss(
    settings: Settings, clickhouse: ClickHouseServer, tmp_path: Path
) -> None:
    create_reduced_tables(clickhouse)
    env = {
        **os.environ,
        "CUSTODY_CLICKHOUSE_URL": custody_url(clickhouse),
        "CUSTODY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CUSTODY_KAFKA_PROFILE": "development",
        "CUSTODY_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "CUSTODY_INGEST_BATCH_ROWS": "250",
        "CUSTODY_INGEST_BATCH_SECONDS": "0.2",
        "CUSTODY_INGEST_RETRY_MAX_SECONDS": "1",
        "CUSTODY_HOME": str(tmp_path / "home"),
    }
    phases = [many_trees(EVENTS_PER_PHASE // 9) for _ in range(3)]
    verdict = run(
        [e for i, kind in enumerate(MISCHIEF) for e in mischievous({kind}, f"s{i}-", 40 * i)],
        CONFIG,
    )
    published: set[str] = set()

    def stored() -> tuple[int, int]:
        total, distinct = query(
            clickhouse, "SELECT count(), uniqExact(event_id) FROM events FINAL"
        )[0]
        return int(total), int(distinct)

    ingest = IngestProcess(env, tmp_path / "ingest.log")
    producer = CustodyProducer(settings, producer_instance="ch-restart")
    try:

        def publish(events: list[Envelope]) -> None:
            for event in events:
                producer.publish(event)
            producer.flush(30)
            published.update(event.event_id for event in events)

        publish(phases[0])
        # Mid-stream: some events are stored, not all of them (two phases are still to come).
        until(
            lambda: stored()[0] >= FIRST_STORED or not ingest.alive(),
            60,
            lambda: f"{stored()} stored; ingest log:\n{ingest.output()[-3000:]}",
        )
        assert ingest.alive(), ingest.output()
        at_stop = stored()[0]
        clickhouse.stop()
        down_at = time.monotonic()
        assert FIRST_STORED <= at_stop <= len(published) < 3 * EVENTS_PER_PHASE

        # Publishing goes on while the server is down; ingest notices and retries.
        publish(phases[1])
        until(
            lambda: "retrying in" in ingest.output() or not ingest.alive(),
            30,
            lambda: f"no retry logged; ingest log:\n{ingest.output()[-3000:]}",
        )
        assert ingest.alive(), ingest.output()
        # State and alerts published during the outage must arrive too.
        raw = Producer(settings.kafka_common())
        for change in verdict.changes:
            raw.produce(topics.STATE, CODEC.encode_state(change), change.root_task_id.encode())
        for alert in verdict.alerts:
            raw.produce(topics.ALERTS, CODEC.encode_alert(alert), alert.alert_id.encode())
        assert raw.flush(30) == 0
        del raw
        # The outage lasts several seconds, over several retries (backoff capped at 1 s).
        until(
            lambda: time.monotonic() - down_at >= OUTAGE_SECONDS and retries(ingest) >= 3,
            OUTAGE_SECONDS + 30,
            lambda: f"{retries(ingest)} retries logged; ingest log:\n{ingest.output()[-3000:]}",
        )
        assert ingest.alive(), ingest.output()
        retries_while_down = retries(ingest)
        clickhouse.start()

        publish(phases[2])
        expected = len(published)
        assert expected == 3 * EVENTS_PER_PHASE
        until(
            lambda: stored() == (expected, expected) or not ingest.alive(),
            60,
            lambda: f"{stored()} of {expected} stored; ingest log:\n{ingest.output()[-3000:]}",
        )
        # No loss, no duplicate, exactly the events published.
        assert stored() == (expected, expected)
        ids = {event_id for (event_id,) in query(clickhouse, "SELECT event_id FROM events")}
        assert ids == published
        assert retries_while_down >= 3, ingest.output()
        expected_tables = {
            table: len({c.key for c in verdict.changes if c.kind == kind})
            for kind, table in STATE_TABLES.items()
        }
        expected_tables["alerts"] = len(verdict.alerts)
        until(
            lambda: final_counts(clickhouse, expected_tables) == expected_tables,
            30,
            lambda: f"{final_counts(clickhouse, expected_tables)} != {expected_tables}",
        )
        assert "ClickHouse cannot take the batch" in ingest.output()
        assert ingest.alive(), ingest.output()
    finally:
        producer.close(10)
        ingest.stop()
    # Ingest dead-lettered nothing (the broker is this test's own: the DLQ is empty).
    dead = read_to_end(settings, topics.DLQ)
    assert [dict(m.headers() or []) for m in dead] == []


def final_counts(server: ClickHouseServer, tables: dict[str, int]) -> dict[str, int]:
    return {table: query(server, f"SELECT count() FROM {table} FINAL")[0][0] for table in tables}


def retries(ingest: IngestProcess) -> int:
    return ingest.output().count("ClickHouse cannot take the batch")
