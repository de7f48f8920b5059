"""``custody collect``: the long-running collector, part of ``custody up``.

One process runs, on one event loop, the HTTP service (:mod:`.service`: OPA's uploads;
:mod:`.otlp_route`: OTLP traces), Vault's socket audit device when
``CUSTODY_COLLECT_VAULT_ADDRESS`` is set (:mod:`.vault_socket`), a follower thread per
``--vault-file`` (:mod:`.vault_file`) and a consumer thread per ``--otlp-topic``
(:mod:`.otlp_topic`); once a second it publishes the spans whose wait for a parent is
over. What ``custody status`` shows of it (its addresses, what it has published) is kept
in ``run/collect.state.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from processors.collect.mapping_file import CollectMapping, load_mapping
from processors.collect.metrics import CollectMetrics
from processors.collect.otlp_route import OtlpRoute
from processors.collect.otlp_state import Assemblers
from processors.collect.otlp_topic import OtlpTopicReader
from processors.collect.publisher import CollectPublisher, Unavailable
from processors.collect.records import Origin, Outcome
from processors.collect.service import CollectService, runner
from processors.collect.tokens import TokenStore, tokens_path
from processors.collect.vault import VaultAuditMapper
from processors.collect.vault_file import VaultFileFollower
from processors.collect.vault_socket import VaultSocketListener
from producers.settings import Settings

_log = logging.getLogger("custody.collect")


class CollectError(RuntimeError):
    """The collector cannot start as configured."""


@dataclass(frozen=True)
class FileToFollow:
    """A Vault file audit log and the origin its lines are published for."""

    path: Path
    origin: Origin


@dataclass(frozen=True)
class TopicToRead:
    """A Kafka topic of OTLP traces and the origin its spans are published for."""

    topic: str
    origin: Origin


def checkpoint_path(settings: Settings, path: Path) -> Path:
    """Where the follower of ``path`` keeps its checkpoint (one per followed file)."""
    name = str(path.resolve()).strip("/").replace("/", "_")
    return settings.home / "collect" / f"vault-file.{name}.json"


class Collector:
    """The collector's parts, shared by its transports."""

    def __init__(
        self, settings: Settings, mapping: CollectMapping, metrics: CollectMetrics
    ) -> None:
        self.settings = settings
        self.mapping = mapping
        self.metrics = metrics
        self.publisher = CollectPublisher(settings)
        self.tokens = TokenStore(tokens_path(settings))
        self.assemblers = Assemblers(mapping.otlp)
        self._mappers: dict[Origin, VaultAuditMapper] = {}
        self._mappers_lock = threading.Lock()

    def vault_mapper(self, origin: Origin) -> VaultAuditMapper:
        """The one Vault adapter of ``origin``'s socket connections (its memory of tokens
        is per source; the listener feeds it one batch at a time)."""
        with self._mappers_lock:
            if origin not in self._mappers:
                self._mappers[origin] = VaultAuditMapper(origin, self.mapping.vault)
            return self._mappers[origin]


def _split(address: str, what: str) -> tuple[str, int]:
    from processors.stack import split_address

    try:
        return split_address(address)
    except ValueError as exc:
        raise CollectError(f"{what}: {exc}") from None


class HeldSpans:
    """Publishes the spans whose wait for a parent is over, once a second; what Kafka
    did not take is tried again at the next round."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self._unpublished: list[tuple[Origin, list[Outcome]]] = []

    def publish(self, *, stopping: bool = False) -> None:
        """Publish what is due (``stopping``: every held span, mapped as if its wait were
        over, so a stop loses none)."""
        assemblers = self.collector.assemblers
        held = assemblers.drained() if stopping else assemblers.expired(time.time())
        due = [*self._unpublished, *held]
        self._unpublished = []
        for origin, outcomes in due:
            started = time.monotonic()
            try:
                tally = self.collector.publisher.publish(origin, ((o, None) for o in outcomes))
            except Unavailable as exc:
                _log.warning("held spans of %s not taken, retrying: %s", origin.source, exc)
                self._unpublished.append((origin, outcomes))
                continue
            self.collector.metrics.counted("otlp", tally, time.monotonic() - started)


async def _serve(
    collector: Collector,
    files: list[FileToFollow],
    topics: list[TopicToRead],
    state_file: Path,
    heartbeat: Path,
) -> None:
    settings = collector.settings
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    service = CollectService(
        collector.publisher, collector.tokens, collector.mapping, collector.metrics
    )
    app = service.application()
    route = OtlpRoute(
        collector.publisher, collector.tokens, collector.assemblers, collector.metrics
    )
    route.add_to(app)
    app_runner = runner(app)
    await app_runner.setup()
    host, port = _split(settings.collect_address, "CUSTODY_COLLECT_ADDRESS")
    site = web.TCPSite(app_runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        raise CollectError(f"cannot listen on {settings.collect_address}: {exc.strerror}") from None
    bound = app_runner.addresses[0]
    state: dict[str, object] = {"address": f"http://{host}:{bound[1]}", "pid": os.getpid()}
    servers = []
    if settings.collect_vault_address:
        listener = VaultSocketListener(
            collector.publisher, collector.tokens, collector.vault_mapper, collector.metrics
        )
        vhost, vport = _split(settings.collect_vault_address, "CUSTODY_COLLECT_VAULT_ADDRESS")
        server = await listener.start(vhost, vport)
        servers.append(server)
        state["vault_socket"] = f"{vhost}:{server.sockets[0].getsockname()[1]}"
    stopping = threading.Event()
    followers = [
        VaultFileFollower(
            f.path,
            f.origin,
            # A file is one Vault's log, followed in a thread of its own: its adapter is its
            # own too (an adapter is fed by one caller at a time).
            VaultAuditMapper(f.origin, collector.mapping.vault),
            collector.publisher,
            checkpoint_path(settings, f.path),
            collector.metrics,
        )
        for f in files
    ]
    readers = [
        OtlpTopicReader(
            settings,
            t.topic,
            t.origin,
            collector.assemblers,
            collector.publisher,
            collector.metrics,
        )
        for t in topics
    ]
    threads = [
        threading.Thread(target=f.follow, args=(stopping,), name=f"vault-file-{i}", daemon=True)
        for i, f in enumerate(followers)
    ] + [
        threading.Thread(target=r.run, name=f"otlp-topic-{i}", daemon=True)
        for i, r in enumerate(readers)
    ]
    for thread in threads:
        thread.start()
    state["vault_files"] = [str(f.path) for f in files]
    state["otlp_topics"] = [t.topic for t in topics]
    held = HeldSpans(collector)
    _log.info("collecting on %s", json.dumps(state))
    try:
        while not stop.is_set():
            _write_state(state_file, state, followers)
            heartbeat.touch()
            await asyncio.to_thread(held.publish)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                continue
    finally:
        stopping.set()
        for reader in readers:
            reader.stop.set()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        for server in servers:
            server.close()
        await app_runner.cleanup()
        # The spans still waiting for a parent, mapped as they are: a stop loses none.
        await asyncio.to_thread(held.publish, stopping=True)


def _write_state(path: Path, state: dict[str, object], followers: list[VaultFileFollower]) -> None:
    state = {
        **state,
        "vault_file_lines": sum(f.lines for f in followers),
    }
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(state))
    os.replace(partial, path)


def run(
    settings: Settings,
    metrics_address: str,
    files: list[FileToFollow],
    topics: list[TopicToRead],
) -> None:
    """Run the collector until SIGTERM/SIGINT, its metrics on ``metrics_address``.
    Raises :class:`CollectError` when it cannot start."""
    from processors.collect.mapping_file import MappingError
    from processors.metrics_endpoint import serve_registry
    from processors.stack import COLLECT, COLLECT_METRICS_VARIABLE, heartbeat_path, state_path

    try:
        mapping = load_mapping(settings.collect_mapping)
    except MappingError as exc:
        raise CollectError(f"CUSTODY_COLLECT_MAPPING: {exc}") from None
    for followed in files:
        if not followed.path.parent.is_dir():
            raise CollectError(f"--vault-file {followed.path}: no such directory")
    metrics = CollectMetrics()
    endpoint = serve_registry(metrics.registry, metrics_address, COLLECT_METRICS_VARIABLE)
    collector = Collector(settings, mapping, metrics)
    state_file = state_path(settings, COLLECT)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    for followed in files:
        checkpoint_path(settings, followed.path).parent.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(_serve(collector, files, topics, state_file, heartbeat_path(settings, COLLECT)))
    finally:
        collector.publisher.close()
        endpoint.close()
