"""``custody collect --otlp-topic NAME``: OTLP traces from a Kafka topic, as the
OpenTelemetry Collector's Kafka exporter writes them (``otlp_proto`` encoding: one
``TracesData`` message per record, the same wire shape as an export request).

A batch is mapped once and published; its offsets are committed only after Kafka acked
every event (:class:`~processors.batch_consumer.BatchConsumer`); a record that is no OTLP
message is dead-lettered with its reason. While Kafka cannot take the events the same
batch's outcomes are published again (the assembler has seen its spans: they must not be
fed to it twice).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from processors.batch_consumer import BatchConsumer, BatchLimits, Retry
from processors.collect.metrics import CollectMetrics
from processors.collect.otlp_state import Assemblers
from processors.collect.otlp_wire import OtlpDecodeError, spans_of_protobuf
from processors.collect.publisher import CollectPublisher, Unavailable
from processors.collect.records import Origin, Outcome
from processors.storage.sink import Record, Rejected
from producers.settings import Settings

MALFORMED = "otlp_malformed_protobuf"


class OtlpTopicReader(BatchConsumer):
    """Reads one topic of OTLP traces for one origin (the tenant and source it is run for)."""

    stage = "collect"

    def __init__(
        self,
        settings: Settings,
        topic: str,
        origin: Origin,
        assemblers: Assemblers,
        publisher: CollectPublisher,
        collect_metrics: CollectMetrics | None = None,
    ) -> None:
        super().__init__(
            settings,
            f"custody-collect-otlp-{origin.source}",
            [topic],
            BatchLimits(records=500, size=16 * 1024 * 1024, seconds=0.2),
            settings.collect_ack_timeout_seconds,
        )
        self.origin = origin
        self.assemblers = assemblers
        self.publisher = publisher
        self.collect_metrics = collect_metrics
        self.waiting: str | None = None
        self.spans = 0
        self._unacked: tuple[tuple[str, int, int, int], list[Outcome], list[Rejected]] | None = None

    def process(self, records: list[Record]) -> Sequence[Rejected]:
        """Map the batch's spans (once), publish the events, return the malformed records."""
        first = records[0]
        key = (first.topic, first.partition, first.offset, len(records))
        if self._unacked is None or self._unacked[0] != key:
            self._unacked = (key, *self._mapped(records))
        _, outcomes, rejected = self._unacked
        started = time.monotonic()
        try:
            tally = self.publisher.publish(self.origin, ((o, None) for o in outcomes))
        except Unavailable as exc:
            raise Retry(str(exc)) from None
        if self.collect_metrics is not None:
            self.collect_metrics.counted("otlp", tally, time.monotonic() - started)
        self._unacked = None
        return rejected

    def _mapped(self, records: list[Record]) -> tuple[list[Outcome], list[Rejected]]:
        outcomes: list[Outcome] = []
        rejected: list[Rejected] = []
        for record in records:
            try:
                spans = spans_of_protobuf(record.value or b"")
            except OtlpDecodeError as exc:
                rejected.append(Rejected(record, MALFORMED, str(exc)))
                continue
            self.spans += len(spans)
            outcomes += self.assemblers.feed(self.origin, spans, time.time())
        return outcomes, rejected

    def note_waiting(self, error: str | None) -> None:
        self.waiting = error
