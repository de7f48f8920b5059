"""Two ways to reach ClickHouse behind one interface: embedded chdb and a server.

Both speak the same SQL. Query parameters are written ClickHouse-style, ``{name:Type}``;
rows come back as dicts of JSON-ready values (timestamps as ISO-8601 UTC strings ending in
``Z``), so everything above this module is backend-agnostic.

Failures are split the way the sink must treat them: :class:`StorageUnavailable` (the
server cannot be reached: retry later, keep the batch) and :class:`StorageRejected` (the
data or the statement is wrong: retrying will not help).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

from processors.processes import running
from processors.storage.target import ChdbTarget, ServerTarget, Target

Row = dict[str, Any]
Values = Mapping[str, Any]
"""Values by name: a query's parameters, or ClickHouse settings."""

_PARAM = re.compile(r"\{(\w+):[^{}]+\}")


class StorageError(RuntimeError):
    """ClickHouse did not do what was asked."""


class StorageUnavailable(StorageError):
    """ClickHouse cannot be reached right now; the same request may succeed later."""


class StorageRejected(StorageError):
    """ClickHouse refused the statement or the data; repeating it will fail again.

    ``data_error`` tells a record ClickHouse cannot read (isolate it, dead-letter it) from
    a refusal of the statement itself (a missing table, a permission: fix and retry).
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code if code is not None else _code_in(message)

    @property
    def data_error(self) -> bool:
        return self.code in _DATA_ERROR_CODES


# ClickHouse error codes that blame the data being inserted, not the statement: cannot
# parse, incorrect data, type mismatch, too large; 395 is a throwIf() in a view's check,
# 469 a table's CHECK constraint (0005: event times ClickHouse can keep);
# 748 (AVRO_EXCEPTION) and 1001 (a std::exception) are how the Avro reader reports a body
# it cannot read.
_DATA_ERROR_CODES = frozenset(
    {6, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 131, 395, 469, 748, 1001}
)
_CODE = re.compile(r"Code: (\d+)")


def _code_in(message: str) -> int | None:
    match = _CODE.search(message)
    return int(match[1]) if match else None


class Backend(Protocol):
    """A connection to one ClickHouse database (the migrations' tables live there)."""

    @property
    def target(self) -> Target:
        """Where this backend is connected."""

    @property
    def parses_avro(self) -> bool:
        """Whether :meth:`insert_avro` is available (inserting raw Avro container bytes)."""

    def execute(self, sql: str, params: Values | None = None) -> None:
        """Run a statement that returns nothing (DDL, INSERT ... SELECT)."""

    def select(
        self, sql: str, params: Values | None = None, settings: Values | None = None
    ) -> list[Row]:
        """Run a query and return its rows as dicts of JSON-ready values."""

    def insert_avro(self, table: str, container: bytes) -> None:
        """Insert an Avro object container (ClickHouse parses it)."""

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert Python rows (datetimes as aware datetimes) into ``columns`` of ``table``."""

    def version(self) -> str:
        """The server's ``version()``."""

    def close(self) -> None:
        """Release the connection (and, for chdb, the data directory)."""


def iso(value: datetime) -> str:
    """A timestamp as the ISO-8601 UTC string every row and every ``--json`` output uses."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_SPOOL_PREFIX = "custody-spool-"


def _spool_directory() -> Path:
    """A private directory (mode 0700) for insert files, in memory where the machine has
    it, named after this process; spools left by processes that no longer run go first."""
    shm = Path("/dev/shm")  # noqa: S108 (mkdtemp below makes a private 0700 directory in it)
    parent = shm if shm.is_dir() else Path(tempfile.gettempdir())
    sweep_spools(parent)
    return Path(tempfile.mkdtemp(prefix=f"{_SPOOL_PREFIX}{os.getpid()}-", dir=parent))


def sweep_spools(parent: Path) -> list[Path]:
    """Remove the spool directories under ``parent`` whose process is gone; the removed.

    A process killed with SIGKILL cannot clean up, and its spool may hold a whole batch
    (up to ``CUSTODY_INGEST_BATCH_BYTES``) in memory until the machine restarts. Only
    where /proc tells which processes run; another user's directories stay (no right).
    """
    if not Path("/proc/self").exists():
        return []
    removed = []
    for path in parent.glob(f"{_SPOOL_PREFIX}*"):
        pid = path.name.removeprefix(_SPOOL_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed


class ChdbBackend:
    """The embedded engine. One per process: chdb lets one process open a data directory.

    A lock serialises calls, because the ingest loop and the query API share the session.
    """

    parses_avro = True

    def __init__(self, target: ChdbTarget) -> None:
        from chdb import session  # imported here: loading the engine takes a while

        self.target = target
        target.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._spool = _spool_directory()
        self._spool_file = self._spool / "insert"
        try:
            self._session = session.Session(str(target.path))
        except Exception as exc:
            shutil.rmtree(self._spool, ignore_errors=True)
            raise StorageUnavailable(
                f"cannot open {target.describe()}: {exc} "
                "(is another process, such as `custody ingest`, holding it?)"
            ) from None
        self._run(f"CREATE DATABASE IF NOT EXISTS {target.database}")
        self._run(f"USE {target.database}")

    def _run(self, sql: str, params: Values | None = None, fmt: str = "TSV") -> Any:
        with self._lock:
            try:
                return self._session.query(sql, fmt, params=dict(params) if params else None)
            except RuntimeError as exc:
                raise StorageRejected(str(exc)) from None

    def execute(self, sql: str, params: Values | None = None) -> None:
        self._run(sql, params)

    def select(
        self, sql: str, params: Values | None = None, settings: Values | None = None
    ) -> list[Row]:
        output = {
            "date_time_output_format": "iso",
            "output_format_json_quote_64bit_integers": 0,
            **(settings or {}),
        }
        clause = " SETTINGS " + ", ".join(
            f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {int(value)}"
            for key, value in output.items()
        )
        result = self._run(sql + clause, params, fmt="JSONEachRow")
        return [json.loads(line) for line in result.bytes().splitlines() if line]

    def insert_avro(self, table: str, container: bytes) -> None:
        # A table holds the columns of the newest schema version; a record written with
        # an older one lacks the fields added since (schema v2's body_credential_renewed),
        # which read as their defaults (NULL) instead of failing the whole insert.
        missing = "input_format_avro_allow_missing_fields = 1"
        self._insert_file(f"INSERT INTO {table}", "Avro", container, missing)

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        # Only the server path inserts Python rows in production; on chdb this serves the
        # tests that compare both paths. JSONEachRow with 'seconds.micros' strings, because
        # chdb reads integer micros as seconds there.
        lines = []
        for row in rows:
            record = {
                name: (f"{value.timestamp():.6f}" if isinstance(value, datetime) else value)
                for name, value in zip(columns, row, strict=True)
            }
            lines.append(json.dumps(record))
        self._insert_file(
            f"INSERT INTO {table} ({', '.join(columns)})",
            "JSONEachRow",
            "\n".join(lines).encode(),
        )

    def _insert_file(self, insert: str, fmt: str, data: bytes, settings: str = "") -> None:
        # Through a file, not chdb's streaming insert: that one drops a row whose
        # materialized view fails (e.g. the event_id check of events_avro_mv) without an
        # error, while INSERT ... SELECT reports it. The file lives in memory (/dev/shm).
        with self._lock:
            try:
                self._spool_file.write_bytes(data)
            except OSError as exc:
                raise StorageUnavailable(f"cannot spool the insert: {exc}") from None
            try:
                # The spool's own path and a format name: no input reaches this statement.
                select = f"SELECT * FROM file('{self._spool_file}', '{fmt}')"  # noqa: S608
                if settings:
                    select += f" SETTINGS {settings}"
                self._session.query(f"{insert} {select}")
            except RuntimeError as exc:
                raise StorageRejected(str(exc)) from None
            finally:
                self._spool_file.unlink(missing_ok=True)

    def version(self) -> str:
        return str(self.select("SELECT version() AS v")[0]["v"])

    def close(self) -> None:
        with self._lock:
            self._session.close()
            shutil.rmtree(self._spool, ignore_errors=True)


class ServerBackend:
    """A ClickHouse server through clickhouse-driver (native protocol).

    The driver reconnects on the next call after a failure, so one client lives as long as
    the process; a lock serialises calls because a connection is not shared across threads.
    """

    parses_avro = False

    def __init__(self, target: ServerTarget, database: str | None = None) -> None:
        from clickhouse_driver import Client

        self.target = target
        self._lock = threading.Lock()
        self._client = Client(
            target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            database=database or target.database,
            connect_timeout=5,
            send_receive_timeout=30,
            settings={"use_numpy": False},
        )

    def _call(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        from clickhouse_driver import errors

        with self._lock:
            try:
                return self._client.execute(sql, *args, **kwargs)
            except errors.ServerException as exc:
                message = f"{self.target.describe()}: {exc.message}"
                raise StorageRejected(message, exc.code) from None
            except (errors.TypeMismatchError, TypeError, ValueError) as exc:
                # The driver serialises columns itself, so a value the column cannot hold
                # fails here, before anything is sent.
                raise StorageRejected(f"{type(exc).__name__}: {exc}", 53) from None
            except (errors.Error, OSError, EOFError) as exc:
                self._client.disconnect()
                raise StorageUnavailable(
                    f"{self.target.describe()}: {type(exc).__name__}: {exc}"
                ) from None

    def execute(self, sql: str, params: Values | None = None) -> None:
        self._call(_driver_sql(sql), dict(params or {}))

    def select(
        self, sql: str, params: Values | None = None, settings: Values | None = None
    ) -> list[Row]:
        rows, columns = self._call(
            _driver_sql(sql),
            dict(params or {}),
            with_column_types=True,
            settings=dict(settings or {}),
        )
        names = [name for name, _ in columns]
        return [dict(zip(names, map(_json_ready, row), strict=True)) for row in rows]

    def insert_avro(self, table: str, container: bytes) -> None:
        raise StorageRejected("the native protocol carries blocks, not Avro: use insert_rows")

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if rows:
            self._call(f"INSERT INTO {table} ({', '.join(columns)}) VALUES", list(rows))

    def version(self) -> str:
        return str(self.select("SELECT version() AS v")[0]["v"])

    def close(self) -> None:
        with self._lock:
            self._client.disconnect()


def _driver_sql(sql: str) -> str:
    """ClickHouse-style ``{name:Type}`` placeholders as the driver's ``%(name)s``; a literal
    ``%`` (``LIKE '%x%'``) doubled, since the driver always %-formats."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


def _json_ready(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    return value


def open_backend(target: Target, database: str | None = None) -> Backend:
    """Connect to ``target``; ``database`` overrides the target's (migrations start elsewhere)."""
    if isinstance(target, ChdbTarget):
        return ChdbBackend(target)
    return ServerBackend(target, database)
