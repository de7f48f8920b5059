"""A local stack (``custody up``: broker, correlator, ingest+serve on embedded ClickHouse)
in a directory of its own, driven through the ``custody`` command, and its query API."""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from processors.correlation.engine import CorrelationConfig
from producers.producer import CustodyProducer
from producers.settings import Settings
from schemas.models import Envelope
from tests.support.broker import free_port, run_custody

# Short, so that a test sees deadlines pass: the grace period for a missing piece and the
# allowed lateness of a partition (seconds); CONFIG judges as a worker so configured does.
GRACE, LATENESS = 3, 1
CONFIG = CorrelationConfig.of(GRACE, 86_400)
STACK_ENV = {
    "CUSTODY_KAFKA_PROFILE": "development",
    "CUSTODY_KAFKA_SESSION_TIMEOUT_MS": "2000",
    "CUSTODY_GRACE_SECONDS": str(GRACE),
    "CUSTODY_ALLOWED_LATENESS_SECONDS": str(LATENESS),
    # The builders' trees are dated at a fixed T0 that recedes into the past day by day;
    # under the one-day default they would soon lie beyond retention and go unjudged.
    # Retention itself is tested on its own (tests/unit/test_retention.py).
    "CUSTODY_TREE_RETENTION_SECONDS": str(10 * 365 * 86_400),
}


class Stack:
    """A local stack in its own directory, driven through the ``custody`` command; ``env``
    overrides :data:`STACK_ENV`."""

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

    def count(self, sql: str) -> int:
        """The number ``sql`` selects as its one row's ``n``."""
        [row] = self.query(sql)
        number = row["n"]
        assert isinstance(number, int), row
        return number

    def _run_record(self, name: str) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(
            (self.home / ".custody" / "run" / f"{name}.json").read_text()
        )
        return record

    def pid(self, name: str) -> int:
        """The process id ``custody up`` recorded for ``name`` (correlate, ingest, ...)."""
        return int(self._run_record(name)["pid"])

    def address(self) -> str:
        """Where the query API of the running ingest+serve listens."""
        return str(self._run_record("serve")["address"])

    def log(self, name: str) -> str:
        return (self.home / ".custody" / "logs" / f"{name}.log").read_text(errors="replace")


def api_query(address: str, sql: str, timeout: float = 60.0, **params: Any) -> list[dict[str, Any]]:
    """``sql`` with ``params`` through the query API (read-only, ``final = 1``)."""
    request = urllib.request.Request(
        f"{address}/query",
        data=json.dumps({"sql": sql, "params": params}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        rows: list[dict[str, Any]] = json.loads(answer.read())["rows"]
    return rows


def api_health(address: str, timeout: float = 5.0) -> dict[str, Any]:
    """What the query API's ``/health`` says."""
    with urllib.request.urlopen(f"{address}/health", timeout=timeout) as answer:
        health: dict[str, Any] = json.loads(answer.read())
    return health


WORKERS = ("correlate", "ingest")


@dataclass
class WatchedStack:
    """A running stack whose workers must survive what a test sends it: they must stay
    the processes started first (a restart is a failure), healthy, without a traceback.

    Its grace period and allowed lateness are longer than :data:`GRACE` and
    :data:`LATENESS`: large records make the correlator read some partitions seconds
    behind others on a loaded machine, and a missing piece is waited for a grace period,
    the rest of a backfilled tree for the allowed lateness (of wall time)."""

    stack: Stack
    grace: int = 10
    lateness: int = 3
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def config(self) -> CorrelationConfig:
        """What the pure correlator must use to judge as this stack does."""
        return CorrelationConfig.of(self.grace, 86_400)

    def worker_pids(self) -> dict[str, int]:
        return {name: self.stack.pid(name) for name in WORKERS}

    def raw(self) -> Producer:
        """A plain producer onto the stack's broker, bypassing the SDK."""
        return Producer(
            {
                "bootstrap.servers": self.stack.bootstrap,
                "message.max.bytes": 8 * 1024 * 1024,
                "linger.ms": 5,
            }
        )

    def sql(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        return api_query(self.stack.address(), sql, timeout=30, **params)

    def alert_ids(self, prefix: str) -> set[str]:
        """The stored alerts of the trees whose root task id starts with ``prefix``."""
        rows = self.sql(
            "SELECT alert_id FROM alerts WHERE startsWith(root_task_id, {p:String})", p=prefix
        )
        return {str(r["alert_id"]) for r in rows}

    def stored_events(self, prefix: str) -> int:
        """How many events of those trees are stored."""
        rows = self.sql(
            "SELECT uniqExact(event_id) AS n FROM events"
            " WHERE startsWith(root_task_id, {p:String})",
            p=prefix,
        )
        return int(rows[0]["n"])

    def survived(self) -> tuple[bool, dict[str, Any]]:
        """Both workers still the processes started at the beginning, healthy, no
        traceback in their logs."""
        now = self.worker_pids()
        status = self.stack.custody("status", "--json")
        healthy = {p["name"]: p["healthy"] for p in json.loads(status.stdout)["processes"]}
        tracebacks = {n: "Traceback" in self.stack.log(n) for n in WORKERS}
        restarts = sum(now[n] != self.pids[n] for n in now)
        ok = restarts == 0 and all(healthy.values()) and not any(tracebacks.values())
        return ok, {"worker_restarts": restarts, "healthy": healthy, "tracebacks": tracebacks}


@contextlib.contextmanager
def watched(home: Path) -> Iterator[WatchedStack]:
    """A :class:`WatchedStack` up in ``home``, its workers' pids noted; down afterwards."""
    stack = Stack(home)
    running = WatchedStack(stack)
    stack.env["CUSTODY_GRACE_SECONDS"] = str(running.grace)
    stack.env["CUSTODY_ALLOWED_LATENESS_SECONDS"] = str(running.lateness)
    try:
        stack.up()
        running.pids = running.worker_pids()
        yield running
    finally:
        stack.custody("down")
