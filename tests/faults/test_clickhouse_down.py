"""ClickHouse down mid-stream, in both modes.

- Server mode: ``custody ingest --serve`` writes to a private Debian clickhouse-server
  (18.16, on the reduced tables of tests/support/clickhouse_server.py), which is
  stopped for ``OUTAGE`` seconds while a simulator stream is being published. Its
  ``/health``, polled throughout, must show ``waiting_for_clickhouse`` during the outage
  (the consumer pauses its partitions and retries the same batch, storing nothing) and
  clear again once the server is back, in the same process: it resumes by itself.
- Embedded mode: ClickHouse (chdb) lives inside the ingest+serve process, so it is down
  exactly when that process is: ``kill -9`` of it for ``OUTAGE`` seconds mid-stream on
  ``custody up``, while the correlator keeps producing state and alerts, then ``custody
  up``. The new process resumes from the committed offsets with no other help.

In both, no loss: every published event id is stored and a reader (FINAL) sees each once;
raw rows written twice by a replayed batch are reported, not failed on (ReplacingMergeTree
merges them away). In embedded mode the stored alerts must also equal a clean run's.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from processors.stack import INGEST
from producers.admin import ensure_topics
from producers.settings import Settings
from tests.faults.conftest import Recorder, scaled
from tests.support.broker import CUSTODY, RunningBroker
from tests.support.clickhouse_server import (
    DATABASE,
    ClickHouseServer,
    create_reduced_tables,
    custody_url,
    server_binary,
)
from tests.support.pipeline import (
    SIMULATION_ENV,
    Publisher,
    Stored,
    simulation,
    stored_events,
    stored_through_api,
)
from tests.support.polling import poll
from tests.support.stack import Stack, api_health, api_query

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SEED = 20261130
OUTAGE = scaled(8, 30)  # seconds ClickHouse is down
ROOTS = scaled(120, 900)  # ~5,100 / ~39,000 events
RATE = scaled(300, 600)  # events/s: the stream outlasts the outage on both sides
SETTLE_TIMEOUT = scaled(120, 300)


def _outage_measured(
    publisher: Publisher, published_in_outage: int, stored: Stored, outage_s: float
) -> dict[str, Any]:
    """What both outages record first, in this order: published, stored, the outage."""
    return {
        "events_published": len(publisher.acknowledged),
        "published_during_outage": published_in_outage,
        "events_stored": stored.stored,
        "duplicates": stored.duplicates,
        "lost": stored.lost,
        "raw_rows_awaiting_merge": stored.raw_duplicates,
        "outage_seconds": outage_s,
    }


class HealthLog(threading.Thread):
    """Polls an ingest's ``/health`` every 0.2 s, keeping (seconds, waiting, stored,
    retries) samples; a failed poll is kept as ``None`` for waiting."""

    def __init__(self, address: str, started: float) -> None:
        super().__init__(daemon=True, name="health-log")
        self.address, self.started = address, started
        self.samples: list[tuple[float, bool | None, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            at = time.monotonic() - self.started
            try:
                ingest = api_health(self.address, timeout=2)["ingest"]
            except (OSError, ValueError, KeyError):
                self.samples.append((at, None, -1, -1))
                continue
            self.samples.append(
                (at, bool(ingest["waiting_for_clickhouse"]), ingest["stored"], ingest["retries"])
            )

    def waiting(self) -> list[tuple[float, bool | None, int, int]]:
        return [s for s in self.samples if s[1]]

    def clear_since(self, since: float) -> bool:
        """Whether the last sample, taken after ``since`` seconds, shows ingest not waiting."""
        last = self.samples[-1] if self.samples else None
        return last is not None and last[1] is False and last[0] > since

    def finish(self) -> None:
        """Stop polling."""
        self.stop.set()
        self.join(5)


def _start_services(broker: RunningBroker, server: ClickHouseServer) -> Settings:
    """Start the broker with the topics and the server with the reduced tables."""
    broker.start()
    settings = Settings(kafka_bootstrap=broker.bootstrap, kafka_profile="development")
    ensure_topics(settings.kafka_admin(), settings.event_topic_partitions())
    server.start()
    create_reduced_tables(server)
    return settings


def _start_ingest(
    broker: RunningBroker, server: ClickHouseServer, home: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """``custody ingest --serve`` into ``server``, retrying quickly, logging to ``log_path``."""
    env = {
        **os.environ,
        "CUSTODY_CLICKHOUSE_URL": custody_url(server),
        "CUSTODY_KAFKA_BOOTSTRAP": broker.bootstrap,
        "CUSTODY_KAFKA_PROFILE": "development",
        "CUSTODY_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "CUSTODY_INGEST_BATCH_ROWS": "1000",
        "CUSTODY_INGEST_BATCH_SECONDS": "0.5",
        "CUSTODY_INGEST_RETRY_MAX_SECONDS": "2",
        "CUSTODY_HOME": str(home),
        "CUSTODY_SERVE_PORT": "0",
    }
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [CUSTODY, "ingest", "--serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _stop(ingest: subprocess.Popen[bytes] | None) -> None:
    """Terminate ``ingest`` if it runs, killing it after 15 s."""
    if ingest is not None and ingest.poll() is None:
        ingest.terminate()
        try:
            ingest.wait(15)
        except subprocess.TimeoutExpired:
            ingest.kill()
            ingest.wait()


@pytest.mark.skipif(
    server_binary() is None,
    reason="clickhouse-server is not installed "
    "(apt-get install -y --no-install-recommends clickhouse-server)",
)
def test_clickhouse_server_stopped_mid_stream_ingest_pauses_and_resumes_by_itself(
    tmp_path: Path, record_fault: Recorder
) -> None:
    sim = simulation(ROOTS, SEED)
    broker = RunningBroker()
    server = ClickHouseServer(tmp_path / "clickhouse")
    ingest: subprocess.Popen[bytes] | None = None
    log_path = tmp_path / "ingest.log"
    started = time.monotonic()
    try:
        settings = _start_services(broker, server)
        home = tmp_path / "home"
        ingest = _start_ingest(broker, server, home, log_path)
        record = home / "run" / "serve.json"
        assert poll(record.exists, 60, 0.1), log_path.read_text()
        health = HealthLog(json.loads(record.read_text())["address"], started)
        health.start()

        def query(sql: str) -> list[tuple[Any, ...]]:
            return server.execute(sql, database=DATABASE)

        def stored_now() -> int:
            return int(query("SELECT count() FROM events FINAL")[0][0])

        publisher = Publisher(settings, sim.events, RATE, "faults-ch-server")
        publisher.start()
        # Mid-stream: a first part stored, most of the stream still to come.
        assert poll(lambda: stored_now() >= len(sim.events) // 10, 60), log_path.read_text()
        stored_at_stop = stored_now()
        published_at_stop = publisher.sent
        server.stop()
        down_at = time.monotonic()
        assert poll(lambda: bool(health.waiting()), OUTAGE + 10, 0.1)
        paused_at = health.waiting()[0][0]
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))  # the outage itself
        stored_by_ingest_in_outage = {s[2] for s in health.waiting()}
        server.start()
        up_at = time.monotonic()
        outage_s = round(up_at - down_at, 1)
        published_in_outage = publisher.sent - published_at_stop
        publisher_overlapped = not publisher.done

        resumed_ok = poll(functools.partial(health.clear_since, up_at - started), 60, 0.1)
        resumed_after_s = round(
            next((s[0] for s in health.samples if s[0] > up_at - started and s[1] is False), -1)
            - (up_at - started),
            1,
        )
        publisher.join(600)
        settled = poll(lambda: stored_now() >= len(sim.events), SETTLE_TIMEOUT)
        health.finish()
        waiting = health.waiting()
        pause_s = round(waiting[-1][0] - waiting[0][0], 1) if waiting else 0.0
        stored = stored_events(
            publisher.acknowledged,
            lambda sql: [
                {"event_id": event_id, "n": n}
                for event_id, n in query(
                    "SELECT event_id, count() FROM events FINAL GROUP BY event_id"
                )
            ],
            int(query("SELECT count() FROM events")[0][0]),
        )
        alive = ingest.poll() is None
        survived = (
            settled
            and stored.exactly_once
            and resumed_ok
            and bool(waiting)
            and alive
            and publisher.acknowledged == sim.event_ids
        )
        retries = waiting[-1][3] if waiting else 0
        record_fault(
            "clickhouse down",
            f"Debian clickhouse-server {server.version()} stopped for {outage_s:.0f} s in the "
            f"middle of a {len(sim.events):,}-event simulator stream into custody ingest "
            "(server mode)",
            survived,
            **_outage_measured(publisher, published_in_outage, stored, outage_s),
            paused_after_seconds=round(paused_at - (down_at - started), 1),
            waiting_for_clickhouse_seconds=pause_s,
            retries=retries,
            resumed_by_itself=resumed_ok and alive,
            resumed_after_restart_seconds=resumed_after_s,
            ingest_restarts=0,
            total_seconds=round(time.monotonic() - started, 1),
        )
        assert publisher.acknowledged == sim.event_ids, (publisher.error, publisher.failed[:5])
        assert publisher_overlapped, "the stream ended before the server came back"
        assert stored_at_stop < len(sim.events)
        assert published_in_outage > 0
        assert waiting, "ingest never reported waiting_for_clickhouse"
        # Paused: nothing stored while waiting.
        assert len(stored_by_ingest_in_outage) == 1, stored_by_ingest_in_outage
        assert resumed_ok, "ingest did not resume after the server came back"
        assert alive, log_path.read_text()[-3000:]
        assert settled, f"not every event stored after {SETTLE_TIMEOUT}s: {stored}"
        assert stored.exactly_once, stored
        assert "ClickHouse cannot take the batch" in log_path.read_text()
    finally:
        _stop(ingest)
        server.stop()
        broker.kill()


def test_embedded_clickhouse_down_with_ingest_serve_killed_mid_stream_loses_nothing(
    tmp_path: Path, record_fault: Recorder
) -> None:
    sim = simulation(ROOTS, SEED + 1)
    stack = Stack(tmp_path, {**SIMULATION_ENV, "CUSTODY_INGEST_BATCH_ROWS": "2000"})
    started = time.monotonic()
    try:
        stack.up()
        address = stack.address()

        def stored_now(where: str) -> int:
            try:
                return int(api_query(where, "SELECT count() AS n FROM events")[0]["n"])
            except (OSError, ValueError, KeyError):
                return -1

        publisher = Publisher(stack.settings(), sim.events, RATE, "faults-ch-embedded")
        publisher.start()
        assert poll(lambda: stored_now(address) >= len(sim.events) // 10, 60)
        stored_at_kill = stored_now(address)
        pid = stack.pid(INGEST)
        os.kill(pid, signal.SIGKILL)
        down_at = time.monotonic()
        published_at_kill = publisher.sent
        status = stack.custody("status", "--json")
        processes = {p["name"]: p for p in json.loads(status.stdout)["processes"]}
        reported_down = status.returncode == 3 and not processes[INGEST]["running"]
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))  # the outage itself
        published_in_outage = publisher.sent - published_at_kill
        publisher_overlapped = not publisher.done
        stack.up()
        up_at = time.monotonic()
        outage_s = round(up_at - down_at, 1)
        address = stack.address()
        restarted_pid = stack.pid(INGEST)
        resumed = poll(lambda: stored_now(address) > stored_at_kill, 60, 0.2)
        resumed_after_s = round(time.monotonic() - up_at, 1)
        publisher.join(600)
        stored_alerts: set[str] = set()

        def complete() -> bool:
            try:
                rows = api_query(address, "SELECT alert_id FROM alerts")
            except (OSError, ValueError, KeyError):
                return False
            stored_alerts.clear()
            stored_alerts.update(str(row["alert_id"]) for row in rows)
            return stored_now(address) >= len(sim.events) and stored_alerts >= sim.expected_alerts

        settled = poll(complete, SETTLE_TIMEOUT, 1.0)
        caught_up_s = round(time.monotonic() - up_at, 1)
        stored = stored_through_api(address, publisher.acknowledged)
        health: dict[str, Any] = api_health(address)
        alerts_equal = stored_alerts == sim.expected_alerts
        survived = (
            settled
            and stored.exactly_once
            and alerts_equal
            and resumed
            and publisher.acknowledged == sim.event_ids
        )
        record_fault(
            "clickhouse down",
            f"embedded ClickHouse down: kill -9 of ingest+serve for {outage_s:.0f} s in the "
            f"middle of a {len(sim.events):,}-event simulator stream on custody up, "
            "then custody up",
            survived,
            **_outage_measured(publisher, published_in_outage, stored, outage_s),
            status_reported_down=reported_down,
            resumed_after_restart_seconds=resumed_after_s,
            caught_up_after_restart_seconds=caught_up_s,
            alerts_expected=len(sim.expected_alerts),
            alerts_stored=len(stored_alerts),
            alert_sets_equal=alerts_equal,
            total_seconds=round(time.monotonic() - started, 1),
        )
        assert publisher.acknowledged == sim.event_ids, (publisher.error, publisher.failed[:5])
        assert publisher_overlapped
        assert published_in_outage > 0
        assert reported_down, status.stdout
        assert restarted_pid != pid
        assert resumed, "the restarted ingest stored nothing"
        assert settled, f"not settled after {SETTLE_TIMEOUT}s: {stored}"
        assert stored.exactly_once, stored
        assert alerts_equal, (stored_alerts ^ sim.expected_alerts, health)
        assert "Traceback" not in stack.log(INGEST)
    finally:
        stack.custody("down")
