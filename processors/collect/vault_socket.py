"""Vault's socket audit device (JSON lines over TCP) into Custody.

Vault's socket device can send no header, so the sender authenticates with the device's
``prefix`` option: Vault writes it before every line, and it is set to a collect token
(``vault audit enable socket address=HOST:PORT socket_type=tcp prefix=<token>``). The
first line of a connection names the token, which binds the tenant and the source; every
later line must carry the same prefix. A connection whose first line has no known token,
or a later line another prefix, is closed, and nothing of it is published.

Lines are taken in batches; the next batch is read only once Kafka acknowledged the last.
While Kafka is unavailable the connection is not read, so Vault's writes block (up to its
``write_timeout``) and Vault itself refuses requests it cannot audit, rather than Custody
losing the evidence silently.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from processors.collect.metrics import CollectMetrics
from processors.collect.publisher import CollectPublisher, Unavailable
from processors.collect.records import Origin
from processors.collect.tokens import TokenStore
from processors.collect.vault import VaultAuditMapper
from processors.collect.vault_lines import outcomes_of_lines

_log = logging.getLogger("custody.collect.vault_socket")

BATCH_LINES = 500
# How long a batch waits for more lines before it is published.
_BATCH_WAIT_SECONDS = 0.05
_LINE_LIMIT = 4 * 1024 * 1024


def split_prefix(line: bytes) -> tuple[bytes, bytes]:
    """A line's prefix (everything before its JSON object) and the entry."""
    start = line.find(b"{")
    if start < 0:
        return line.strip(), b""
    return line[:start].strip(), line[start:]


@dataclass
class VaultSocketListener:
    """Serves Vault's socket audit device; one adapter per origin (``mapper_of``), shared
    by its connections (Vault reconnects after an error)."""

    publisher: CollectPublisher
    tokens: TokenStore
    mapper_of: Callable[[Origin], VaultAuditMapper]
    metrics: CollectMetrics
    # One batch at a time per origin: its adapter is a state machine fed in order.
    _locks: dict[Origin, asyncio.Lock] = field(default_factory=dict, init=False)

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Listen on ``host``:``port``."""
        return await asyncio.start_server(self.connected, host, port, limit=_LINE_LIMIT)

    async def connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection of Vault's socket device."""
        peer = writer.get_extra_info("peername")
        try:
            first = await reader.readline()
            prefix, _ = split_prefix(first)
            origin = self.tokens.origin_of(prefix.decode("ascii", "replace"))
            if origin is None:
                self.metrics.refused.labels("vault", "unauthenticated").inc()
                _log.warning("vault socket connection from %s refused: no known token prefix", peer)
                return
            await self._serve(origin, prefix, first, reader)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            _log.info("vault socket connection from %s ended: %s", peer, exc)
        finally:
            writer.close()

    async def _serve(
        self, origin: Origin, prefix: bytes, first: bytes, reader: asyncio.StreamReader
    ) -> None:
        pending = [first]
        while True:
            pending += await _more_lines(reader, BATCH_LINES - len(pending))
            if not pending:
                return
            entries = []
            for line in pending:
                line_prefix, entry = split_prefix(line)
                if not hmac.compare_digest(line_prefix, prefix):
                    self.metrics.refused.labels("vault", "unauthenticated").inc()
                    _log.warning("vault socket line without the connection's token: closing")
                    return
                entries.append(entry)
            await self._publish(origin, entries)
            if reader.at_eof():
                return
            pending = []

    async def _publish(self, origin: Origin, entries: list[bytes]) -> None:
        """Map the entries once, then publish their outcomes, retrying (and reading
        nothing more) while Kafka is unavailable."""
        lock = self._locks.setdefault(origin, asyncio.Lock())
        mapper = self.mapper_of(origin)
        loop = asyncio.get_running_loop()
        wait = 0.5
        async with lock:
            started = loop.time()
            outcomes = await asyncio.to_thread(lambda: list(outcomes_of_lines(mapper, entries)))
            while True:
                try:
                    tally = await asyncio.to_thread(self.publisher.publish, origin, outcomes)
                except Unavailable as exc:
                    self.metrics.refused.labels("vault", "unavailable").inc()
                    _log.warning("vault socket lines not taken, retrying: %s", exc)
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, 30.0)
                    continue
                self.metrics.counted("vault", tally, loop.time() - started)
                return


async def _more_lines(reader: asyncio.StreamReader, room: int) -> list[bytes]:
    """The next line (waited for as long as it takes), then those that follow within a
    short wait, at most ``room``; empty at the end of the connection."""
    lines: list[bytes] = []
    while len(lines) < room:
        try:
            if lines:
                line = await asyncio.wait_for(reader.readline(), _BATCH_WAIT_SECONDS)
            else:
                line = await reader.readline()
        except TimeoutError:
            break
        if not line:
            break
        lines.append(line)
    return lines
