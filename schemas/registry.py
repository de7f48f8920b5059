"""A small client for a Confluent-compatible Schema Registry (REST), used only when
``CUSTODY_SCHEMA_REGISTRY_URL`` is set. Without it, events travel in Avro single-object
encoding and need no registry at all.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class SchemaRegistryError(RuntimeError):
    """The registry could not be reached or refused the request."""


class SchemaRegistryClient:
    """Registers and looks up schemas; every answer is cached (ids are immutable)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            # urllib would also open file: and ftp: URLs.
            raise SchemaRegistryError(f"the registry URL must be http or https: {parts.scheme!r}")
        self._auth: str | None = None
        if parts.username is not None:
            credentials = f"{urllib.parse.unquote(parts.username)}:"
            credentials += urllib.parse.unquote(parts.password or "")
            self._auth = "Basic " + base64.b64encode(credentials.encode()).decode()
            netloc = parts.hostname or ""
            if parts.port:
                netloc += f":{parts.port}"
            parts = parts._replace(netloc=netloc)
        self._base = urllib.parse.urlunsplit(parts).rstrip("/")
        self._timeout = timeout
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, str] = {}
        self._lock = threading.Lock()

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        # The scheme is http or https (checked in __init__).
        request = urllib.request.Request(self._base + path, data=data, method=method)  # noqa: S310
        request.add_header("Accept", "application/vnd.schemaregistry.v1+json")
        if data is not None:
            request.add_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        if self._auth:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise SchemaRegistryError(f"{method} {path}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SchemaRegistryError(f"{method} {path}: {exc}") from None

    def register(self, subject: str, schema: str) -> int:
        """The id of ``schema`` under ``subject``, registering it if new."""
        key = (subject, schema)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        quoted = urllib.parse.quote(subject, safe="")
        answer = self._request("POST", f"/subjects/{quoted}/versions", {"schema": schema})
        schema_id = int(answer["id"])
        with self._lock:
            self._ids[key] = schema_id
            self._schemas[schema_id] = schema
        return schema_id

    def schema(self, schema_id: int) -> str:
        """The schema text registered under ``schema_id``."""
        with self._lock:
            if schema_id in self._schemas:
                return self._schemas[schema_id]
        answer = self._request("GET", f"/schemas/ids/{schema_id}")
        text = str(answer["schema"])
        with self._lock:
            self._schemas[schema_id] = text
        return text
