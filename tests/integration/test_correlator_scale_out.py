"""Two correlator workers in one consumer group (``custody up --correlators 2``) on a
6-partition events topic; one is killed with ``kill -9`` mid-stream and the survivor
takes over its partitions.

What must hold: the set of alert ids on custody.alerts.v1 is the pure correlator's verdict
on the same events (tests/support/pipeline.py), none missing, none invented; and each is
stored once: ClickHouse, read with FINAL as every reader reads it, holds one row per alert
id. The topic itself may hold an alert twice (the survivor replays the batches the killed
worker had not committed: at-least-once, deduplicated by key downstream), which is why the
topic is compared as a set of ids.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from processors.processes import running
from schemas import topics
from tests.support.correlator import AlertReader
from tests.support.pipeline import SIMULATION_ENV, Publisher, simulation
from tests.support.polling import poll, until
from tests.support.stack import Stack, api_query

pytestmark = pytest.mark.integration

SEED = 20261203
ROOTS = 150  # about 6,800 events
RATE = 500  # events/s: the stream lasts long enough for a kill in its middle
SURVIVOR, VICTIM = "correlate", "correlate-2"


def _statuses(stack: Stack) -> dict[str, dict[str, Any]]:
    result = stack.custody("status", "--json")
    return {p["name"]: p for p in json.loads(result.stdout)["processes"]}


def _metrics(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _events_taken(url: str) -> float:
    return _metrics(url).get(("custody_correlator_events_total", frozenset()), 0.0)


def _lagging_partitions(url: str) -> set[str]:
    """The events partitions whose lag the worker reports: the ones it owns and reads."""
    return {
        dict(labels)["partition"]
        for name, labels in _metrics(url)
        if name == "custody_correlator_consumer_lag" and ("topic", topics.EVENTS) in labels
    }


def _stored_alerts(address: str) -> Counter[str]:
    """Rows per alert id in ClickHouse, read with FINAL (the query API reads so)."""
    rows = api_query(address, "SELECT alert_id, count() AS n FROM alerts GROUP BY alert_id")
    return Counter({str(row["alert_id"]): int(row["n"]) for row in rows})


def test_the_survivor_of_a_kill_9_takes_over_and_every_alert_is_stored_once(
    tmp_path: Path,
) -> None:
    run = simulation(ROOTS, SEED)
    assert len(run.expected_alerts) >= 20
    stack = Stack(tmp_path, env=SIMULATION_ENV)
    try:
        started = stack.custody("up", "--correlators", "2")
        assert started.returncode == 0, started.stderr + started.stdout
        statuses = _statuses(stack)
        assert all(statuses[name]["healthy"] for name in (SURVIVOR, VICTIM)), statuses
        survivor, victim = statuses[SURVIVOR]["metrics"], statuses[VICTIM]["metrics"]
        assert survivor != victim
        publisher = Publisher(stack.settings(), run.events, RATE, "scale-out")
        publisher.start()
        until(
            lambda: (
                publisher.sent >= len(run.events) // 3
                and _events_taken(survivor) > 0
                and _events_taken(victim) > 0
            ),
            60,
            "both workers correlating a third of the way through the stream",
        )
        # The group has split the partitions between the two.
        until(
            lambda: len(_lagging_partitions(survivor) | _lagging_partitions(victim)) == 6,
            10,
            lambda: f"partitions: {_lagging_partitions(survivor)} {_lagging_partitions(victim)}",
        )
        assert not _lagging_partitions(survivor) & _lagging_partitions(victim)
        killed = stack.pid(VICTIM)
        os.kill(killed, signal.SIGKILL)
        assert poll(lambda: not running(killed), 10, 0.05), "the victim survived SIGKILL"
        assert not publisher.done, "the stream ended before the kill"
        until(
            lambda: len(_lagging_partitions(survivor)) == 6,
            60,
            lambda: f"the survivor reads {sorted(_lagging_partitions(survivor))}",
        )
        publisher.join(120)
        assert publisher.done, "the stream was not published within 120 s"
        assert publisher.error is None, publisher.error
        assert publisher.failed == []

        reader = AlertReader(stack.bootstrap, "scale-out")
        try:
            until(
                lambda: run.expected_alerts <= reader.read(),
                180,
                lambda: f"{len(run.expected_alerts - set(reader.ids))} alerts missing",
            )
            # Every deadline of the stream is past already (its closing trees): an
            # invented alert would come within this window, if at all.
            reader.keep_reading(10)
        finally:
            reader.close()
        assert set(reader.ids) == run.expected_alerts

        address = stack.address()
        until(
            lambda: set(_stored_alerts(address)) >= run.expected_alerts,
            180,
            "every alert stored in ClickHouse",
        )
        stored = _stored_alerts(address)
        assert set(stored) == run.expected_alerts
        assert {alert: n for alert, n in stored.items() if n != 1} == {}

        statuses = _statuses(stack)
        assert statuses[SURVIVOR]["running"]
        assert statuses[SURVIVOR]["healthy"]
        assert not statuses[VICTIM]["running"]
        assert statuses[VICTIM]["metrics"] is None
        # Back to one worker: the dead one's record goes, the survivor stays as it is.
        survivor_pid = stack.pid(SURVIVOR)
        scaled = stack.custody("up", "--correlators", "1")
        assert scaled.returncode == 0, scaled.stderr + scaled.stdout
        statuses = _statuses(stack)
        assert list(statuses) == ["broker", SURVIVOR, "ingest", "collect"]
        assert statuses[SURVIVOR]["pid"] == survivor_pid
    finally:
        down = stack.custody("down")
    assert SURVIVOR in down.stdout
