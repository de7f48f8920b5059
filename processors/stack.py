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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from processors import broker
from producers.admin import ensure_topics
from producers.settings import Settings

BROKER = "broker"


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
    return bool(cmdline) and cmdline[0].decode(errors="replace") == record["argv"][0]


def status(settings: Settings) -> list[ProcessStatus]:
    """The state of every process of the local stack."""
    record = _read_record(settings, BROKER)
    running = record is not None and _alive(record)
    return [
        ProcessStatus(
            name=BROKER,
            pid=int(record["pid"]) if record and running else None,
            running=running,
            healthy=running and broker.broker_answers(settings.kafka_admin()),
            address=settings.kafka_bootstrap,
            log=str(_log_path(settings, BROKER)),
        )
    ]


def up(settings: Settings, timeout: float = 30.0) -> list[ProcessStatus]:
    """Start whatever part of the stack is not running, then create the topics."""
    record = _read_record(settings, BROKER)
    if record is None or not _alive(record):
        host, port = broker.split_bootstrap(settings.kafka_bootstrap)
        log_path = _log_path(settings, BROKER)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        _run_dir(settings).mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = broker.start_broker(host, port, log=log, detach=True)
        _record_path(settings, BROKER).write_text(
            json.dumps(
                {
                    "pid": process.pid,
                    "argv": process.args,
                    "address": settings.kafka_bootstrap,
                    "started_at": time.time(),
                }
            )
        )
        try:
            broker.wait_until_ready(settings.kafka_admin(), timeout)
        except broker.BrokerError:
            _terminate(process.pid, timeout=5)
            _record_path(settings, BROKER).unlink(missing_ok=True)
            raise
    ensure_topics(
        settings.kafka_admin(), settings.event_topic_partitions(), settings.topic_replication
    )
    return status(settings)


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
    """Stop every running process of the stack; returns the names stopped."""
    stopped = []
    record = _read_record(settings, BROKER)
    if record is not None:
        if _alive(record):
            _terminate(int(record["pid"]), timeout)
            stopped.append(BROKER)
        _record_path(settings, BROKER).unlink(missing_ok=True)
    return stopped
