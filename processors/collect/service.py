"""``custody collect``'s HTTP side (aiohttp): OPA's decision-log uploads.

``POST /v1/opa/logs`` takes exactly what OPA's ``decision_logs`` plugin sends to a
``services`` entry: a JSON array of decision events, gzip-compressed
(``Content-Encoding: gzip``). The answers, each with a JSON body naming the problem:

- 401 without a bearer token, or with one no ``custody collect-token`` made;
- 403 when a record names another tenant than the token's (nothing is published);
- 400 for a body that is not a JSON array, or a broken gzip stream; 413 over
  ``CUSTODY_COLLECT_MAX_BODY_BYTES`` (compressed or not);
- 503 when Kafka did not acknowledge every event and dead letter in time: OPA keeps the
  batch and uploads it again (the event ids are derived from the decisions, so a batch
  stored twice is deduplicated downstream);
- 200 once every record is published or dead-lettered, with the counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from processors.collect import opa, opa_files
from processors.collect.mapping_file import CollectMapping
from processors.collect.metrics import CollectMetrics
from processors.collect.publisher import CollectPublisher, Tally, Unavailable
from processors.collect.records import Origin
from processors.collect.tokens import TokenStore

_log = logging.getLogger("custody.collect")

OPA_LOGS = "/v1/opa/logs"
HEALTH = "/health"
# How long OPA is asked to wait before uploading again after a 503.
_RETRY_AFTER_SECONDS = "5"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, reason: str, detail: str) -> web.Response:
    """A JSON error answer: ``{"error": reason, "detail": detail}``."""
    return web.json_response({"error": reason, "detail": detail}, status=status)


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer`` header's value, or None."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class BodyError(ValueError):
    """A request body that cannot be taken: its HTTP status and reason code."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason


def decoded_body(raw: bytes, encoding: str, limit: int) -> bytes:
    """The body with its Content-Encoding undone, at most ``limit`` bytes uncompressed.

    Decompressed here rather than by aiohttp, which takes a truncated gzip stream without
    a word: a broken upload must be named as such, and a small body inflating past the
    limit (a gzip bomb) stops at the limit, never held whole.
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(raw) > limit:
            raise BodyError(413, "too_large", f"the upload exceeds {limit} bytes")
        return raw
    if encoding != "gzip":
        raise BodyError(415, "unsupported_encoding", f"Content-Encoding {encoding!r}: gzip only")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise BodyError(400, "bad_gzip", f"the gzip stream is broken: {exc}") from None
    if len(body) > limit or inflater.unconsumed_tail:
        raise BodyError(413, "too_large", f"the upload exceeds {limit} bytes uncompressed")
    if not inflater.eof:
        raise BodyError(400, "bad_gzip", "the gzip stream is truncated")
    if inflater.unused_data:
        raise BodyError(400, "bad_gzip", "data follows the end of the gzip stream")
    return body


def runner(app: web.Application) -> web.AppRunner:
    """The aiohttp runner of the collector's ``app``, which leaves bodies compressed (see
    :func:`decoded_body`)."""
    return web.AppRunner(app, access_log=None, auto_decompress=False)


@dataclass
class CollectService:
    """The HTTP application over a publisher, a token store and the mapping."""

    publisher: CollectPublisher
    tokens: TokenStore
    mapping: CollectMapping
    metrics: CollectMetrics

    @property
    def max_body(self) -> int:
        """The largest body taken, compressed and uncompressed."""
        return self.publisher.settings.collect_max_body_bytes

    def application(self) -> web.Application:
        """The aiohttp application serving the routes."""
        app = web.Application(client_max_size=self.max_body, middlewares=[self._answered])
        app.router.add_post(OPA_LOGS, self.opa_logs)
        app.router.add_get(HEALTH, self.health)
        return app

    @web.middleware
    async def _answered(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count every answer by route and code; aiohttp's own refusals (an unknown path,
        a body over the limit) as JSON problems too."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "other"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = problem(
                exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason
            )
        self.metrics.requests.labels(route, str(response.status)).inc()
        return response

    async def health(self, _request: web.Request) -> web.Response:
        """Liveness: the service answers."""
        return web.json_response({"status": "ok"})

    def _authenticated(self, request: web.Request, kind: str) -> Origin | web.Response:
        token = bearer_token(request.headers.get("Authorization", ""))
        origin = self.tokens.origin_of(token) if token else None
        if origin is None:
            self.metrics.refused.labels(kind, "unauthenticated").inc()
            response = problem(
                401,
                "unauthenticated",
                "an Authorization: Bearer header with a token from `custody collect-token` "
                "is required"
                if token is None
                else "the bearer token is not a known collect token",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="custody-collect"'
            return response
        return origin

    async def opa_logs(self, request: web.Request) -> web.Response:
        """OPA's decision-log upload."""
        started = time.monotonic()
        origin = self._authenticated(request, "opa")
        if isinstance(origin, web.Response):
            return origin
        try:
            raw = await request.read()
            body = decoded_body(raw, request.headers.get("Content-Encoding", ""), self.max_body)
        except web.HTTPRequestEntityTooLarge:
            self.metrics.refused.labels("opa", "too_large").inc()
            return problem(413, "too_large", f"the upload exceeds {self.max_body} bytes")
        except BodyError as exc:
            self.metrics.refused.labels("opa", exc.reason).inc()
            return problem(exc.status, exc.reason, str(exc))
        try:
            decisions = opa_files.decisions_of_upload(body)
        except ValueError as exc:
            self.metrics.refused.labels("opa", "bad_request").inc()
            return problem(400, "malformed_json", str(exc))
        foreign = self._foreign_tenants(decisions, origin)
        if foreign:
            self.metrics.refused.labels("opa", "forbidden").inc()
            return problem(
                403,
                "forbidden",
                f"records name tenant(s) {', '.join(sorted(foreign))}; this token publishes "
                f"for tenant {origin.tenant} only. Nothing was published.",
            )
        try:
            tally = await asyncio.to_thread(self._publish_decisions, origin, decisions)
        except Unavailable as exc:
            self.metrics.refused.labels("opa", "unavailable").inc()
            _log.warning("upload from %s not taken: %s", origin.source, exc)
            response = problem(503, "unavailable", str(exc))
            response.headers["Retry-After"] = _RETRY_AFTER_SECONDS
            return response
        self.metrics.counted("opa", tally, time.monotonic() - started)
        return web.json_response(tally.as_json())

    def _foreign_tenants(self, decisions: list[Any], origin: Origin) -> set[str]:
        named = (
            opa.tenant_named(entry, self.mapping.opa)
            for entry in decisions
            if isinstance(entry, dict)
        )
        return {tenant for tenant in named if tenant is not None and tenant != origin.tenant}

    def _publish_decisions(self, origin: Origin, decisions: list[Any]) -> Tally:
        outcomes = opa.decision_outcomes(decisions, origin, self.mapping.opa)
        return self.publisher.publish(origin, outcomes)
