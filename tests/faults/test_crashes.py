"""Crashes: ``kill -9`` of the correlator and of ingest+serve at random points of a
simulator stream on ``custody up``, each restarted by ``custody up``.

Exactly once is what a reader of ClickHouse sees: ``events`` read with FINAL (as
``custody query`` and the API read) holds every published event id once, and nothing
else. A replayed batch writes its rows again, and ReplacingMergeTree drops the copies only
when it merges parts; those raw rows (the active parts' row count minus the distinct ids)
are measured and reported, not failed on: no reader sees them. The alerts are compared by
``alert_id`` with a clean run's, the pure correlator's verdict on the same events with the
stack's grace period and credential lifetime (tests/support/pipeline.py).

Kill points are seeded (``SEED``) and recorded: most fall at random published counts while
the stream is being published, with a random 0.3-2 s of running after each restart; the
last kill of each worker comes right after the publisher finished, both at once, while
the pipeline catches up (each kill records what was published, stored and committed by
the correlator when it fell, so "catch-up" means a backlog was there).
"""

from __future__ import annotations

import functools
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from processors.correlator.app import APP_ID
from processors.processes import running
from processors.stack import CORRELATE, INGEST
from schemas import topics
from tests.faults.conftest import Recorder, scaled
from tests.support.pipeline import (
    PARTITIONS,
    SIMULATION_ENV,
    Publisher,
    simulation,
    stored_through_api,
)
from tests.support.polling import poll
from tests.support.stack import Stack, api_query

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SEED = 20261129
ROOTS = scaled(120, 2300)  # ~5,400 / ~105,000 events
KILLS_EACH = scaled(3, 10)
RATE = scaled(250, 700)  # events/s: the stream lasts about as long as the kills need
SETTLE_TIMEOUT = scaled(180, 900)


def _reached(publisher: Publisher, point: int) -> bool:
    return publisher.sent >= point or publisher.done


def _stored_count(stack: Stack) -> int | None:
    try:
        return int(api_query(stack.address(), "SELECT count() AS n FROM events")[0]["n"])
    except (OSError, ValueError, KeyError):
        return None


def _correlated(stack: Stack) -> int:
    """Events the correlator has committed (its consumer group's offsets on the topic)."""
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": APP_ID})
    try:
        partitions = [TopicPartition(topics.EVENTS, p) for p in range(PARTITIONS)]
        committed = consumer.committed(partitions, timeout=10)
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        consumer.close()


def _complete(address: str, events: int, expected: frozenset[str], stored_alerts: set[str]) -> bool:
    """Whether the stack at ``address`` holds ``events`` events and at least the
    ``expected`` alerts; ``stored_alerts`` is refilled with the alert ids it holds."""
    try:
        count = int(api_query(address, "SELECT count() AS n FROM events")[0]["n"])
        rows = api_query(address, "SELECT alert_id FROM alerts")
    except (OSError, ValueError, KeyError):
        return False
    stored_alerts.clear()
    stored_alerts.update(str(row["alert_id"]) for row in rows)
    return count >= events and stored_alerts >= expected


def _gone(pid: int) -> bool:
    return not running(pid)


def _spools_of(pids: list[int]) -> list[str]:
    """The insert spool directories left by the ingest processes ``pids``."""
    return [
        path.name
        # Where ingest keeps its spools (processors/storage/backend.py); only read here.
        for path in Path("/dev/shm").glob("custody-spool-*")  # noqa: S108
        if int(path.name.split("-")[2]) in pids
    ]


def _kill_and_restart(
    stack: Stack, targets: list[str], publisher: Publisher, started: float
) -> list[dict[str, Any]]:
    """SIGKILL ``targets`` (together), then ``custody up``; what each kill met."""
    kills: list[dict[str, Any]] = []
    published, stored, correlated = publisher.sent, _stored_count(stack), _correlated(stack)
    for target in targets:
        backlog = (correlated if target == CORRELATE else stored or 0) < published
        kills.append(
            {
                "target": target,
                "phase": "publishing"
                if not publisher.done
                else ("catch-up" if backlog else "after the stream"),
                "at_s": round(time.monotonic() - started, 1),
                "published": published,
                "stored": stored,
                "correlated": correlated,
                "pid": stack.pid(target),
            }
        )
    for kill in kills:
        os.kill(kill["pid"], signal.SIGKILL)
    for kill in kills:
        pid: int = kill["pid"]
        assert poll(functools.partial(_gone, pid), 10, 0.05), f"{kill} survived"
    restart = time.monotonic()
    stack.up()  # starts what is not running: the killed workers
    for kill in kills:
        kill["restart_s"] = round(time.monotonic() - restart, 1)
        assert stack.pid(kill["target"]) != kill["pid"]
    return kills


def test_kill_9_of_correlate_and_ingest_at_random_points_loses_nothing(
    tmp_path: Path, record_fault: Recorder
) -> None:
    sim = simulation(ROOTS, SEED)
    rng = random.Random(SEED)
    # Small ingest batches: a kill lands between many store-then-commit steps.
    stack = Stack(tmp_path, {**SIMULATION_ENV, "CUSTODY_INGEST_BATCH_ROWS": "2000"})
    during = [CORRELATE] * (KILLS_EACH - 1) + [INGEST] * (KILLS_EACH - 1)
    rng.shuffle(during)
    points = sorted(rng.randrange(len(sim.events) // 20, len(sim.events)) for _ in during)
    catch_up = [CORRELATE, INGEST]
    rng.shuffle(catch_up)
    kills: list[dict[str, Any]] = []
    killed_ingest_pids: list[int] = []
    started = time.monotonic()
    try:
        stack.up()
        publisher = Publisher(stack.settings(), sim.events, RATE, "faults-crashes")
        publisher.start()
        for target, point in zip(during, points, strict=True):
            poll(functools.partial(_reached, publisher, point), 600, 0.05)
            time.sleep(rng.uniform(0.3, 2.0))
            kills += _kill_and_restart(stack, [target], publisher, started)
        publisher.join(600)
        # Both at once, as soon as the last event is published.
        time.sleep(rng.uniform(0.0, 0.5))
        kills += _kill_and_restart(stack, catch_up, publisher, started)
        killed_ingest_pids = [k["pid"] for k in kills if k["target"] == INGEST]
        published_s = round((publisher.finished_at or started) - started, 1)

        address = stack.address()
        stored_alerts: set[str] = set()
        complete = functools.partial(
            _complete, address, len(sim.events), sim.expected_alerts, stored_alerts
        )
        settled = poll(complete, SETTLE_TIMEOUT, 1.0)
        # A window in which a late or invented alert would still have to arrive.
        poll(lambda: False, 5, 1.0)
        complete()
        stored = stored_through_api(address, publisher.acknowledged)
        alert_rows = api_query(address, "SELECT alert_id, count() AS n FROM alerts GROUP BY 1")
        alert_duplicates = sum(1 for row in alert_rows if int(row["n"]) > 1)
        alerts_equal = stored_alerts == sim.expected_alerts
        by_target = Counter(k["target"] for k in kills)
        by_phase = Counter(k["phase"] for k in kills)
        ingest_log = stack.log(INGEST)
        # The offset guard's seeks back (processors/offset_order.py): records faust
        # delivered past ones it skipped, after a restart with a backlog.
        rewinds = stack.log(CORRELATE).count("seeking back")
        stale_spools = _spools_of(killed_ingest_pids)
        everything_published = (
            not publisher.failed
            and publisher.error is None
            and publisher.acknowledged == sim.event_ids
        )
        survived = (
            settled
            and everything_published
            and stored.exactly_once
            and alerts_equal
            and alert_duplicates == 0
        )
        record_fault(
            "crashes",
            f"kill -9 of correlate x{by_target[CORRELATE]} and ingest+serve "
            f"x{by_target[INGEST]} at random points (seed {SEED}) of a "
            f"{len(sim.events):,}-event simulator stream on custody up, "
            "each restarted by custody up",
            survived,
            events_published=len(publisher.acknowledged),
            events_stored=stored.stored,
            duplicates=stored.duplicates,
            lost=stored.lost,
            unexpected=stored.unexpected,
            raw_rows_awaiting_merge=stored.raw_duplicates,
            kills_correlate=by_target[CORRELATE],
            kills_ingest=by_target[INGEST],
            kills_while_publishing=by_phase["publishing"],
            kills_during_catch_up=by_phase["catch-up"],
            kills_after_the_stream=by_phase["after the stream"],
            alerts_expected=len(sim.expected_alerts),
            alerts_stored=len(stored_alerts),
            alert_sets_equal=alerts_equal,
            stale_spool_dirs=len(stale_spools),
            correlator_rewinds=rewinds,
            publish_seconds=published_s,
            total_seconds=round(time.monotonic() - started, 1),
        )
        print("kills:", *kills, sep="\n  ")
        assert everything_published, (publisher.error, publisher.failed[:5])
        assert settled, (
            f"not settled after {SETTLE_TIMEOUT}s: {stored}, "
            f"{len(stored_alerts & sim.expected_alerts)}/{len(sim.expected_alerts)} alerts"
        )
        assert stored.exactly_once, stored
        assert stored_alerts - sim.expected_alerts == set(), "alerts a clean run does not raise"
        assert sim.expected_alerts - stored_alerts == set(), "alerts lost"
        assert alert_duplicates == 0
        assert by_target[CORRELATE] >= KILLS_EACH
        assert by_target[INGEST] >= KILLS_EACH
        assert stale_spools == [], "a killed ingest's spool directory was never removed"
        assert "Traceback" not in ingest_log, ingest_log[-3000:]
    finally:
        stack.custody("down")
