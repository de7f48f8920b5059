"""The whole pipeline on the local stack: ``custody up``, publish, and the stored evidence
read back with ``custody trace / alerts / export``; then ``kill -9`` of ingest mid-stream
and a restart, after which every event is stored exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from producers.producer import CustodyProducer
from producers.settings import Settings
from schemas import topics
from schemas.models import Envelope
from tests.factories import many_trees
from tests.integration.conftest import free_port, run_custody
from tests.integration.test_correlate import GRACE, LATENESS, traffic

pytestmark = pytest.mark.integration

STACK_ENV = {
    "CUSTODY_KAFKA_PROFILE": "development",
    "CUSTODY_KAFKA_SESSION_TIMEOUT_MS": "2000",
    "CUSTODY_GRACE_SECONDS": str(GRACE),
    "CUSTODY_ALLOWED_LATENESS_SECONDS": str(LATENESS),
}


class Stack:
    """A local stack in its own directory, driven through the ``custody`` command."""

    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.bootstrap = f"127.0.0.1:{free_port()}"
        self.env = {**STACK_ENV, **(env or {})}

    def custody(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_custody(self.bootstrap, *args, cwd=self.home, env=self.env)

    def up(self) -> None:
        started = self.custody("up")
        assert started.returncode == 0, started.stderr + started.stdout

    def settings(self) -> Settings:
        return Settings(kafka_bootstrap=self.bootstrap, kafka_profile="development")

    def publish(self, stream: list[Envelope], instance: str) -> None:
        with CustodyProducer(self.settings(), producer_instance=instance) as producer:
            for event in stream:
                producer.publish(event)

    def query(self, sql: str) -> list[dict[str, object]]:
        result = self.custody("query", sql, "--json")
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    def ingest_pid(self) -> int:
        record = json.loads((self.home / ".custody" / "run" / "ingest.json").read_text())
        return int(record["pid"])

    def log(self, name: str) -> str:
        return (self.home / ".custody" / "logs" / f"{name}.log").read_text(errors="replace")


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path)
    yield running
    running.custody("down")


def api_address(stack: Stack) -> str:
    record = json.loads((stack.home / ".custody" / "run" / "serve.json").read_text())
    return str(record["address"])


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {timeout}s"
        time.sleep(0.3)


def test_published_traffic_is_traced_alerted_and_exported(stack: Stack) -> None:
    stack.up()
    stream, expected = traffic(16)
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
    assert revoked and all(c["revoked_at"] and c["revocation_reason"] for c in revoked)

    exported = stack.custody("export", leaf, "--format", "prov-json")
    assert exported.returncode == 0, exported.stderr
    prov_model = pytest.importorskip("prov.model")
    document = prov_model.ProvDocument.deserialize(content=exported.stdout, format="json")
    assert document.get_records(prov_model.ProvAgent)

    status = stack.custody("status", "--json")
    processes = {p["name"]: p for p in json.loads(status.stdout)["processes"]}
    assert status.returncode == 0 and processes["ingest"]["healthy"]


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
        killed = stack.ingest_pid()
        os.kill(killed, signal.SIGKILL)
        publisher.join()
        # The rest arrives while ingest is dead; the directory is free for a direct read.
        stack.publish(stream[half:], "second")
        stored_at_kill = stack.query("SELECT count() AS n FROM events")[0]["n"]
        assert isinstance(stored_at_kill, int) and 3000 <= stored_at_kill <= half
        stack.up()  # starts what is not running: ingest again
        assert stack.ingest_pid() != killed

        def all_stored() -> bool:
            row = stack.query("SELECT uniqExact(event_id) AS d FROM events")[0]
            return row["d"] == len(stream)

        until(all_stored, 120, "every event stored after the restart")
        final = stack.query("SELECT count() AS n, uniqExact(event_id) AS d FROM events")
        assert final == [{"n": len(stream), "d": len(stream)}]
        assert "Traceback" not in stack.log("ingest")

        # The whole topic again: a new consumer group reads it from the beginning.
        os.kill(stack.ingest_pid(), signal.SIGTERM)
        until(lambda: stack.custody("status").returncode == 3, 30, "ingest stopped")
        stack.env["CUSTODY_INGEST_GROUP"] = "custody-ingest-replay"
        stack.up()

        def replayed() -> bool:
            with urllib.request.urlopen(f"{api_address(stack)}/health", timeout=5) as answer:
                stored = json.loads(answer.read())["ingest"]["stored_by_topic"]
            return int(stored.get(topics.EVENTS, 0)) >= len(stream)

        until(replayed, 120, "the topic replayed by a new group")
        again = stack.query("SELECT count() AS n, uniqExact(event_id) AS d FROM events")
        assert again == [{"n": len(stream), "d": len(stream)}]
    finally:
        stack.custody("down")
