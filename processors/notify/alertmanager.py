"""The client of Alertmanager's v2 API: ``POST /api/v2/alerts`` with a JSON list of alerts.

Built on urllib3 (a pool of kept-alive connections). Its own retries are off: the batch
consumer retries a whole batch while keeping its Kafka group membership alive
(:mod:`processors.batch_consumer`). What an answer means:

- 2xx: Alertmanager took every alert of the post;
- 5xx, or no answer: :class:`Unavailable`, worth waiting for;
- 4xx: :class:`Refused`, the post itself is wrong (an invalid label, say): sending it again
  will not help.

The base URL may carry basic-auth credentials (``http://user:password@host:9093``); they
go in the Authorization header and never in a log line or an error.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import urllib3

ALERTS_PATH = "/api/v2/alerts"


class Unavailable(RuntimeError):
    """Alertmanager did not take the alerts, and may once it is back (5xx, no answer)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"Alertmanager {reason}: {detail}")
        self.reason = reason

    @property
    def label(self) -> str:
        """The ``reason`` label of notify's failed-post counter."""
        return "unreachable" if self.reason == "unreachable" else "http_5xx"


class Refused(ValueError):
    """Alertmanager refused the post (4xx): it will refuse it again."""

    label = "http_4xx"
    """The ``reason`` label of notify's failed-post counter."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"Alertmanager refused the alerts ({status}): {detail}")
        self.status = status


class AlertmanagerClient:
    """Posts alerts to one Alertmanager."""

    def __init__(self, base_url: str, timeout_seconds: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the Alertmanager URL must be http(s)://HOST[:PORT][/PATH]")
        self._headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            self._headers.update(
                urllib3.make_headers(basic_auth=f"{parts.username}:{parts.password or ''}")
            )
        netloc = parts.netloc.rpartition("@")[2]
        self.address = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        """The base URL without credentials: safe to log."""
        self._pool = urllib3.PoolManager(
            retries=False, timeout=urllib3.Timeout(total=timeout_seconds)
        )

    def _request(self, method: str, **options: Any) -> urllib3.BaseHTTPResponse:
        """A request to the alerts API; :class:`Unavailable` when nothing answers."""
        try:
            return self._pool.request(
                method, self.address + ALERTS_PATH, headers=self._headers, **options
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable("unreachable", f"{self.address}: {type(exc).__name__}") from None

    def post(self, body: bytes) -> None:
        """Post a JSON list of alerts; raises :class:`Unavailable` or :class:`Refused`."""
        response = self._request("POST", body=body)
        if 200 <= response.status < 300:
            return
        detail = response.data[:300].decode(errors="replace").strip()
        if 400 <= response.status < 500:
            raise Refused(response.status, detail)
        raise Unavailable(f"answered {response.status}", detail)

    def held(self, source: str) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds whose ``source`` label is ``source``; raises
        :class:`Unavailable` when it does not answer."""
        response = self._request("GET", fields={"filter": f'source="{source}"'})
        if response.status != 200:
            raise Unavailable(f"answered {response.status}", response.data[:300].decode())
        alerts: list[dict[str, Any]] = json.loads(response.data)
        return alerts

    def close(self) -> None:
        """Close the kept-alive connections."""
        self._pool.clear()
