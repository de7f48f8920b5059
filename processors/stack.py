"""The local stack (``custody up`` / ``down`` / ``status``), without Docker.

Each process of the stack is started detached, with its PID, command and address in
``.custody/run/<name>.json`` and its output appended to ``.custody/logs/<name>.log``
(moved to ``<name>.log.1`` at a start once it is large): JSON lines, each start's
beginning with a record of the stack's, so a start that failed leaves its reason there,
and ``up``'s error repeats it. ``up`` starts only what is not running, so it is
idempotent. A recorded PID is trusted only while that process still runs the recorded
command, so a reused PID is never killed by mistake.

``up`` waits for a worker as long as its start really takes: while it runs and its log
keeps moving (the correlator logs its phase, and how many changelog records its recovery
has left, as they change), up to a bound (``--timeout``); a worker whose log has not moved
for :data:`START_STALL_SECONDS` is stuck.

``up`` runs ``collect`` (OPA and Vault evidence in; its address under ``address``)
and also ``notify`` when ``CUSTODY_ALERTMANAGER_URL`` is set. Every worker serves
its Prometheus metrics on a port of its own (a free one unless configured), recorded with
it, so ``status`` shows each URL under ``metrics``.

``up --correlators N`` runs N correlator workers in one consumer group, named ``correlate``,
``correlate-2``, ... ``correlate-N``, each with its own log, heartbeat, data directory and
metrics port; the count is kept (``run/stack.json``), so a later ``up`` restarts the same
workers, and a smaller count stops the workers beyond it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from processors import broker
from processors.logs import JsonLines
from processors.serving.reader import running_api
from processors.starting import StackError, Started, wait_until_started
from producers.admin import ensure_topics
from producers.settings import Settings

BROKER = "broker"
CORRELATE = "correlate"
INGEST = "ingest"
NOTIFY = "notify"
COLLECT = "collect"
# Where a correlator serves its metrics unless told otherwise. On the local stack, worker k
# of N gets the port + k - 1 when the variable is set, and a free port otherwise.
METRICS_ADDRESS = "127.0.0.1:9464"
METRICS_ADDRESS_VARIABLE = "CUSTODY_CORRELATOR_METRICS_ADDRESS"
INGEST_METRICS_VARIABLE = "CUSTODY_INGEST_METRICS_ADDRESS"
NOTIFY_METRICS_VARIABLE = "CUSTODY_NOTIFY_METRICS_ADDRESS"
COLLECT_METRICS_VARIABLE = "CUSTODY_COLLECT_METRICS_ADDRESS"
SERVE_METRICS_VARIABLE = "CUSTODY_SERVE_METRICS_ADDRESS"
_CORRELATOR_NAME = re.compile(rf"{CORRELATE}(?:-([0-9]+))?")
# The longest `custody up` waits for the workers to start, however they progress.
START_TIMEOUT_SECONDS = 600.0
# A log larger than this when its process starts is moved aside (one older log is kept).
_ROTATE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ProcessStatus:
    """What ``custody status`` reports for one process."""

    name: str
    pid: int | None
    running: bool
    healthy: bool
    address: str | None
    log: str
    metrics: str | None = None
    """The URL of its Prometheus metrics, while it runs."""
    state: dict[str, Any] | None = None
    """What the process says of its work (notify: posted, waiting for Alertmanager...)."""

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
    cmdline = _command_line(int(record["pid"]))
    if cmdline is None:
        return False
    # A script runs as "<interpreter> <script> ...": the command is then the words after
    # the first. The line ends with a NUL, hence the empty last word.
    words = [word.decode(errors="replace") for word in cmdline.split(b"\0")[:-1]]
    argv = list(record["argv"])
    return bool(argv) and words[-len(argv) :] == argv


def _command_line(pid: int, wait: float = 1.0) -> bytes | None:
    """The command line of process ``pid``; None if it does not run. A process that has
    just started (its exec under way) shows an empty one for a moment, so an empty one is
    read again, for up to ``wait`` seconds, unless the process is a zombie (killed and not
    reaped), whose command line stays empty."""
    deadline = time.monotonic() + wait
    while True:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            # The state is the first field after the command name, which ends with ")".
            state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            return None
        if cmdline:
            return cmdline
        if state == b"Z" or time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _custody_command(*args: str) -> list[str]:
    """The installed ``custody`` command next to this interpreter."""
    return [str(Path(sys.executable).parent / "custody"), *args]


def correlator_names(count: int) -> list[str]:
    """The names of ``count`` correlator workers: ``correlate``, ``correlate-2``, ..."""
    return [CORRELATE] + [f"{CORRELATE}-{index}" for index in range(2, count + 1)]


def _correlator_index(name: str) -> int | None:
    """1 for ``correlate``, k for ``correlate-k``; None for another name."""
    match = _CORRELATOR_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1) or 1)


def _recorded_correlators(settings: Settings) -> list[str]:
    """The correlators with a run record (running or not), in index order."""
    run_dir = _run_dir(settings)
    names = [path.stem for path in run_dir.glob(f"{CORRELATE}*.json")] if run_dir.exists() else []
    indexed = [(index, name) for name in names if (index := _correlator_index(name)) is not None]
    return [name for _, name in sorted(indexed)]


def correlator_count(settings: Settings) -> int:
    """How many correlators the stack runs: the count ``up`` was last given (1 if never)."""
    try:
        recorded = json.loads(_record_path(settings, "stack").read_text())
        return max(1, int(recorded["correlators"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 1


def _processes(settings: Settings) -> list[str]:
    """The stack's processes in start order: the broker, every correlator (those to run
    and any other still recorded), ingest, collect, and notify when it is configured or
    recorded."""
    wanted = correlator_names(correlator_count(settings))
    correlators = sorted(
        set(wanted) | set(_recorded_correlators(settings)),
        key=lambda name: _correlator_index(name) or 0,
    )
    notify = [NOTIFY] if _notifies(settings) or _read_record(settings, NOTIFY) else []
    return [BROKER, *correlators, INGEST, COLLECT, *notify]


def _notifies(settings: Settings) -> bool:
    """Whether the stack runs notify: an Alertmanager is configured."""
    return settings.alertmanager_url is not None


def status(settings: Settings) -> list[ProcessStatus]:
    """The state of every process of the local stack."""
    statuses = []
    for name in _processes(settings):
        record = _read_record(settings, name)
        running = record is not None and _alive(record)
        metrics = None
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
            # A correlator (or notify) is healthy while its heartbeat is fresh.
            healthy, address = running and _heartbeat_fresh(settings, name), None
        if name == NOTIFY and running:
            state = _read_state(settings, name)
            healthy = healthy and not (state or {}).get("waiting_for_alertmanager", False)
        elif name == COLLECT and running:
            state = _read_state(settings, name)
            address = (state or {}).get("address")
        else:
            state = None
        if name != BROKER and record and running:
            metrics = record.get("metrics")
        statuses.append(
            ProcessStatus(
                name=name,
                pid=int(record["pid"]) if record and running else None,
                running=running,
                healthy=healthy,
                address=address,
                log=str(_log_path(settings, name)),
                metrics=metrics,
                state=state,
            )
        )
    return statuses


def state_path(settings: Settings, name: str) -> Path:
    """The file where a worker (notify) keeps what ``status`` shows of its work."""
    return _run_dir(settings) / f"{name}.state.json"


def _read_state(settings: Settings, name: str) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(state_path(settings, name).read_text())
    except (OSError, ValueError):
        return None
    return state


def heartbeat_path(settings: Settings, name: str = CORRELATE) -> Path:
    """The file a worker (correlate, ingest) touches every second while it runs."""
    return _run_dir(settings) / f"{name}.heartbeat"


def data_path(settings: Settings, name: str = CORRELATE) -> Path:
    """The directory of a correlator worker's local files (faust's data directory), one
    per worker, since several may run on one host."""
    return settings.home / "data" / name


def _api_answers(address: str) -> bool:
    """The API answers, and its ingest (if any) is not stuck waiting for ClickHouse."""
    try:
        # The http:// address the stack's own query API recorded.
        with urllib.request.urlopen(f"{address}/health", timeout=2) as response:  # noqa: S310
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


def _stack_record(message: str) -> bytes:
    """A JSON line of the stack's own, in the form the processes log theirs."""
    record = logging.makeLogRecord(
        {"name": "custody.stack", "levelno": logging.INFO, "levelname": "INFO", "msg": message}
    )
    return (JsonLines().format(record) + "\n").encode()


def _rotate(log_path: Path) -> None:
    try:
        large = log_path.stat().st_size > _ROTATE_BYTES
    except OSError:
        return
    if large:
        log_path.replace(log_path.with_name(log_path.name + ".1"))


def start_process(
    settings: Settings, name: str, argv: list[str], **recorded: str | None
) -> Started:
    """Start ``argv`` detached as the stack's process ``name``, its output appended to
    its log after a record naming the start, and record it (with ``recorded``)."""
    log_path = _log_path(settings, name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _run_dir(settings).mkdir(parents=True, exist_ok=True)
    _rotate(log_path)
    with log_path.open("ab") as log:
        offset = log.tell()
        log.write(_stack_record(f"starting {name}: {' '.join(argv)}"))
        log.flush()
        # The stack's own commands (custody, the broker), never user input.
        process = subprocess.Popen(  # noqa: S603
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **_child_environment(settings)},
        )
    _record_path(settings, name).write_text(
        json.dumps({"pid": process.pid, "argv": argv, "started_at": time.time(), **recorded})
    )
    return Started(name, process, log_path, offset)


def _child_environment(settings: Settings) -> dict[str, str]:
    """What the stack's processes must agree on, whatever the caller's flags were."""
    return {
        "CUSTODY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CUSTODY_KAFKA_PROFILE": settings.kafka_profile,
        "CUSTODY_EVENT_PARTITIONS": str(settings.event_partitions),
        "CUSTODY_HOME": str(settings.home),
    }


def _broker_command(host: str, port: int) -> list[str]:
    """The broker, through the relay that turns its plain-text output into JSON lines."""
    relay = [sys.executable, "-m", "processors.log_relay", BROKER, "--"]
    return relay + broker.broker_command(host, port)


def up(
    settings: Settings,
    timeout: float = 30.0,
    start_timeout: float = START_TIMEOUT_SECONDS,
    progress: Callable[[str], None] | None = None,
    correlators: int | None = None,
) -> list[ProcessStatus]:
    """Start whatever part of the stack is not running, then create the topics. Waits
    ``timeout`` for the broker, and for the workers as long as they progress, up to
    ``start_timeout``; ``progress`` is told, while it waits, what the workers' logs say last.
    ``correlators``: how many correlator workers to run from now on (default: as many as
    the last ``up`` was given, at first 1); those beyond it are stopped."""
    if not _running(settings, BROKER):
        host, port = broker.split_bootstrap(settings.kafka_bootstrap)
        broker.refuse_taken_port(host, port)
        started = start_process(settings, BROKER, _broker_command(host, port))
        try:
            broker.wait_until_ready(settings.kafka_admin(), timeout)
        except broker.BrokerError as exc:
            _terminate(started.process.pid, timeout=5)
            _record_path(settings, BROKER).unlink(missing_ok=True)
            raise broker.BrokerError(f"{exc}: {started.failure()} (log: {started.log})") from None
    ensure_topics(
        settings.kafka_admin(), settings.event_topic_partitions(), settings.topic_replication
    )
    if correlators is not None:
        _record_path(settings, "stack").write_text(json.dumps({"correlators": correlators}))
    wanted = correlator_names(correlator_count(settings))
    for name in _recorded_correlators(settings):
        if name not in wanted:
            _stop(settings, name, timeout=10.0)
    if not _notifies(settings):
        _stop(settings, NOTIFY, timeout=10.0)
    # Every worker starts before any is waited for: their group joins overlap.
    others = [INGEST, COLLECT, NOTIFY] if _notifies(settings) else [INGEST, COLLECT]
    workers = [
        _start_worker(settings, name, index)
        for index, name in enumerate(wanted, start=1)
        if not _running(settings, name)
    ] + [_start_worker(settings, name, 1) for name in others if not _running(settings, name)]
    wait_until_started(
        workers,
        lambda name: _worker_ready(settings, name),
        start_timeout,
        progress=progress,
    )
    return status(settings)


def _running(settings: Settings, name: str) -> bool:
    record = _read_record(settings, name)
    return record is not None and _alive(record)


def _start_worker(settings: Settings, name: str, index: int) -> Started:
    """Start worker ``name`` with a metrics port of its own (the ``index``-th correlator:
    the configured port + ``index`` - 1)."""
    heartbeat_path(settings, name).unlink(missing_ok=True)
    if name == INGEST:
        # The local stack always serves queries, whichever ClickHouse it writes to.
        host, port = split_address(metrics_address(1, INGEST_METRICS_VARIABLE))
        argv = _custody_command(INGEST, "--serve")
    elif name in (NOTIFY, COLLECT):
        state_path(settings, name).unlink(missing_ok=True)
        variable = NOTIFY_METRICS_VARIABLE if name == NOTIFY else COLLECT_METRICS_VARIABLE
        host, port = split_address(metrics_address(1, variable))
        argv = _custody_command(name)
    else:
        host, port = split_address(metrics_address(index))
        argv = _custody_command(CORRELATE, "--name", name)
    argv += ["--metrics-address", join_address(host, port)]
    return start_process(settings, name, argv, metrics=metrics_url(host, port))


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets) as a host and a port; ``ValueError`` if it
    is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65_535:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def metrics_url(host: str, port: int) -> str:
    """The URL of the metrics a correlator serves on ``host``:``port``."""
    return f"http://{join_address(host, port)}/metrics"


def metrics_address(index: int, variable: str = METRICS_ADDRESS_VARIABLE) -> str:
    """Where a worker of the local stack serves its metrics (the ``index``-th correlator,
    from 1, by default): the port ``variable`` names + index - 1 when it names one, else a
    free port (several stacks may run on one host, as the tests do)."""
    configured = os.environ.get(variable)
    try:
        host, port = split_address(configured or METRICS_ADDRESS)
    except ValueError as exc:
        raise StackError(f"{variable}: {exc}") from None
    if configured and port:
        return join_address(host, port + index - 1)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return join_address(host, sock.getsockname()[1])


def _worker_ready(settings: Settings, name: str) -> bool:
    """A worker has joined its group and beats (ingest: and serves queries)."""
    return _heartbeat_fresh(settings, name) and (
        name != INGEST or running_api(settings) is not None
    )


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


def _stop(settings: Settings, name: str, timeout: float) -> bool:
    """Stop process ``name`` if it runs, and forget its record; whether it ran."""
    record = _read_record(settings, name)
    if record is None:
        return False
    alive = _alive(record)
    if alive:
        _terminate(int(record["pid"]), timeout)
    _record_path(settings, name).unlink(missing_ok=True)
    return alive


def down(settings: Settings, timeout: float = 10.0) -> list[str]:
    """Stop every running process of the stack, workers before the broker; returns the
    names stopped. The correlator count stays for the next ``up``."""
    return [name for name in reversed(_processes(settings)) if _stop(settings, name, timeout)]
