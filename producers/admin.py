"""Topic administration: create the contract topics with explicit partition counts.

Brokers in this project's development stack do not create topics automatically, and a
topic created implicitly would get the broker's default partition count, which breaks the
"one custody tree, one partition" rule when counts differ between topics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]


class TopicSetupError(RuntimeError):
    """Topics could not be created or did not appear in time."""


def ensure_topics(
    admin_config: Mapping[str, Any],
    partitions: Mapping[str, int],
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> list[str]:
    """Create each topic of ``partitions`` that is missing; return the ones created.

    Waits until every topic is visible in the metadata with its partitions.
    """
    admin = AdminClient(dict(admin_config))
    deadline = time.monotonic() + timeout
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise TopicSetupError(f"cannot reach the broker: {exc}") from None
    missing = [name for name in partitions if name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(name, partitions[name], replication_factor) for name in missing],
            operation_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=max(0.1, deadline - time.monotonic()))
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TopicSetupError(f"cannot create {name}: {exc}") from None
    while True:
        topics = admin.list_topics(timeout=max(0.1, deadline - time.monotonic())).topics
        absent = [
            name
            for name, count in partitions.items()
            if name not in topics or len(topics[name].partitions) < count
        ]
        if not absent:
            return missing
        if time.monotonic() >= deadline:
            raise TopicSetupError(f"topics not ready after {timeout}s: {', '.join(absent)}")
        time.sleep(0.1)
