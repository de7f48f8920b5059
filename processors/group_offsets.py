"""The correlator's consumer-group offsets, read with a client of its own.

faust's consumer runs in its own thread and is busy during a rebalance; a separate
confluent-kafka consumer (same group id, never subscribed, so it never joins the group)
answers the two questions the offset guard asks without touching faust's state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, TopicPartition

_TIMEOUT_S = 10.0


def start_offsets(config: dict[str, Any], topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """Where processing of each partition starts: the group's committed offset, or the
    log's first offset where the group has committed none."""
    consumer = Consumer(config)
    try:
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in partitions], timeout=_TIMEOUT_S
        )
        return {
            tp.partition: tp.offset if tp.offset >= 0 else _first(consumer, topic, tp.partition)
            for tp in committed
        }
    finally:
        consumer.close()


def first_offset(config: dict[str, Any], topic: str, partition: int) -> int:
    """The partition's first offset still in the log (retention moves it on)."""
    consumer = Consumer(config)
    try:
        return _first(consumer, topic, partition)
    finally:
        consumer.close()


def _first(consumer: Consumer, topic: str, partition: int) -> int:
    low, _high = consumer.get_watermark_offsets(
        TopicPartition(topic, partition), timeout=_TIMEOUT_S
    )
    return int(low)
