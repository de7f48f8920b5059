"""The query API and web explorer (``custody serve``, and the serving half of
``custody ingest`` on chdb).

A small HTTP server on the loopback interface by default:

- ``GET /health``: ``{"status": "ok", "clickhouse": ..., "ingest": {counters} | null}``;
- ``POST /query`` with ``{"sql": ..., "params": {...}}`` as ``application/json``:
  ``{"rows": [...]}``. Only read-only queries run (see
  :mod:`processors.serving.readonly`); an error answers 400 with ``{"error": ...}``.
- ``GET /report?tenant=&from=&to=[&format=json]``: the auditor's report of a period
  (:mod:`processors.reporting`);
- ``GET /runbook``: the alert reference, which notifications link to
  (:mod:`processors.serving.runbook`);
- ``GET /`` and ``GET /static/...``: the web explorer (``dashboards/explorer/``), and the
  JSON it reads: ``GET /api/search?q=``, ``/api/tree?id=``, ``/api/alerts``,
  ``/api/token?id=``, ``/api/blast-radius?identity=|token=[&from=&to=]`` (each takes
  ``tenant=``; see :mod:`processors.serving.explorer`, :mod:`processors.reporting.blast_radius`).

Everything but ``/health`` answers only to a ``Host`` header naming this API (localhost,
``serve_host`` or one of ``serve_hostnames``): otherwise a web page whose own name was
rebound to 127.0.0.1 could read the evidence.

It announces its address in ``.custody/run/serve.json`` so the CLI finds it, and removes
the file when it stops. The standard library's threading server is enough: queries are
serialised on the one ClickHouse connection anyway.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from processors.reporting.blast_radius import NotFound, blast_radius
from processors.serving.alerts import list_alerts, parse_since
from processors.serving.explorer import AmbiguousToken, search, token_timeline
from processors.serving.graph import custody_graph
from processors.serving.metrics import ServeMetrics, route_of
from processors.serving.reader import BackendReader, QueryError, serve_record_path
from processors.serving.readonly import ReadOnlyError
from processors.serving.runbook import alert_reference
from processors.serving.trace import AmbiguousTask, TreeNotFound, trace
from processors.storage.backend import Backend
from producers.settings import Settings

_MAX_BODY = 1024 * 1024
_log = logging.getLogger("custody.serve")
# The page loads only its own files and talks only to this API.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def explorer_dir() -> Path:
    """The web explorer's files (dashboards/explorer, package data when installed)."""
    return Path(str(files("dashboards").joinpath("explorer")))


class BadRequest(ValueError):
    """A request parameter is missing or malformed."""


class UnknownRoute(LookupError):
    """No explorer route has this name."""


class QueryApi:
    """The HTTP server around one backend; ``health`` adds the caller's counters."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        health: Callable[[], dict[str, Any] | None] = lambda: None,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
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
        allowed.add(self.settings.serve_host)
        allowed.update(n.strip() for n in self.settings.serve_hostnames.split(",") if n)
        return name in allowed

    def explore(self, route: str, query: dict[str, str]) -> dict[str, Any]:
        """The JSON of an explorer route."""
        tenant = query.get("tenant") or None
        if route == "search":
            found = search(self.reader, query.get("q", ""), tenant)
            return {"results": [result.as_json() for result in found]}
        if route == "tree":
            tree = trace(self.reader, _required(query, "id"), tenant)
            return {**tree.as_json(), "graph": custody_graph(tree)}
        if route == "blast-radius":
            return self._blast_radius(query, tenant)
        if route == "token":
            return token_timeline(self.reader, _required(query, "id"), tenant).as_json()
        if route == "alerts":
            since = query.get("since")
            try:
                limit = int(query.get("limit", "200"))
                rows = list_alerts(
                    self.reader,
                    query.get("type") or None,
                    parse_since(since) if since else None,
                    tenant,
                    limit=max(1, min(limit, 5000)),
                )
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            return {"alerts": [alert.as_json() for alert in rows]}
        raise UnknownRoute(route)

    def _blast_radius(self, query: dict[str, str], tenant: str | None) -> dict[str, Any]:
        """What a workload identity or a token could and did reach."""
        identity, token = query.get("identity") or None, query.get("token") or None
        if (identity is None) == (token is None):
            raise BadRequest("name exactly one of identity and token")
        since, until = _time(query, "from"), _time(query, "to")
        found = blast_radius(
            self.reader, tenant or self.settings.tenant, identity, token, since, until
        )
        return found.as_json()

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
        """The request handler class, bound to this API."""
        bound = self

        class Handler(_Handler):
            api = bound

        return Handler


class _Handler(BaseHTTPRequestHandler):
    """The query API's and the explorer's requests, for the :class:`QueryApi` ``api``."""

    api: ClassVar[QueryApi]
    _status: int | None = None

    def handle_one_request(self) -> None:
        started = time.perf_counter()
        self._status = None
        super().handle_one_request()
        metrics = self.api.metrics
        if metrics is not None and self._status is not None:
            route = route_of(self.command or "", urlsplit(self.path).path)
            metrics.answered(route, self._status, time.perf_counter() - started)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in _PAGE_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/health":
            self._answer(
                HTTPStatus.OK,
                {
                    "status": "ok",
                    "clickhouse": self.api.backend.target.describe(),
                    "ingest": self.api.health(),
                },
            )
            return
        if not self.api.host_allowed(self.headers.get("Host", "")):
            self._answer(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
            return
        if url.path.startswith("/api/"):
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            self._explore(url.path.removeprefix("/api/"), query)
        elif url.path == "/report":
            self._report({k: v[-1] for k, v in parse_qs(url.query).items()})
        elif url.path == "/runbook":
            self._send(HTTPStatus.OK, alert_reference(), "text/html; charset=utf-8")
        elif url.path in ("/", "/index.html"):
            self._file("index.html")
        elif url.path.startswith("/static/"):
            self._file(url.path.removeprefix("/static/"))
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {url.path}"})

    def _explore(self, route: str, query: dict[str, str]) -> None:
        try:
            self._answer(HTTPStatus.OK, self.api.explore(route, query))
        except UnknownRoute:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such route {route}"})
        except (TreeNotFound, NotFound) as exc:
            self._answer(HTTPStatus.NOT_FOUND, {"error": str(exc)})
        except (AmbiguousTask, AmbiguousToken) as exc:
            self._answer(HTTPStatus.CONFLICT, {"error": str(exc)})
        except (BadRequest, QueryError, ReadOnlyError) as exc:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except Exception:
            _log.exception("explorer route %s failed", route)
            self._answer(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

    def _report(self, query: dict[str, str]) -> None:
        """The auditor's report of a tenant over ``from``..``to`` (ISO), as ``format``
        html (default) or json."""
        from processors.reporting.build import ReportError, period_of, report_from
        from processors.reporting.render import render

        fmt = query.get("format", "html")
        try:
            if fmt not in ("html", "json"):
                raise BadRequest("format is html or json")
            start, end = _time(query, "from"), _time(query, "to")
            if start is None or end is None:
                raise BadRequest("a report needs both from and to")
            tenant = query.get("tenant") or self.api.settings.tenant
            period = period_of(self.api.settings, tenant, start, end)
            explorer = self.api.settings.explorer_url or self.api.address
            body = render(report_from(self.api.reader, period, explorer), fmt)
        except (BadRequest, ReportError, QueryError) as exc:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        kind = "text/html; charset=utf-8" if fmt == "html" else "application/json"
        self._send(HTTPStatus.OK, body, kind)

    def _file(self, name: str) -> None:
        root = explorer_dir().resolve()
        path = (root / name).resolve()
        # Only the page's own files: no way out of the directory, no dotfiles, no
        # npm manifests.
        if (
            not path.is_relative_to(root)
            or not path.is_file()
            or any(part.startswith(".") for part in path.relative_to(root).parts)
            or path.suffix not in (".html", ".js", ".css", ".svg", ".png")
        ):
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such file {name}"})
            return
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        self._send(HTTPStatus.OK, path.read_bytes(), content_type)

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
        if not self.api.host_allowed(self.headers.get("Host", "")):
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
            rows = self.api.reader.select(sql, params)
        except (QueryError, ReadOnlyError) as exc:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        self._answer(HTTPStatus.OK, {"rows": rows})


def _time(query: dict[str, str], name: str) -> datetime | None:
    """The time parameter ``name`` (ISO, or a duration back from now as the CLI takes
    it), None when absent."""
    text = query.get(name)
    if not text:
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        raise BadRequest(str(exc).replace("--since", name)) from None


def _required(query: dict[str, str], name: str) -> str:
    value = query.get(name, "").strip()
    if not value:
        raise BadRequest(f"missing parameter {name}")
    return value
