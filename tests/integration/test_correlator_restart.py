"""The correlator's state on disk across restarts, against a real broker: trees retired
before a ``kill -9`` stay retired (their late evidence raises nothing), and local state
written against a broker that is gone is dropped instead of crashing the worker or being
read as current."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path

import pytest

from producers.admin import ensure_topics
from producers.context import CustodyContext
from producers.producer import CustodyProducer
from producers.settings import Settings
from schemas.models import Envelope
from tests.support.broker import RunningBroker
from tests.support.correlator import AlertReader, Worker
from tests.support.events import CODER, at, declare, use
from tests.support.polling import poll
from tests.support.stack import CONFIG, GRACE, LATENESS
from tests.support.trees import traffic

pytestmark = pytest.mark.integration

RETENTION = 60
# Roots of their own whose one event each moves the watermark of every partition (60
# roots miss one of 6 partitions with a chance of about one in ten thousand).
CLOCK_ROOTS = 60


def _env(bootstrap: str, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CUSTODY_KAFKA_BOOTSTRAP": bootstrap,
        "CUSTODY_KAFKA_PROFILE": "development",
        "CUSTODY_KAFKA_SESSION_TIMEOUT_MS": "2000",
        "CUSTODY_EVENT_PARTITIONS": "6",
        "CUSTODY_GRACE_SECONDS": str(GRACE),
        "CUSTODY_ALLOWED_LATENESS_SECONDS": str(LATENESS),
        "CUSTODY_TREE_RETENTION_SECONDS": str(RETENTION),
        "CUSTODY_CORRELATOR_METRICS_ADDRESS": "127.0.0.1:0",
        "CUSTODY_HOME": str(home),
    }


def _settings(bootstrap: str) -> Settings:
    settings = Settings(kafka_bootstrap=bootstrap, kafka_profile="development")
    ensure_topics(settings.kafka_admin(), settings.event_topic_partitions())
    return settings


def publish(settings: Settings, stream: list[Envelope]) -> None:
    """Publish through a producer instance of its own (a hash chain from seq 1)."""
    with CustodyProducer(settings) as producer:
        for event in stream:
            producer.publish(event)


def _correlated(
    bootstrap: str, worker: Worker, trees: int
) -> tuple[Settings, AlertReader, set[str]]:
    """Publish the traffic of ``trees`` custody trees, start ``worker`` and read alerts until
    every one of the pure correlator's verdict has come; the settings, reader and verdict."""
    settings = _settings(bootstrap)
    stream, expected = traffic(trees, CONFIG)
    publish(settings, stream)
    worker.start()
    reader = AlertReader(settings.kafka_bootstrap)
    reader.until(lambda: expected <= set(reader.ids), 90, worker)
    return settings, reader, expected


def _metrics(worker: Worker, since: int) -> dict[str, float]:
    """The metrics of the worker that wrote its address into its log after ``since``."""
    said = Path(worker.log).read_bytes()[since:].decode(errors="replace")
    urls = re.findall(r"metrics on (http://[0-9.:]+/metrics)", said)
    if not urls:
        return {}
    with urllib.request.urlopen(urls[-1], timeout=5) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for name, value in re.findall(r"^(custody_correlator_\S+) (\S+)$", text, re.M)
    }


def _late(reason: str) -> str:
    return f'custody_correlator_late_events_total{{reason="{reason}"}}'


def test_a_tree_retired_before_a_kill_9_stays_retired_and_its_late_evidence_raises_nothing(
    tmp_path: Path,
) -> None:
    broker = RunningBroker()
    broker.start()
    worker = Worker(_env(broker.bootstrap, tmp_path / "home"), str(tmp_path / "correlate.log"))
    try:
        settings, reader, expected = _correlated(broker.bootstrap, worker, 4)

        # Three days of event time later, every tree of the traffic is past its retention.
        later = at(3 * 86_400)
        clock: list[Envelope] = [
            declare(CustodyContext.new_root(f"clock{i}"), later) for i in range(CLOCK_ROOTS)
        ]
        publish(settings, clock)
        assert poll(
            lambda: _metrics(worker, 0).get("custody_correlator_trees_retired_total", 0) >= 4,
            60,
            0.5,
        ), _metrics(worker, 0)

        worker.kill()
        restarted_at = Path(worker.log).stat().st_size
        worker.start()
        # The retired tree's own access again, and a new one: without the tree, one names a
        # token never issued and the other a decision never made.
        code = CustodyContext.new_root("t0-root").child("t0-research").child("t0-code")
        late: list[Envelope] = [
            use(code, "t0-tok-code", at(24), source=CODER),
            use(code, "t0-tok-x", at(25)),
        ]
        publish(settings, late)
        assert poll(
            lambda: _metrics(worker, restarted_at).get(_late("retired_tree"), 0) == len(late),
            60,
            0.5,
        ), _metrics(worker, restarted_at)
        reader.keep_reading(GRACE + LATENESS + 2)
        assert set(reader.ids) == expected
        assert worker.alive()
        tables = tmp_path / "home" / "data" / "correlate" / "v1" / "tables"
        assert sorted(p.name for p in tables.glob("custody-trees-*.db")) == [
            f"custody-trees-{partition}.db" for partition in range(6)
        ]
    finally:
        worker.kill()
        broker.kill()


def test_local_state_written_against_a_broker_that_is_gone_is_dropped(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for run in range(2):
        broker = RunningBroker()
        broker.start()
        worker = Worker(_env(broker.bootstrap, home), str(tmp_path / f"correlate-{run}.log"))
        try:
            # The same tree names each time: read as current, the first broker's trees
            # would be joined with the second's events.
            _, reader, expected = _correlated(broker.bootstrap, worker, 6)
            reader.keep_reading(GRACE + LATENESS + 2)
            assert set(reader.ids) == expected
            assert worker.alive()
        finally:
            worker.kill()
            broker.kill()
    said = [
        json.loads(line) for line in Path(tmp_path / "correlate-1.log").read_text().splitlines()
    ]
    assert any("written against another changelog" in r.get("message", "") for r in said)
