"""A real Tansu broker (from the pinned wheel) on a free loopback port, the fixtures that
give each test its own, a plain consumer that reads topics back (and typed access to what
it read), and the installed ``custody`` command pointed at a broker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from processors.broker import start_broker, wait_until_ready
from producers.admin import ensure_topics
from producers.settings import Settings
from schemas.topics import EVENTS

PARTITIONS = 6
CUSTODY = str(Path(sys.executable).parent / "custody")


def free_port() -> int:
    """A loopback port no one listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RunningBroker:
    """A Tansu process the test owns."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start_broker("127.0.0.1", self.port)
        wait_until_ready({"bootstrap.servers": self.bootstrap})

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Terminate the broker, killing it if it has not exited within ten seconds."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def local_broker() -> Iterator[str]:
    """A fresh broker for a block of code (a benchmark); yields its bootstrap address."""
    running = RunningBroker()
    running.start()
    try:
        yield running.bootstrap
    finally:
        running.stop()


@pytest.fixture
def broker() -> Iterator[RunningBroker]:
    running = RunningBroker()
    running.start()
    yield running
    running.kill()


@pytest.fixture
def settings(broker: RunningBroker) -> Settings:
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_profile="development",
        event_partitions=PARTITIONS,
        producer_delivery_timeout_ms=5000,
    )
    ensure_topics(settings.kafka_admin(), settings.event_topic_partitions())
    return settings


def consume(
    settings: Settings,
    until: Callable[[list[Message]], bool],
    topic: str = EVENTS,
    timeout: float = 60.0,
) -> list[Message]:
    """Read ``topic`` from the beginning of every partition until ``until(messages)``.

    Partitions are assigned, not joined as a group, so no group-join wait is involved; end
    offsets are never consulted (Tansu reports them wrong after multi-record batches).
    """
    consumer = Consumer(
        {**settings.kafka_common(), "group.id": "test-reader", "enable.auto.commit": False}
    )
    metadata = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while not until(messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met after {timeout}s: {len(messages)} read")
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is None:
                    messages.append(message)
    finally:
        consumer.close()
    return messages


def read_to_end(settings: Settings, topic: str = EVENTS, timeout: float = 60.0) -> list[Message]:
    """Everything on ``topic`` up to now: a marker is written to each partition after the
    fact and the topic is read until every partition's marker arrived (markers dropped)."""
    marker = f"end-marker-{time.monotonic_ns()}".encode()
    producer = Producer(settings.kafka_common())
    partitions = producer.list_topics(topic, timeout=10).topics[topic].partitions
    for partition in partitions:
        producer.produce(topic, value=marker, partition=partition)
    assert producer.flush(30) == 0

    def all_markers(messages: list[Message]) -> bool:
        seen = {m.partition() for m in messages if m.value() == marker}
        return seen == set(partitions)

    return [m for m in consume(settings, all_markers, topic, timeout) if m.value() != marker]


def payload(message: Message) -> bytes:
    """A consumed record's value (every record the tests read back carries one)."""
    value = message.value()
    assert value is not None, f"no value at {message.topic()} {message.partition()}"
    return value


def header_list(message: Message) -> list[tuple[str, bytes]]:
    """A consumed record's headers in order, an absent value as b"" (a consumer gets them
    as (name, bytes) pairs)."""
    headers = message.headers() or []
    assert isinstance(headers, list), headers
    pairs: list[tuple[str, bytes]] = []
    for name, value in headers:
        assert not isinstance(value, str), name
        pairs.append((name, value or b""))
    return pairs


def run_custody(
    bootstrap: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``custody`` command against ``bootstrap``; a query API or
    collector it starts listens on a port of the system's choosing (its address is recorded
    under .custody)."""
    return subprocess.run(
        [CUSTODY, *args],
        cwd=cwd,
        env={
            **os.environ,
            "CUSTODY_KAFKA_BOOTSTRAP": bootstrap,
            "CUSTODY_SERVE_PORT": "0",
            "CUSTODY_COLLECT_ADDRESS": "127.0.0.1:0",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
