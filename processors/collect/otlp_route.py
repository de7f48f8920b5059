"""``POST /v1/traces``: OTLP/HTTP traces in, as the OTLP specification has a receiver
answer.

- The body is an ``ExportTraceServiceRequest``, binary protobuf
  (``Content-Type: application/x-protobuf``) or OTLP/JSON (``application/json``), gzip
  (``Content-Encoding: gzip``) or not; any other type is a 415.
- 200 with an ``ExportTraceServiceResponse`` in the request's encoding, once Kafka acked
  every event: with ``partial_success`` (``rejected_spans``, ``error_message`` naming the
  reasons) when some spans were rejected (dead-lettered with their reason).
- 400 with a ``google.rpc.Status`` when the body cannot be decoded; 413 over the size
  limit; 401 without a known collect token; 503 with ``Retry-After`` while Kafka cannot
  take the events, which an OTLP exporter retries.

Spans are mapped by one :class:`~processors.collect.otlp.TraceAssembler` per source (its
memory of each trace's agent spans): see :mod:`processors.collect.otlp`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from processors.collect.metrics import CollectMetrics
from processors.collect.otlp_state import Assemblers
from processors.collect.otlp_wire import OtlpDecodeError, Span, spans_of_json, spans_of_protobuf
from processors.collect.publisher import CollectPublisher, Tally, Unavailable
from processors.collect.records import Origin
from processors.collect.service import BodyError, bearer_token, decoded_body
from processors.collect.tokens import TokenStore

_log = logging.getLogger("custody.collect.otlp")

TRACES = "/v1/traces"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# gRPC's codes, which google.rpc.Status carries: INVALID_ARGUMENT, UNAUTHENTICATED, ...
_CODES = {400: 3, 401: 16, 403: 7, 413: 3, 415: 3, 503: 14}
_RETRY_AFTER_SECONDS = "5"


def _answer(message: Message, status: int, content_type: str) -> web.Response:
    """``message`` in the request's encoding."""
    if content_type == JSON:
        text = json_format.MessageToJson(message)
        return web.Response(status=status, text=text, content_type=JSON)
    body = message.SerializeToString()
    return web.Response(status=status, body=body, content_type=PROTOBUF)


def status_answer(status: int, detail: str, content_type: str) -> web.Response:
    """An OTLP error answer: a ``google.rpc.Status`` naming the problem."""
    message = status_pb2.Status(code=_CODES.get(status, 2), message=detail)
    return _answer(message, status, content_type if content_type == JSON else PROTOBUF)


def export_answer(rejected: int, reasons: Counter[str], content_type: str) -> web.Response:
    """The success answer, with ``partial_success`` when spans were rejected."""
    response = trace_service_pb2.ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = "; ".join(
            f"{count} {reason}" for reason, count in sorted(reasons.items())
        )
    return _answer(response, 200, content_type)


@dataclass
class OtlpRoute:
    """The traces route over the collector's publisher, tokens and assemblers."""

    publisher: CollectPublisher
    tokens: TokenStore
    assemblers: Assemblers
    metrics: CollectMetrics
    clock: Callable[[], float] = time.time

    def add_to(self, app: web.Application) -> None:
        """Serve the route on ``app``."""
        app.router.add_post(TRACES, self.traces)

    async def traces(self, request: web.Request) -> web.Response:
        """One OTLP/HTTP export."""
        started = time.monotonic()
        content_type = request.content_type
        if content_type not in (PROTOBUF, JSON):
            return status_answer(415, f"Content-Type {content_type!r}: {PROTOBUF} or {JSON}", JSON)
        token = bearer_token(request.headers.get("Authorization", ""))
        origin = self.tokens.origin_of(token) if token else None
        if origin is None:
            self.metrics.refused.labels("otlp", "unauthenticated").inc()
            answer = status_answer(
                401,
                "an Authorization: Bearer header with a collect token is required",
                content_type,
            )
            answer.headers["WWW-Authenticate"] = 'Bearer realm="custody-collect"'
            return answer
        limit = self.publisher.settings.collect_max_body_bytes
        try:
            raw = await request.read()
            body = decoded_body(raw, request.headers.get("Content-Encoding", ""), limit)
            spans = (spans_of_json if content_type == JSON else spans_of_protobuf)(body)
        except web.HTTPRequestEntityTooLarge:
            self.metrics.refused.labels("otlp", "too_large").inc()
            return status_answer(413, f"the export exceeds {limit} bytes", content_type)
        except BodyError as exc:
            self.metrics.refused.labels("otlp", exc.reason).inc()
            return status_answer(exc.status, str(exc), content_type)
        except OtlpDecodeError as exc:
            self.metrics.refused.labels("otlp", "bad_request").inc()
            return status_answer(400, str(exc), content_type)
        try:
            tally = await asyncio.to_thread(self._publish, origin, body, spans)
        except Unavailable as exc:
            self.metrics.refused.labels("otlp", "unavailable").inc()
            _log.warning("export from %s not taken: %s", origin.source, exc)
            answer = status_answer(503, str(exc), content_type)
            answer.headers["Retry-After"] = _RETRY_AFTER_SECONDS
            return answer
        self.metrics.counted("otlp", tally, time.monotonic() - started)
        rejected = sum(tally.dead_lettered.values())
        return export_answer(rejected, tally.dead_lettered, content_type)

    def _publish(self, origin: Origin, body: bytes, spans: list[Span]) -> Tally:
        # The outcomes may include spans of earlier exports whose wait for a parent ended;
        # their rejections are counted here too (a client cannot tell them apart).
        export = hashlib.sha256(body).digest()
        outcomes = self.assemblers.mapped(origin, export, spans, self.clock())
        try:
            return self.publisher.publish(origin, ((o, None) for o in outcomes))
        except Unavailable:
            self.assemblers.not_acked(origin, export, outcomes)
            raise
