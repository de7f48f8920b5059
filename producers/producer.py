"""``CustodyProducer``: publish provenance events to ``custody.events.v1``.

Guarantees, each one a choice a security team would make:

- **Idempotent, acks=all, lz4**: the broker stores each event once, on every replica.
- **Keyed by root_task_id**: a whole custody tree lands in one partition, in order.
- **Bounded buffer with backpressure**: at most ``CUSTODY_PRODUCER_BUFFER_MESSAGES``
  events wait in memory. When it is full, :meth:`CustodyProducer.publish` waits for room
  for up to ``CUSTODY_PRODUCER_BUFFER_TIMEOUT_SECONDS`` and then raises
  :class:`BackpressureTimeout`: an event is never dropped silently and a caller never
  blocks forever.
- **Delivery reports surfaced**: each publish may take an ``on_delivery`` callback; every
  failure is also kept, and :meth:`CustodyProducer.flush` raises :class:`DeliveryError`
  naming the events that did not make it.
- **Evidence before access**: :meth:`CustodyProducer.publish_sync` returns only once the
  broker acknowledged the event and raises :class:`DeliveryError` with the reason when it
  could not within ``CUSTODY_PRODUCER_DELIVERY_TIMEOUT_MS``, so a credential broker can
  refuse to issue a token whose issuance was not recorded. The wait is librdkafka's own
  delivery timeout, so the answer is librdkafka's verdict, not a guess. One caveat: an
  event that was in flight when the timeout struck may still have been stored (librdkafka
  calls it "possibly persisted"). The caller refuses the token all the same, and the
  stored issuance then shows downstream as a token never used and never revoked: the
  error is on the safe side.
- **Hash chain**: events are numbered per producer instance and linked by ``prev_hash``
  (see :mod:`producers.chain`); thread-safe. An event that was handed to Kafka but then
  failed delivery leaves a gap in the stored chain, which is reported as an evidence gap:
  lost evidence stays visible.
- **No secrets**: an event holding a secret-looking value raises
  :class:`schemas.secrets.SecretValueError` before anything is sent.

:class:`producers.aio.AsyncCustodyProducer` gives the same guarantees to asyncio code: it
is this producer, with every wait awaited.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, TypedDict, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from producers.admin import ensure_topics
from producers.chain import HashChain
from producers.settings import Settings
from schemas import catalog, topics
from schemas.codec import AvroCodec, body_bytes, event_to_avro
from schemas.models import Envelope, validate_event
from schemas.registry import SchemaRegistryClient
from schemas.secrets import may_hold_secret_inline, reject_secrets

_log = logging.getLogger(__name__)
_kafka_log = logging.getLogger("custody.librdkafka")

# A sync publish waits this much longer than the delivery timeout for librdkafka's report.
_SYNC_MARGIN_SECONDS = 5.0
# How often a publish waiting for buffer room tries again.
ROOM_WAIT_SECONDS = 0.01


class PublishError(RuntimeError):
    """An event could not be published."""


class BackpressureTimeout(PublishError):
    """The bounded buffer stayed full for the whole buffer timeout."""


class DeliveryError(PublishError):
    """The broker did not acknowledge one or more events."""

    def __init__(self, message: str, failed_event_ids: list[str]) -> None:
        super().__init__(message)
        self.failed_event_ids = failed_event_ids


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """The broker's answer for one event: where it was stored, or why it was not."""

    event_id: str
    topic: str
    partition: int | None
    offset: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


DeliveryCallback = Callable[[DeliveryReport], None]


class Stamp(NamedTuple):
    """Where a published event sits in its producer instance's hash chain."""

    event_id: str
    producer_instance: str
    seq: int
    prev_hash: str | None


def validated(event: Envelope | Mapping[str, Any]) -> Envelope:
    """The event as a validated model (a model is valid by construction)."""
    return event if isinstance(event, Envelope) else validate_event(event)


def no_report_error(event_id: str, wait: float) -> DeliveryError:
    """The error of a sync publish whose delivery report did not come in time."""
    return DeliveryError(f"event {event_id}: no delivery report within {wait:.1f}s", [event_id])


def confirmed(report: DeliveryReport) -> DeliveryReport:
    """The report of a stored event; raises :class:`DeliveryError` for a failed one."""
    if report.error is not None:
        raise DeliveryError(f"event {report.event_id}: {report.error}", [report.event_id])
    return report


def default_producer_instance() -> str:
    """A producer-instance id unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class ProducerOptions(TypedDict, total=False):
    """How a :class:`CustodyProducer` starts, beside its settings (its parameters of the
    same names)."""

    producer_instance: str | None
    create_topics: bool
    config_overrides: Mapping[str, Any] | None


class CustodyProducer:
    """Publishes events, stamping each with this instance's hash chain."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        producer_instance: str | None = None,
        create_topics: bool = True,
        config_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.producer_instance = producer_instance or default_producer_instance()
        registry_url = self.settings.schema_registry_url
        registry = SchemaRegistryClient(registry_url.get_secret_value()) if registry_url else None
        self._codec = AvroCodec(registry)
        if create_topics:
            ensure_topics(
                self.settings.kafka_admin(),
                {topics.EVENTS: self.settings.event_partitions},
                self.settings.topic_replication,
            )
        # librdkafka's own log lines go through Python logging, not straight to stderr.
        self._config = {
            **self.settings.kafka_producer(),
            "logger": _kafka_log,
            **(config_overrides or {}),
        }
        self._producer = Producer(self._config)
        # Set by a delivery report with a fatal error; the next publish replaces the
        # Kafka producer (see _replace_if_fatal).
        self._fatal = threading.Event()
        self._lock = threading.Lock()
        self._chain = HashChain()
        self._failures: dict[str, str] = {}
        self._counts_lock = threading.Lock()
        self.published = 0
        self.delivered = 0
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._serve_reports, daemon=True)
        self._poller.start()

    # ---- publishing ------------------------------------------------------------------

    def publish(
        self,
        event: Envelope | Mapping[str, Any],
        on_delivery: DeliveryCallback | None = None,
        *,
        keep_failure: bool = True,
    ) -> Stamp:
        """Validate, stamp, encode and hand an event to Kafka; returns its chain position.

        ``event`` is a model (built with :mod:`producers.events`) or a dict in the JSON
        or Python form. An unstamped event gets the next link of this producer's chain; a
        stamped one (a replay of another instance's record) passes through unchanged.
        Delivery callbacks run on the producer's reporting thread and must not publish.
        While the buffer is full this waits for room, then raises
        :class:`BackpressureTimeout`.
        """
        model = validated(event)
        deadline: float | None = None
        while True:
            stamp = self.try_publish(model, on_delivery, keep_failure=keep_failure)
            if stamp is not None:
                return stamp
            deadline = self.backpressure_deadline(model, deadline)
            # The reporting thread frees buffer space as the broker acknowledges.
            time.sleep(ROOM_WAIT_SECONDS)

    def try_publish(
        self,
        model: Envelope,
        on_delivery: DeliveryCallback | None = None,
        *,
        keep_failure: bool = True,
    ) -> Stamp | None:
        """One attempt of :meth:`publish` that never waits: None when the buffer is full.

        An event the buffer refused took no link of the chain; the next attempt stamps it
        anew. The lock is held for the attempt only, so a caller waiting for room (a
        thread, or an event loop in :class:`producers.aio.AsyncCustodyProducer`) never
        holds up the others.
        """
        if self._closed.is_set():
            raise PublishError("producer is closed")
        with self._lock:
            stamp, message = self._stamp_and_encode(model)
            if not self._produce(model, message, on_delivery, keep_failure):
                return None
            if model.seq is None:
                self._chain.advance(stamp.seq, body_bytes(message))
            self.published += 1
        return stamp

    def backpressure_deadline(self, model: Envelope, deadline: float | None) -> float:
        """When a wait for buffer room that started at the first refusal must end; raises
        :class:`BackpressureTimeout` once it has passed."""
        now = time.monotonic()
        if deadline is None:
            return now + self.settings.producer_buffer_timeout_seconds
        if now >= deadline:
            raise BackpressureTimeout(
                f"event {model.event_id} not accepted: the buffer of "
                f"{self.settings.producer_buffer_messages} events stayed full for "
                f"{self.settings.producer_buffer_timeout_seconds}s"
            )
        return deadline

    @property
    def sync_wait_seconds(self) -> float:
        """How long :meth:`publish_sync` waits for librdkafka's verdict on an event."""
        return self.settings.producer_delivery_timeout_ms / 1000 + _SYNC_MARGIN_SECONDS

    def publish_sync(self, event: Envelope | Mapping[str, Any]) -> DeliveryReport:
        """Publish and wait for the broker's acknowledgement.

        Raises :class:`DeliveryError` with the reason if the event was not stored.
        """
        done = threading.Event()
        reports: list[DeliveryReport] = []

        def record(report: DeliveryReport) -> None:
            reports.append(report)
            done.set()

        event_id = self.publish(event, on_delivery=record, keep_failure=False).event_id
        wait = self.sync_wait_seconds
        if not done.wait(wait):
            raise no_report_error(event_id, wait)
        return confirmed(reports[0])

    def _stamp_and_encode(self, model: Envelope) -> tuple[Stamp, bytes]:
        if model.seq is None:
            link = self._chain.next_link()
            stamp = Stamp(model.event_id, self.producer_instance, link.seq, link.prev_hash)
            datum = event_to_avro(model, (stamp.producer_instance, stamp.seq, stamp.prev_hash))
        else:
            # A stamped envelope names its producer instance with its seq (the model checks).
            instance = cast(str, model.producer_instance)
            stamp = Stamp(model.event_id, instance, model.seq, model.prev_hash)
            datum = event_to_avro(model)
        message = self._codec.encode(catalog.EVENT, datum)
        # Not may_hold_secret: Hyperscan lets go of the GIL for each scan, which hands the
        # interpreter to the reporting thread on every event (measured: 18 µs per event).
        if may_hold_secret_inline(message):
            reject_secrets(datum)
        return stamp, message

    def _produce(
        self,
        model: Envelope,
        message: bytes,
        on_delivery: DeliveryCallback | None,
        keep_failure: bool,
    ) -> bool:
        """Hand the message to Kafka; False when the buffer is full."""
        report: Callable[[KafkaError | None, Message], None] = self._on_delivery
        if on_delivery is not None or not keep_failure:
            report = partial(
                self._on_delivery,
                event_id=model.event_id,
                callback=on_delivery,
                keep_failure=keep_failure,
            )
        key = model.root_task_id.encode()
        self._replace_if_fatal()
        while True:
            try:
                self._producer.produce(topics.EVENTS, message, key, on_delivery=report)
                return True
            except KafkaException as exc:
                if not exc.args[0].fatal():
                    raise
                self._fatal.set()
                self._replace_if_fatal()
            except BufferError:
                return False

    def _replace_if_fatal(self) -> None:
        """After a fatal error, start a new Kafka producer (called under ``_lock``).

        An idempotent producer whose message timed out must bump its epoch; a broker that
        refuses the bump (the local Tansu answers PRODUCER_FENCED) leaves it unusable for
        good. Its undelivered events are reported failed, as every failure is; the chain
        goes on, so an event that was never stored shows as a gap to ``custody verify``.
        """
        if not self._fatal.is_set():
            return
        _log.warning("Kafka producer hit a fatal error: starting a new one")
        old, self._producer = self._producer, Producer(self._config)
        self._fatal.clear()
        # Its remaining reports (failures) reach the callbacks before it goes.
        old.flush(1.0)

    def _on_delivery(
        self,
        error: KafkaError | None,
        msg: Message,
        event_id: str | None = None,
        callback: DeliveryCallback | None = None,
        keep_failure: bool = True,
    ) -> None:
        """librdkafka's report for one event; runs on whichever thread polls."""
        reason = None if error is None else f"{error.name()}: {error.str()}"
        if error is not None and (error.fatal() or error.code() == KafkaError.PRODUCER_FENCED):
            self._fatal.set()
        with self._counts_lock:
            if reason is None:
                self.delivered += 1
            elif keep_failure:
                # Only failures need the event id, so a plain publish does not carry it:
                # it is read back from the message, off the hot path.
                failed_id = event_id or self._codec.decode_event(msg.value() or b"").event_id
                self._failures[failed_id] = reason
        if callback is None:
            return
        report = DeliveryReport(
            event_id or "",
            msg.topic() or topics.EVENTS,
            msg.partition() if reason is None else None,
            msg.offset() if reason is None else None,
            reason,
        )
        try:
            callback(report)
        except Exception:
            # A failing caller callback must not stop the reports of every other event.
            _log.exception("delivery callback failed for event %s", event_id)

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    # ---- draining --------------------------------------------------------------------

    @property
    def failed_event_ids(self) -> list[str]:
        with self._counts_lock:
            return list(self._failures)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every buffered event's delivery report.

        Raises :class:`DeliveryError` naming the events that failed since the last flush,
        or that were still undelivered when ``timeout`` ran out.
        """
        wait = timeout if timeout is not None else self.settings.producer_delivery_timeout_ms / 1000
        remaining = self._producer.flush(wait)
        with self._counts_lock:
            failures = dict(self._failures)
            self._failures.clear()
        if failures or remaining:
            reasons = sorted(set(failures.values()))
            raise DeliveryError(
                f"{len(failures)} event(s) not delivered ({'; '.join(reasons) or 'n/a'}), "
                f"{remaining} still pending",
                list(failures),
            )

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop; raises like :meth:`flush` if events were not delivered."""
        if self._closed.is_set():
            return
        try:
            self.flush(timeout)
        finally:
            self._closed.set()
            self._poller.join()

    def __enter__(self) -> CustodyProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
