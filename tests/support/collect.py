"""``custody collect``'s service and Vault socket listener run in a thread of the test,
on real ports against a real broker, and a client speaking HTTP and TCP to them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import gzip
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processors.collect.app import Collector, HeldSpans
from processors.collect.mapping_file import CollectMapping
from processors.collect.metrics import CollectMetrics
from processors.collect.otlp_route import OtlpRoute
from processors.collect.service import OPA_LOGS, CollectService, runner
from processors.collect.tokens import issue_token
from processors.collect.vault_socket import VaultSocketListener
from producers.settings import Settings

DATA = Path(__file__).resolve().parent.parent / "data"


class RunningCollector:
    """The collector's HTTP service and Vault socket listener, on ports of the system's
    choosing, until :meth:`close`."""

    def __init__(self, settings: Settings, mapping: CollectMapping | None = None) -> None:
        self.settings = settings
        self.collector = Collector(settings, mapping or CollectMapping(), CollectMetrics())
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._held_task: asyncio.Task[None] | None = None
        self.port = 0
        self.vault_port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the collector did not start within 30 s")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        c = self.collector
        app = CollectService(c.publisher, c.tokens, c.mapping, c.metrics).application()
        OtlpRoute(c.publisher, c.tokens, c.assemblers, c.metrics).add_to(app)
        self._runner = runner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        # As custody collect does: spans whose wait for a parent is over, once a second.
        held = HeldSpans(c)
        self._held_task = asyncio.get_running_loop().create_task(_every_second(held.publish))
        listener = VaultSocketListener(c.publisher, c.tokens, c.vault_mapper, c.metrics)
        self._server = await listener.start("127.0.0.1", 0)
        self.vault_port = self._server.sockets[0].getsockname()[1]

    def token(self, tenant: str, source: str, *, observe_only: bool = False) -> str:
        """A new collect token for ``tenant``/``source``."""
        return issue_token(self.collector.tokens.path, tenant, source, observe_only=observe_only)

    def post(
        self, path: str, body: bytes, token: str | None, content_type: str, *, gzipped: bool
    ) -> tuple[int, bytes, dict[str, str]]:
        """POST ``body`` as it is (``gzipped`` says it is compressed), with ``token`` as the
        bearer unless None; the status, the answer's bytes and the headers."""
        headers = {"Content-Type": content_type}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, answer.read(), dict(answer.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    def upload(
        self, body: bytes, token: str | None, *, gzipped: bool = True, path: str = OPA_LOGS
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """POST ``body`` (gzip-compressed unless told) as OPA does; the status, the JSON
        answer and the headers."""
        status, answer, headers = self.post(path, body, token, "application/json", gzipped=gzipped)
        return status, json.loads(answer), headers

    def upload_decisions(self, decisions: list[Any], token: str) -> tuple[int, dict[str, Any]]:
        """Upload ``decisions`` as OPA's decision_logs plugin does (a gzip JSON array)."""
        status, answer, _ = self.upload(gzip.compress(json.dumps(decisions).encode()), token)
        return status, answer

    def send_vault_lines(self, prefix: str, lines: list[str]) -> socket.socket:
        """Connect as Vault's socket device does and write ``lines``, each after
        ``prefix``; the open connection is returned (close it when done)."""
        connection = socket.create_connection(("127.0.0.1", self.vault_port), timeout=30)
        connection.sendall("".join(f"{prefix}{line}\n" for line in lines).encode())
        return connection

    def close(self) -> None:
        """Stop serving; deliver what the publisher holds."""

        async def stop() -> None:
            if self._held_task is not None:
                self._held_task.cancel()
            if self._server is not None:
                self._server.close()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self.collector.publisher.close()


@contextlib.contextmanager
def running_collector(settings: Settings, home: Path) -> Iterator[RunningCollector]:
    """A collector on ``settings``' broker, its tokens under ``home``, with a small body
    limit (256 KiB) and a short wait for Kafka's acks (8 s), so the limits are reachable."""
    running = RunningCollector(
        settings.model_copy(
            update={
                "collect_tokens_file": home / "tokens.json",
                "collect_max_body_bytes": 256 * 1024,
                "collect_ack_timeout_seconds": 8.0,
            }
        )
    )
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def collector(settings: Settings, tmp_path: Path) -> Iterator[RunningCollector]:
    """:func:`running_collector` on the test's broker, its tokens in the test's directory."""
    with running_collector(settings, tmp_path) as running:
        yield running


def sample_lines(name: str) -> list[str]:
    """The non-blank lines of a sample under tests/data."""
    return [line for line in (DATA / name).read_text().splitlines() if line.strip()]


VAULT_STORY = (
    "login_approle",
    "token_create_child",
    "kv_read",
    "dynamic_secret",
    "errors",
    "renew",
    "revoke_parent",
)
"""Vault samples (tests/data/vault) in the order of one agent fleet's morning."""


def vault_story() -> list[str]:
    """The audit lines of :data:`VAULT_STORY`, in order."""
    return [line for name in VAULT_STORY for line in sample_lines(f"vault/{name}.jsonl")]


async def _every_second(work: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(work)


def protobuf_of(document: dict[str, Any], message: Any = None) -> bytes:
    """The protobuf form (an ``ExportTraceServiceRequest`` unless ``message`` says) of an
    OTLP/JSON document: the protobuf JSON mapping, once the ids (hex in OTLP/JSON) are
    written as that mapping's base64."""
    document = copy.deepcopy(document)
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    parsed = json_format.ParseDict(document, message or ExportTraceServiceRequest())
    return bytes(parsed.SerializeToString())


def sample_json(name: str) -> Any:
    """A JSON sample under tests/data."""
    return json.loads((DATA / name).read_text())
