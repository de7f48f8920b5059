"""Topic administration: create the contract topics with explicit partition counts.

Brokers in this project's development stack do not create topics automatically, and a
topic created implicitly would get the broker's default partition count, which breaks the
"one custody tree, one partition" rule when counts differ between topics.
"""

from __future__ import annotations

import concurrent.futures
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

    A topic that already exists is left as it is: its partition count is the operator's
    choice. Waits until every created topic is visible with its partitions.
    """
    admin = AdminClient(dict(admin_config))
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        return max(0.1, deadline - time.monotonic())

    try:
        existing = admin.list_topics(timeout=timeout).topics
        missing = [name for name in partitions if name not in existing]
        if not missing:
            return []
        futures = admin.create_topics(
            [NewTopic(name, partitions[name], replication_factor) for name in missing],
            operation_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=remaining())
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TopicSetupError(f"cannot create {name}: {exc}") from None
        while True:
            topics = admin.list_topics(timeout=remaining()).topics
            absent = [
                name
                for name in missing
                if name not in topics or len(topics[name].partitions) < partitions[name]
            ]
            if not absent:
                return missing
            if time.monotonic() >= deadline:
                raise TopicSetupError(f"topics not ready after {timeout}s: {', '.join(absent)}")
            time.sleep(0.1)
    except (KafkaException, concurrent.futures.TimeoutError) as exc:
        raise TopicSetupError(f"broker at {admin_config.get('bootstrap.servers')}: {exc}") from None
