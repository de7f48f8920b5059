"""The local stack (``custody up`` / ``down`` / ``status``), without Docker.

Each process of the stack is started detached, with its log in ``.custody/logs/<name>.log``
and its PID, command and address in ``.custody/run/<name>.json``. ``up`` starts only what
is not running, so it is idempotent. A recorded PID is trusted only while that process
still runs the recorded command, so a reused PID is never killed by mistake.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from processors import broker
from processors.serving.reader import running_api
from producers.admin import ensure_topics
from producers.settings import Settings

BROKER = "broker"
CORRELATE = "correlate"
INGEST = "ingest"
# In start order.
PROCESSES = (BROKER, CORRELATE, INGEST)


class StackError(RuntimeError):
    """A process of the local stack did not start."""


@dataclass(frozen=True)
class ProcessStatus:
    """What ``custody status`` reports for one process."""

    name: str
    pid: int | None
    running: bool
    healthy: bool
    address: str | None
    log: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run_dir(settings: Settings) -> Path:
    return settings.home / "run"


def _log_path(settings: Settings, name: str) -> Path:
    return settings.home / "logs" / f"{name}.log"


def _record_path(settings: Settings, name: str) -> Path:
    return _run_dir(settings) / f"{name}.json"


def _read_record(settings: Settings, name: str) -> dict[str, Any] | None:
    path = _record_path(settings, name)
    if not path.exists():
        return None
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record


def _alive(record: dict[str, Any]) -> bool:
    """Whether the recorded process still runs, and still runs the recorded command."""
    pid = int(record["pid"])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # A script runs as "<interpreter> <script> ...": its path is then the second word.
    head = [word.decode(errors="replace") for word in cmdline[:2]]
    return record["argv"][0] in head


def _custody_command(*args: str) -> list[str]:
    """The installed ``custody`` command next to this interpreter."""
    return [str(Path(sys.executable).parent / "custody"), *args]


def status(settings: Settings) -> list[ProcessStatus]:
    """The state of every process of the local stack."""
    statuses = []
    for name in PROCESSES:
        record = _read_record(settings, name)
        running = record is not None and _alive(record)
        if name == BROKER:
            healthy = running and broker.broker_answers(settings.kafka_admin())
            address: str | None = settings.kafka_bootstrap
        elif name == INGEST:
            # ingest+serve: its loop beats, and its query API answers.
            address = running_api(settings) if running else None
            healthy = (
                running
                and _heartbeat_fresh(settings, name)
                and address is not None
                and _api_answers(address)
            )
        else:
            # A worker has no port to ask: it is healthy while its heartbeat is fresh.
            healthy, address = running and _heartbeat_fresh(settings, name), None
        statuses.append(
            ProcessStatus(
                name=name,
                pid=int(record["pid"]) if record and running else None,
                running=running,
                healthy=healthy,
                address=address,
                log=str(_log_path(settings, name)),
            )
        )
    return statuses


def heartbeat_path(settings: Settings, name: str = CORRELATE) -> Path:
    """The file a worker (correlate, ingest) touches every second while it runs."""
    return _run_dir(settings) / f"{name}.heartbeat"


def _api_answers(address: str) -> bool:
    """The API answers, and its ingest (if any) is not stuck waiting for ClickHouse."""
    try:
        with urllib.request.urlopen(f"{address}/health", timeout=2) as response:
            health = json.loads(response.read())
    except (OSError, ValueError):
        return False
    ingest = health.get("ingest") or {}
    return bool(health.get("status") == "ok" and not ingest.get("waiting_for_clickhouse"))


def _heartbeat_fresh(settings: Settings, name: str, max_age: float = 10.0) -> bool:
    try:
        age = time.time() - heartbeat_path(settings, name).stat().st_mtime
    except OSError:
        return False
    return age <= max_age


def _start(settings: Settings, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    log_path = _log_path(settings, name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _run_dir(settings).mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **_child_environment(settings)},
        )
    _record_path(settings, name).write_text(
        json.dumps({"pid": process.pid, "argv": argv, "started_at": time.time()})
    )
    return process


def _child_environment(settings: Settings) -> dict[str, str]:
    """What the stack's processes must agree on, whatever the caller's flags were."""
    return {
        "CUSTODY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CUSTODY_KAFKA_PROFILE": settings.kafka_profile,
        "CUSTODY_EVENT_PARTITIONS": str(settings.event_partitions),
        "CUSTODY_HOME": str(settings.home),
    }


def up(settings: Settings, timeout: float = 30.0) -> list[ProcessStatus]:
    """Start whatever part of the stack is not running, then create the topics."""
    if not _running(settings, BROKER):
        host, port = broker.split_bootstrap(settings.kafka_bootstrap)
        broker.refuse_taken_port(host, port)
        pid = _start(settings, BROKER, broker.broker_command(host, port)).pid
        try:
            broker.wait_until_ready(settings.kafka_admin(), timeout)
        except broker.BrokerError:
            _terminate(pid, timeout=5)
            _record_path(settings, BROKER).unlink(missing_ok=True)
            raise
    ensure_topics(
        settings.kafka_admin(), settings.event_topic_partitions(), settings.topic_replication
    )
    # Both workers start before either is waited for: their group joins overlap.
    started = {
        name: _start_worker(settings, name)
        for name in (CORRELATE, INGEST)
        if not _running(settings, name)
    }
    for name, worker in started.items():
        _wait_for_heartbeat(settings, name, worker, timeout=60.0)
    return status(settings)


def _running(settings: Settings, name: str) -> bool:
    record = _read_record(settings, name)
    return record is not None and _alive(record)


def _start_worker(settings: Settings, name: str) -> subprocess.Popen[bytes]:
    heartbeat_path(settings, name).unlink(missing_ok=True)
    # The local stack always serves queries, whichever ClickHouse it writes to.
    extra = ("--serve",) if name == INGEST else ()
    return _start(settings, name, _custody_command(name, *extra))


def _wait_for_heartbeat(
    settings: Settings, name: str, worker: subprocess.Popen[bytes], timeout: float
) -> None:
    """Wait until a worker has joined its group and beats (ingest: and serves queries)."""
    deadline = time.monotonic() + timeout
    while not _heartbeat_fresh(settings, name) or (
        name == INGEST and running_api(settings) is None
    ):
        if worker.poll() is not None:
            raise StackError(f"{name} exited at start: see {_log_path(settings, name)}")
        if time.monotonic() >= deadline:
            raise StackError(
                f"{name} not running after {timeout}s: see {_log_path(settings, name)}"
            )
        time.sleep(0.2)


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            # Not our child (started by an earlier command): poll its existence instead.
            finished = 0 if Path(f"/proc/{pid}").exists() else pid
        if finished:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def down(settings: Settings, timeout: float = 10.0) -> list[str]:
    """Stop every running process of the stack, workers before the broker; returns the
    names stopped."""
    stopped = []
    for name in reversed(PROCESSES):
        record = _read_record(settings, name)
        if record is None:
            continue
        if _alive(record):
            _terminate(int(record["pid"]), timeout)
            stopped.append(name)
        _record_path(settings, name).unlink(missing_ok=True)
    return stopped
