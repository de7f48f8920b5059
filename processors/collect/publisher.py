"""Publishing what the adapters made of a batch of records, and nothing less.

Every record of a batch is accounted for: its events published through the SDK's
:class:`~producers.producer.CustodyProducer` (stamped with the collector's own hash
chain), or the record dead-lettered to ``custody.dlq.v1`` with its reason, or counted as
skipped. A batch is done only when Kafka acknowledged every event and every dead letter;
otherwise :class:`Unavailable`, and the sender (OPA's upload, the Vault file follower)
sends the batch again. The event ids are derived from the records, so a batch sent twice
is stored once downstream.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from processors.collect.records import Mapped, Origin, Outcome, Rejection
from processors.dead_letters import dlq_headers, dlq_value
from producers.producer import CustodyProducer, DeliveryReport, PublishError
from producers.settings import Settings
from schemas import topics

STAGE = "collect"
# librdkafka's own log lines go through Python logging, as the SDK producer's do.
_kafka_log = logging.getLogger("custody.librdkafka")


class Unavailable(RuntimeError):
    """Kafka did not take every record of a batch in time: send it again later."""


@dataclass
class Tally:
    """What became of a batch's records."""

    records: int = 0
    published: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        """Add ``other``'s counts to these."""
        self.records += other.records
        self.published += other.published
        self.dead_lettered.update(other.dead_lettered)
        self.skipped.update(other.skipped)

    def as_json(self) -> dict[str, Any]:
        """The tally as an upload's answer shows it."""
        return {
            "records": self.records,
            "published": self.published,
            "dead_lettered": dict(sorted(self.dead_lettered.items())),
            "skipped": dict(sorted(self.skipped.items())),
        }


class Acks:
    """The acknowledgements a batch waits for, counted down from librdkafka's reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outstanding = 0
        self._sealed = False
        self._done = threading.Event()
        self.errors: list[str] = []

    def expect(self) -> None:
        """One more message to hear about."""
        with self._lock:
            self._outstanding += 1

    def seal(self) -> None:
        """No more messages will be expected."""
        with self._lock:
            self._sealed = True
            self._settle()

    def heard(self, error: str | None) -> None:
        """A message's report (``error`` None: stored)."""
        with self._lock:
            self._outstanding -= 1
            if error is not None:
                self.errors.append(error)
            self._settle()

    def _settle(self) -> None:
        if self._sealed and self._outstanding == 0:
            self._done.set()

    def on_event(self, report: DeliveryReport) -> None:
        """The SDK producer's delivery callback."""
        self.heard(report.error)

    def on_dead_letter(self, error: KafkaError | None, _message: Message) -> None:
        """The dead-letter producer's delivery callback."""
        self.heard(None if error is None else f"{error.name()}: {error.str()}")

    def wait(self, timeout: float) -> bool:
        """Whether every message was stored within ``timeout`` seconds."""
        return self._done.wait(timeout) and not self.errors


class CollectPublisher:
    """The collector's Kafka side: the SDK producer for events, a plain one for dead
    letters (which keep the record's original bytes, masked)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events = CustodyProducer(settings)
        self._dead_letters = Producer(
            {**settings.kafka_producer(), "linger.ms": 5, "logger": _kafka_log}
        )
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll_dead_letters, daemon=True)
        self._poller.start()

    def send(
        self, origin: Origin, outcomes: Iterable[tuple[Outcome, bytes | None]]
    ) -> tuple[Tally, Acks]:
        """Hand every outcome's events and dead letters to Kafka; returns the tally and
        the acks to wait for. ``outcomes`` pairs each adapter outcome with the raw record
        (kept by a dead letter; None where the record has no bytes of its own)."""
        tally, acks = Tally(), Acks()
        try:
            for index, (outcome, raw) in enumerate(outcomes):
                tally.records += 1
                if isinstance(outcome, Mapped):
                    for event in outcome.events:
                        acks.expect()
                        self.events.publish(event, acks.on_event, keep_failure=False)
                        tally.published += 1
                elif isinstance(outcome, Rejection):
                    acks.expect()
                    kept = raw if raw is not None else outcome.raw
                    self._dead_letter(origin, outcome, kept, index, acks)
                    tally.dead_lettered[outcome.reason] += 1
                else:
                    tally.skipped[outcome.reason] += 1
        except (PublishError, BufferError) as exc:
            acks.seal()
            raise Unavailable(f"Kafka does not take records: {exc}") from exc
        acks.seal()
        return tally, acks

    def publish(self, origin: Origin, outcomes: Iterable[tuple[Outcome, bytes | None]]) -> Tally:
        """:meth:`send`, then wait for every ack; raises :class:`Unavailable` when Kafka
        did not store them all within ``CUSTODY_COLLECT_ACK_TIMEOUT_SECONDS``."""
        tally, acks = self.send(origin, outcomes)
        self.confirm(acks)
        return tally

    def confirm(self, acks: Acks) -> None:
        """Wait for ``acks``; raises :class:`Unavailable` when they did not all come."""
        if not acks.wait(self.settings.collect_ack_timeout_seconds):
            reasons = "; ".join(sorted(set(acks.errors))) or "no acknowledgement in time"
            raise Unavailable(f"Kafka did not store the records: {reasons}")

    def _dead_letter(
        self, origin: Origin, rejection: Rejection, raw: bytes | None, index: int, acks: Acks
    ) -> None:
        value, kept = dlq_value(raw)
        headers: list[tuple[str, str | bytes | None]] = [
            *dlq_headers(
                rejection.reason, rejection.detail, STAGE, f"{STAGE}:{origin.source}", -1, index
            ),
            ("custody-tenant", origin.tenant.encode()),
            *kept,
        ]
        self._dead_letters.produce(
            topics.DLQ,
            value,
            origin.source.encode(),
            headers=headers,
            on_delivery=acks.on_dead_letter,
        )

    def _poll_dead_letters(self) -> None:
        while not self._closed.is_set():
            self._dead_letters.poll(0.1)

    def close(self) -> None:
        """Deliver what is buffered, then stop."""
        try:
            self.events.close(self.settings.collect_ack_timeout_seconds)
        finally:
            self._closed.set()
            self._poller.join()
            self._dead_letters.flush(self.settings.collect_ack_timeout_seconds)
