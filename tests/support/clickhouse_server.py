"""A private ClickHouse server (Debian's ``clickhouse-server`` 18.16) for integration tests,
and the reduced tables of the production schema that server can hold.

The server runs as a plain child process, not as the packaged service: everything it writes
(config, data, tmp, logs) lives under one directory the test owns, it listens only on a free
loopback port for the native protocol, and the ``default`` user has no password. Install with
``apt-get install -y --no-install-recommends clickhouse-server``.

The production schema (``infra/clickhouse/*.sql``) needs 24.3 (``custody migrate`` refuses
older servers). :func:`reduced_table_statements` derives from it the tables 18.16 accepts:

- ``DateTime64(p, 'UTC')`` becomes ``DateTime`` (second precision; the server zone is pinned
  to UTC) and ``now64(p)`` ``now()``; ``LowCardinality(T)`` becomes ``T``;
- ``Map(String, String)`` columns (attributes, context) are dropped, and so are TTLs,
  data-skipping indexes and settings;
- only the tables ingest writes rows to are kept, no ``*_avro`` tables or views (the native
  protocol carries rows: the sink decodes records in Python and writes only the columns a
  table has, skipping those with a default expression, such as ingested_at).

Every column kept has its production name; engines and sorting keys are the production ones,
so a replayed record is the same row and FINAL reads it once.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from xml.sax.saxutils import escape

from clickhouse_driver import Client

from processors.storage.migrations import shipped
from tests.support.broker import free_port

# Debian ships the server in /usr/sbin, which is not on a non-root PATH; upstream packages
# put it (a symlink to the multi-call ``clickhouse`` binary) in /usr/bin.
_CANDIDATES = (Path("/usr/sbin/clickhouse-server"), Path("/usr/bin/clickhouse-server"))

_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>{log_dir}/server.log</log>
        <errorlog>{log_dir}/server.err.log</errorlog>
        <size>100M</size>
        <count>1</count>
    </logger>
    <!-- Only the native port: no http_port / interserver_http_port means nothing else binds. -->
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <path>{data_dir}/</path>
    <tmp_path>{tmp_dir}/</tmp_path>
    <user_files_path>{user_files_dir}/</user_files_path>
    <format_schema_path>{format_schema_dir}/</format_schema_path>
    <users_config>{users_config}</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <!-- DateTime values are rendered in the server zone; pin it so results do not depend on
         the CI machine's /etc/localtime. -->
    <timezone>UTC</timezone>
    <!-- The packaged defaults (5 GiB / 8 GiB) are only reserved on demand, but several test
         servers may run at once, so keep the ceilings modest. -->
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
</yandex>
"""

_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <!-- An idle native connection is only checked for shutdown every poll_interval
                 seconds (default 10), so a test holding a Client open would make each
                 SIGTERM stop take ~10 s. -->
            <poll_interval>1</poll_interval>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default/>
    </quotas>
</yandex>
"""


def server_binary() -> Path | None:
    """The ``clickhouse-server`` executable, or None when the package is not installed."""
    found = shutil.which("clickhouse-server")
    if found is not None:
        return Path(found)
    for candidate in _CANDIDATES:
        if candidate.is_file():
            return candidate
    return None


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


class ClickHouseServer:
    """A ClickHouse server process confined to ``root``.

    ``root`` holds ``config.xml``, ``users.xml``, ``data/``, ``tmp/``, ``user_files/`` and
    ``log/``. The port and data directory survive ``stop()``/``kill()``, so ``restart()`` (or
    ``start()`` after either) brings back the same server with the same tables.
    """

    def __init__(
        self,
        root: Path,
        *,
        binary: Path | None = None,
        start_timeout: float = 30.0,
        users_xml: str | None = None,
    ) -> None:
        """``users_xml`` replaces the users file (default: a passwordless ``default`` user)."""
        found = binary if binary is not None else server_binary()
        if found is None:
            raise FileNotFoundError("clickhouse-server is not installed")
        self.binary = found
        self.root = root
        self.start_timeout = start_timeout
        self.users_xml = users_xml if users_xml is not None else _USERS
        self.host = "127.0.0.1"
        self.tcp_port = free_port()
        self.data_dir = root / "data"
        self.log_dir = root / "log"
        self.config_path = root / "config.xml"
        # Where the process's own stdout/stderr go: startup failures (a bad config, a taken
        # port) are often only reported there, before the logger is configured.
        self.console_log = self.log_dir / "console.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._ever_started = False
        self._log_offsets: dict[Path, int] = {}

    @property
    def url(self) -> str:
        """A ``clickhouse://`` URL for the default user and database."""
        return f"clickhouse://default:@{self.host}:{self.tcp_port}/default"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive (not necessarily ready)."""
        return self._process is not None and self._process.poll() is None

    def client(self, **kwargs: Any) -> Client:
        """A new clickhouse-driver client for this server; ``kwargs`` go to ``Client``."""
        return Client(self.host, port=self.tcp_port, **kwargs)

    def execute(self, sql: str, **client_options: Any) -> list[tuple[Any, ...]]:
        """Run ``sql`` on a new connection (``client_options`` go to ``Client``, e.g.
        ``database``); its rows."""
        client = self.client(**client_options)
        try:
            rows: list[tuple[Any, ...]] = client.execute(sql)
        finally:
            client.disconnect()
        return rows

    def version(self) -> str:
        """What the server reports as ``SELECT version()``, e.g. ``18.16.1``."""
        return str(self.execute("SELECT version()")[0][0])

    def start(self) -> None:
        """Launch the server and return once it answers ``SELECT 1`` on the native port.

        Raises ``RuntimeError`` (with the end of its logs) if the process exits or does not
        become ready within ``start_timeout`` seconds.
        """
        if self.running:
            raise RuntimeError("ClickHouse server is already running")
        # The port picked in __init__ is only free until someone else binds it; before the
        # first successful start nothing depends on it yet, so a lost race just re-picks.
        attempts = 1 if self._ever_started else 3
        for attempt in range(attempts):
            try:
                self._launch_and_wait()
            except _PortTaken:
                if attempt == attempts - 1:
                    raise RuntimeError(
                        f"port {self.tcp_port} is in use\n{self._log_tail()}"
                    ) from None
                self.tcp_port = free_port()
            else:
                self._ever_started = True
                return

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down cleanly (SIGTERM), falling back to SIGKILL after ``timeout``.

        On SIGTERM 18.16 lets queries in flight run to completion rather than cancelling
        them, so a runaway query would otherwise hold ``stop()`` indefinitely.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would, and reap it."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._process = None

    def restart(self) -> None:
        """Stop (cleanly) and start again on the same port with the same data."""
        self.stop()
        self.start()

    def __enter__(self) -> ClickHouseServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_config(self) -> None:
        dirs = {
            "data_dir": self.data_dir,
            "tmp_dir": self.root / "tmp",
            "user_files_dir": self.root / "user_files",
            "format_schema_dir": self.root / "format_schemas",
            "log_dir": self.log_dir,
        }
        for directory in dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        users_path = self.root / "users.xml"
        users_path.write_text(self.users_xml)
        values = {name: escape(str(path.resolve())) for name, path in dirs.items()}
        self.config_path.write_text(
            _CONFIG.format(
                tcp_port=self.tcp_port,
                users_config=escape(str(users_path.resolve())),
                **values,
            )
        )

    def _launch_and_wait(self) -> None:
        self._write_config()
        # The logs are appended to across restarts; only this launch's lines say why it failed.
        self._log_offsets = {path: _size(path) for path in self._log_files()}
        with self.console_log.open("ab") as console:
            self._process = subprocess.Popen(
                [str(self.binary), f"--config-file={self.config_path.resolve()}"],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        process = self._process
        deadline = time.monotonic() + self.start_timeout
        while True:
            # Checked before probing: if the bind failed, whatever holds the port may accept
            # the probe and stall it until the driver's timeout.
            code = process.poll()
            if code is not None:
                self._process = None
                tail = self._log_tail()
                if "Address already in use" in tail:
                    raise _PortTaken
                raise RuntimeError(f"ClickHouse server exited with status {code}\n{tail}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"ClickHouse server not ready after {self.start_timeout}s\n{self._log_tail()}"
                )
            # Doubles as the pause between polls and as prompt detection of an early exit.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.05)

    def _answers(self) -> bool:
        # A bare connect first: clickhouse-driver logs a warning with a traceback for every
        # refused connection, which would bury the interesting output of a failing test.
        try:
            socket.create_connection((self.host, self.tcp_port), timeout=1).close()
        except OSError:
            return False
        client = self.client(connect_timeout=1, send_receive_timeout=2, sync_request_timeout=1)
        try:
            return bool(client.execute("SELECT 1") == [(1,)])
        except Exception:
            # Reset / EOF / timeout while the server is still coming up: not ready yet.
            return False
        finally:
            client.disconnect()

    def _log_files(self) -> tuple[Path, Path]:
        return self.console_log, self.log_dir / "server.err.log"

    def _log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines each log file gained since the latest launch."""
        parts = []
        for path in self._log_files():
            if not path.exists():
                continue
            with path.open("rb") as log:
                log.seek(self._log_offsets.get(path, 0))
                text = log.read().decode(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts)


class _PortTaken(Exception):
    """The server could not bind its port because another process holds it."""


# ---- the reduced tables ---------------------------------------------------------------------

DATABASE = "custody"
REDUCED_TABLES = ("events", "tasks", "delegations", "credentials", "alerts")
_CREATE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\b")
_DROPPED = re.compile(r"^\s*(INDEX |TTL |SETTINGS |\w+ Map\()")
_REWRITTEN = (
    (re.compile(r"DateTime64\(\d, 'UTC'\)"), "DateTime"),
    (re.compile(r"now64\(\d\)"), "now()"),
    (re.compile(r"LowCardinality\((.*)\)"), r"\1"),
    (re.compile(r"^ENGINE = (\w+)$"), r"ENGINE = \1()"),
)


def _reduced(statement: str) -> str:
    lines = []
    for line in statement.splitlines():
        if _DROPPED.match(line):
            continue
        for pattern, replacement in _REWRITTEN:
            line = pattern.sub(replacement, line)
        lines.append(line)
    # A dropped last column (or index) leaves its predecessor's comma before the ")".
    return re.sub(r",\n\)", "\n)", "\n".join(lines))


def reduced_table_statements() -> list[str]:
    """``CREATE TABLE`` statements for :data:`REDUCED_TABLES` that 18.16 accepts, derived
    from the shipped migrations (see the module docstring)."""
    found = []
    for migration in shipped():
        for statement in migration.statements(retention_days=1):
            code = "\n".join(
                line for line in statement.splitlines() if not line.lstrip().startswith("--")
            )
            create = _CREATE.match(code)
            if create and create[1] in REDUCED_TABLES:
                found.append(_reduced(code))
    return found


def create_reduced_tables(server: ClickHouseServer) -> None:
    """The database :data:`DATABASE` with the reduced tables in it."""
    server.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    for statement in reduced_table_statements():
        server.execute(statement, database=DATABASE)


def custody_url(server: ClickHouseServer) -> str:
    """``CUSTODY_CLICKHOUSE_URL`` for the reduced tables on ``server``."""
    return f"clickhouse://default:@{server.host}:{server.tcp_port}/{DATABASE}"
