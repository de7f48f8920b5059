"""The query API's Prometheus metrics (``custody_serve_...``): requests by route and
status code, and their durations. Routes are a fixed set of names, never a raw path, so
a scan of random URLs cannot grow the series without bound; nothing of a query, tenant or
tree is a label."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from prometheus_client import CollectorRegistry

from processors.metric_set import MetricSet

# The explorer's routes answer in milliseconds; a query over a large tenant in seconds.
_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_API_ROUTES = frozenset({"search", "tree", "token", "alerts"})


def route_of(method: str, path: str) -> str:
    """The route label of a request path (query string removed)."""
    if path in ("/health", "/query", "/runbook"):
        return path.removeprefix("/")
    if path.startswith("/api/"):
        name = path.removeprefix("/api/")
        return f"api_{name}" if name in _API_ROUTES else "api_unknown"
    if method == "GET" and (path in ("/", "/index.html") or path.startswith("/static/")):
        return "explorer"
    return "other"


class ServeMetrics(MetricSet):
    """The query API's metrics, in :attr:`registry` (ingest's, when it serves too)."""

    HELP: ClassVar[Mapping[str, str]] = {
        "requests": "Requests answered, by route and HTTP status code.",
        "request_duration_seconds": "From a request's first line to the end of its answer, "
        "by route.",
    }

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__("serve", registry)
        self.requests = self.counter("requests", ["route", "code"])
        self.seconds = self.histogram("request_duration_seconds", _BUCKETS, ["route"])

    def answered(self, route: str, code: int, seconds: float) -> None:
        """A request of ``route`` was answered ``code`` after ``seconds``."""
        self.requests.labels(route, str(code)).inc()
        self.seconds.labels(route).observe(seconds)
