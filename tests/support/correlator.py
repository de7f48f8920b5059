"""A ``custody correlate`` worker (or another role) as a process of its own, and a reader
of the alerts it writes to custody.alerts.v1 (the tests of one worker, its restarts and
its scale-out; notify's)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from schemas import topics
from schemas.codec import AvroCodec
from tests.support.broker import CUSTODY, payload

CODEC = AvroCodec()


class Worker:
    """``custody <role>`` (a correlator by default) with ``env``, appending its output to
    the file ``log``."""

    def __init__(self, env: dict[str, str], log: str, role: str = "correlate") -> None:
        self.env, self.log, self.role = env, log, role
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [CUSTODY, self.role], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class AlertReader:
    """Reads custody.alerts.v1 from the beginning of every partition, keeping every alert id
    seen, in order (the topic is at-least-once: an id may come twice)."""

    def __init__(self, bootstrap: str, group: str = "alerts-test") -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        meta = self.consumer.list_topics(topics.ALERTS, timeout=10)
        self.consumer.assign(
            [TopicPartition(topics.ALERTS, p, 0) for p in meta.topics[topics.ALERTS].partitions]
        )
        self.ids: list[str] = []

    def read(self) -> set[str]:
        """Read what has come; every alert id seen so far."""
        for message in self.consumer.consume(1000, timeout=0.5):
            if message.error() is None:
                alert = CODEC.decode_alert(payload(message))
                assert message.key() == alert.alert_id.encode()
                self.ids.append(alert.alert_id)
        return set(self.ids)

    def until(self, condition: Callable[[], bool], timeout: float, worker: Worker) -> None:
        """Read until ``condition`` holds; fail if ``worker`` dies or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert worker.alive(), f"worker died, see {worker.log}"
            assert time.monotonic() < deadline, f"{len(set(self.ids))} alerts after {timeout}s"
            self.read()

    def keep_reading(self, seconds: float) -> None:
        """Read for ``seconds`` more: a window in which an alert not due would show."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.read()

    def close(self) -> None:
        self.consumer.close()
