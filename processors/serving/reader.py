"""Where the CLI's read commands get rows: the running query API, or ClickHouse itself.

With the embedded engine only one process may open the data directory; while ingest+serve
runs, it owns it, so reads go through its HTTP API (it announces its address in
``.custody/run/serve.json``). When it does not run, the CLI opens the directory itself.
With a ClickHouse server the CLI always queries the server directly.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from processors.processes import running
from processors.serving.readonly import (
    READ_SETTINGS,
    ReadOnlyError,
    outside_reads,
    readonly_sql,
)
from processors.storage.backend import Backend, Row, StorageError, open_backend
from processors.storage.target import ChdbTarget, parse_target
from producers.settings import Settings


class QueryError(RuntimeError):
    """A query failed; the message is ClickHouse's or the API's."""


class Reader(Protocol):
    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        """Run a read-only query (refused otherwise); each key read once (FINAL)."""


class BackendReader:
    """Reads straight from a backend, read-only."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # SQL texts already found to read nothing outside the database: the verdict depends
        # on the text alone (parameters are typed values), and trace repeats its queries.
        self._allowed: dict[str, None] = {}

    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        wrapped = readonly_sql(sql)
        try:
            if wrapped not in self._allowed:
                self._check(wrapped, params)
            return self.backend.select(wrapped, params, READ_SETTINGS)
        except StorageError as exc:
            raise QueryError(str(exc)) from None

    def _check(self, wrapped: str, params: Mapping[str, Any] | None) -> None:
        ast = self.backend.select(f"EXPLAIN AST {wrapped}", params)
        refused = outside_reads("\n".join(str(row["explain"]) for row in ast))
        if refused:
            raise ReadOnlyError(
                f"{', '.join(sorted(refused))}() reads outside the custody database: refused"
            )
        if len(self._allowed) >= 256:
            self._allowed.clear()
        self._allowed[wrapped] = None


class HttpReader:
    """Reads through the query API of a running ingest+serve (or serve) process."""

    def __init__(self, address: str, timeout: float = 60.0) -> None:
        # Only HTTP: urllib would also open file: and other schemes.
        if not address.startswith(("http://", "https://")):
            raise QueryError(f"query API address {address!r} is not an http(s) URL")
        self.address = address.rstrip("/")
        self.timeout = timeout

    def select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        request = urllib.request.Request(  # noqa: S310 (an http(s) address, checked above)
            f"{self.address}/query",
            data=json.dumps({"sql": sql, "params": dict(params or {})}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", str(exc))
            except (ValueError, AttributeError):
                message = str(exc)
            raise QueryError(message) from None
        except (urllib.error.URLError, OSError) as exc:
            raise QueryError(f"query API at {self.address} did not answer: {exc}") from None
        rows: list[Row] = payload["rows"]
        return rows


def serve_record_path(settings: Settings) -> Path:
    """Where a running query API writes its address and PID."""
    return settings.home / "run" / "serve.json"


def running_api(settings: Settings) -> str | None:
    """The address of the query API if one runs for this working directory."""
    try:
        record = json.loads(serve_record_path(settings).read_text())
        if not running(int(record["pid"])):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    address: str = record["address"]
    return address


@contextmanager
def open_reader(settings: Settings) -> Iterator[Reader]:
    """A reader for the configured ClickHouse, through the query API when it must be."""
    target = parse_target(settings.clickhouse())
    address = running_api(settings) if isinstance(target, ChdbTarget) else None
    if address is not None:
        yield HttpReader(address)
        return
    try:
        backend = open_backend(target)
    except StorageError as exc:
        raise QueryError(str(exc)) from None
    try:
        yield BackendReader(backend)
    finally:
        backend.close()
