"""The whole pipeline on the local stack: ``custody up``, publish, and the stored evidence
read back with ``custody trace / alerts / export``; then ``kill -9`` of ingest mid-stream
and a restart, after which every event is stored exactly once."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import topics
from tests.support.polling import until
from tests.support.samples import many_trees
from tests.support.stack import CONFIG, Stack, api_health
from tests.support.trees import traffic

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path)
    yield running
    running.custody("down")


def test_published_traffic_is_traced_alerted_and_exported(stack: Stack) -> None:
    stack.up()
    stream, expected = traffic(16, CONFIG)
    stack.publish(stream, "e2e")

    alert_ids: set[str] = set()

    def all_alerts_stored() -> bool:
        listed = stack.custody("alerts", "--json")
        assert listed.returncode == 0, listed.stderr
        alert_ids.clear()
        alert_ids.update(json.loads(line)["alert_id"] for line in listed.stdout.splitlines())
        return alert_ids >= expected

    until(all_alerts_stored, 90, "every expected alert in ClickHouse")
    assert alert_ids == expected
    stored = stack.query("SELECT count() AS n, uniqExact(event_id) AS d FROM events")
    assert stored == [{"n": len(stream), "d": len(stream)}]

    leaf = next(e for e in stream if e.depth == 2 and e.root_task_id == "t0-root").task_id
    traced = stack.custody("trace", leaf, "--json")
    assert traced.returncode == 0, traced.stderr
    tree = json.loads(traced.stdout)
    assert tree["root_task_id"] == "t0-root"
    assert {t["task_id"] for t in tree["tasks"]} == {
        e.task_id for e in stream if e.root_task_id == "t0-root"
    }
    assert {a["alert_type"] for a in tree["alerts"]} == {"UNREVOKED_TOKEN"}  # t0 leaks
    revoked = [c for c in tree["credentials"] if c["state"] == "REVOKED"]
    assert revoked
    assert all(c["revoked_at"] and c["revocation_reason"] for c in revoked)

    exported = stack.custody("export", leaf, "--format", "prov-json")
    assert exported.returncode == 0, exported.stderr
    prov_model = pytest.importorskip("prov.model")
    document = prov_model.ProvDocument.deserialize(content=exported.stdout, format="json")
    assert document.get_records(prov_model.ProvAgent)

    status = stack.custody("status", "--json")
    processes = {p["name"]: p for p in json.loads(status.stdout)["processes"]}
    assert status.returncode == 0
    assert processes["ingest"]["healthy"]


def test_ingest_killed_mid_stream_stores_every_event_exactly_once(tmp_path: Path) -> None:
    # Small batches, so the kill lands between many store-then-commit steps.
    stack = Stack(tmp_path, {"CUSTODY_INGEST_BATCH_ROWS": "500"})
    try:
        stack.up()
        stream = many_trees(2500)  # 22,500 events
        half = len(stream) // 2
        publisher = threading.Thread(target=stack.publish, args=(stream[:half], "first"))
        publisher.start()

        def some_stored() -> bool:
            return stack.query("SELECT count() >= 3000 AS enough FROM events")[0]["enough"] == 1

        until(some_stored, 90, "a first part of the stream stored")
        killed = stack.pid("ingest")
        os.kill(killed, signal.SIGKILL)
        publisher.join()
        # The rest arrives while ingest is dead; the directory is free for a direct read.
        stack.publish(stream[half:], "second")
        stored_at_kill = stack.query("SELECT count() AS n FROM events")[0]["n"]
        assert isinstance(stored_at_kill, int)
        assert 3000 <= stored_at_kill <= half
        stack.up()  # starts what is not running: ingest again
        assert stack.pid("ingest") != killed

        def all_stored() -> bool:
            row = stack.query("SELECT uniqExact(event_id) AS d FROM events")[0]
            return row["d"] == len(stream)

        until(all_stored, 120, "every event stored after the restart")
        final = stack.query("SELECT count() AS n, uniqExact(event_id) AS d FROM events")
        assert final == [{"n": len(stream), "d": len(stream)}]
        assert "Traceback" not in stack.log("ingest")

        # The whole topic again: a new consumer group reads it from the beginning.
        os.kill(stack.pid("ingest"), signal.SIGTERM)
        until(lambda: stack.custody("status").returncode == 3, 30, "ingest stopped")
        stack.env["CUSTODY_INGEST_GROUP"] = "custody-ingest-replay"
        stack.up()

        def replayed() -> bool:
            stored = api_health(stack.address())["ingest"]["stored_by_topic"]
            return int(stored.get(topics.EVENTS, 0)) >= len(stream)

        until(replayed, 120, "the topic replayed by a new group")
        again = stack.query("SELECT count() AS n, uniqExact(event_id) AS d FROM events")
        assert again == [{"n": len(stream), "d": len(stream)}]
    finally:
        stack.custody("down")
