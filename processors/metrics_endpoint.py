"""Where a process serves its Prometheus metrics: ``GET /metrics`` on ``HOST:PORT``, from
prometheus_client's own HTTP server in a daemon thread, over the process's registry."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from processors.stack import metrics_url, split_address


class MetricsError(RuntimeError):
    """The metrics endpoint cannot be served where asked."""


@dataclass(frozen=True)
class Endpoint:
    """A running metrics endpoint."""

    url: str
    """Where ``/metrics`` answers."""
    server: WSGIServer

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()


def serve_registry(registry: CollectorRegistry, address: str, variable: str) -> Endpoint:
    """Serve ``registry`` as Prometheus text on ``address`` (``HOST:PORT``, port 0: the
    system's choice). Raises :class:`MetricsError`, naming the option and the environment
    ``variable`` that choose another address, when it is not one or cannot be bound."""
    try:
        host, port = split_address(address)
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except ValueError as exc:
        raise MetricsError(f"metrics address: {exc}") from None
    except OSError as exc:
        raise MetricsError(
            f"cannot serve metrics on {address} ({exc.strerror}); choose another "
            f"address with --metrics-address or {variable}"
        ) from None
    endpoint = Endpoint(metrics_url(host, server.server_address[1]), server)
    logging.getLogger("custody.metrics").info("metrics on %s", endpoint.url)
    return endpoint
