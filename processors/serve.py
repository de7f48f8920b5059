"""The query API (``custody serve``, and the serving half of ``custody ingest`` on chdb).

A small HTTP server on the loopback interface by default:

- ``GET /health``: ``{"status": "ok", "clickhouse": ..., "ingest": {counters} | null}``;
- ``POST /query`` with ``{"sql": ..., "params": {...}}`` as ``application/json`` and a
  ``Host`` header naming this API: ``{"rows": [...]}``. Only read-only queries run (see
  :mod:`processors.serving.readonly`); an error answers 400 with ``{"error": ...}``.

It announces its address in ``.custody/run/serve.json`` so the CLI finds it, and removes
the file when it stops. The standard library's threading server is enough: queries are
serialised on the one ClickHouse connection anyway.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from processors.serving.reader import BackendReader, QueryError, serve_record_path
from processors.serving.readonly import ReadOnlyError
from processors.storage.backend import Backend
from producers.settings import Settings

_MAX_BODY = 1024 * 1024
_log = logging.getLogger("custody.serve")


class QueryApi:
    """The HTTP server around one backend; ``health`` adds the caller's counters."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        health: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.reader = BackendReader(backend)
        self.backend = backend
        self.health = health
        self.server = ThreadingHTTPServer(
            (settings.serve_host, settings.serve_port), self._handler()
        )
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def host_allowed(self, host: str) -> bool:
        """Whether a request's Host header names this API (by address or as localhost)."""
        name, _, port = host.rpartition(":")
        if port != str(self.server.server_address[1]):
            return False
        allowed = {"127.0.0.1", "localhost", "[::1]", str(self.server.server_address[0])}
        return name in allowed or name == self.settings.serve_host

    def start(self) -> None:
        """Serve in a background thread and announce the address."""
        self._thread = threading.Thread(target=self.server.serve_forever, name="serve")
        self._thread.start()
        record = serve_record_path(self.settings)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"pid": os.getpid(), "address": self.address}))
        _log.info("query API listening on %s", self.address)

    def stop(self) -> None:
        serve_record_path(self.settings).unlink(missing_ok=True)
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                _log.debug("%s " + format, self.address_string(), *args)

            def _answer(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != "/health":
                    self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"})
                    return
                self._answer(
                    HTTPStatus.OK,
                    {
                        "status": "ok",
                        "clickhouse": api.backend.target.describe(),
                        "ingest": api.health(),
                    },
                )

            def do_POST(self) -> None:
                if self.path != "/query":
                    self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"})
                    return
                # A web page can POST plain text to a loopback port (CSRF), and DNS
                # rebinding can make its own name point here; neither can send JSON
                # without a CORS preflight, nor a Host header naming this API.
                if self.headers.get_content_type() != "application/json":
                    self._answer(
                        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                        {"error": "send the query as application/json"},
                    )
                    return
                if not api.host_allowed(self.headers.get("Host", "")):
                    self._answer(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > _MAX_BODY:
                    self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "too large"})
                    return
                try:
                    request = json.loads(self.rfile.read(length))
                    sql, params = request["sql"], request.get("params") or {}
                    if not isinstance(sql, str) or not isinstance(params, dict):
                        raise TypeError("sql must be a string and params an object")
                except (ValueError, KeyError, TypeError) as exc:
                    self._answer(HTTPStatus.BAD_REQUEST, {"error": f"bad request: {exc}"})
                    return
                try:
                    rows = api.reader.select(sql, params)
                except (QueryError, ReadOnlyError) as exc:
                    self._answer(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                    return
                self._answer(HTTPStatus.OK, {"rows": rows})

        return Handler
