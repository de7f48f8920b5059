"""A real Alertmanager (Debian's ``prometheus-alertmanager``) on a free port, running the
shipped configuration with its receivers pointed at a webhook receiver the test owns.

The configuration is ``infra/alertmanager/alertmanager.yml`` as shipped (its routes,
grouping and receivers), with two changes a test needs: every receiver's webhook URL is
the test's receiver (``/<receiver name>``), and the group waits and intervals are short.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from tests.support.broker import free_port
from tests.support.polling import until

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "infra" / "alertmanager" / "alertmanager.yml"
# Debian's package names the binary after itself; upstream's is `alertmanager`.
BINARIES = ("prometheus-alertmanager", "alertmanager")
# Short enough for a test, long enough that a burst of alerts lands in one notification.
TEST_TIMINGS = {"group_wait": "1s", "group_interval": "1s"}


def binary() -> str | None:
    """The Alertmanager binary on this machine, if any."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_alertmanager() -> str:
    """The binary, or skip: ``make system-deps`` installs prometheus-alertmanager."""
    found = binary()
    if found is None:
        pytest.skip("prometheus-alertmanager is not installed (make system-deps)")
    return found


@dataclass(frozen=True)
class Notification:
    """One webhook post: the receiver it was for and its payload."""

    receiver: str
    payload: dict[str, Any]

    @property
    def alert_ids(self) -> list[str]:
        return [alert["labels"]["alert_id"] for alert in self.payload["alerts"]]

    @property
    def group_labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.payload["groupLabels"]
        return labels


class WebhookReceiver:
    """An HTTP server that keeps every webhook Alertmanager posts to it."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self.notifications)

    def alert_ids(self) -> set[str]:
        """Every alert id notified so far, to any receiver."""
        return {alert_id for n in self.received() for alert_id in n.alert_ids}

    def _keep(self, receiver: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self.notifications.append(Notification(receiver, payload))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        keep = self._keep

        class Handler(BaseHTTPRequestHandler):
            kept: ClassVar = staticmethod(keep)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.kept(self.path.strip("/"), json.loads(self.rfile.read(length)))
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def config_for_test(receiver_url: str, source: Path = SHIPPED_CONFIG) -> dict[str, Any]:
    """The shipped configuration, its webhooks sent to ``receiver_url``/<receiver name>
    and its waits shortened."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = f"{receiver_url}/{receiver['name']}"

    def shorten(route: dict[str, Any]) -> None:
        for key, value in TEST_TIMINGS.items():
            if key in route or route is config["route"]:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    return config


class RunningAlertmanager:
    """An Alertmanager process the test owns; its state (notification log, silences)
    survives a stop and start in ``directory``, as a deployment's does."""

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        self.binary = require_alertmanager()
        self.directory = directory
        self.config_path = directory / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.directory / "alertmanager.log").open("ab")
        # A fixed binary and arguments of the test's own.
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                # A single instance: no gossip port.
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        until(self.ready, 30, f"Alertmanager ready on {self.url}", interval=0.1)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                return bool(answer.status == HTTPStatus.OK)
        except OSError:
            return False

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts it holds now (GET /api/v2/alerts)."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as answer:
            held: list[dict[str, Any]] = json.loads(answer.read())
            return held

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it: it saves its notification log."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@contextmanager
def alertmanager_with_receiver(
    directory: Path,
) -> Iterator[tuple[RunningAlertmanager, WebhookReceiver]]:
    """A started Alertmanager on the shipped configuration and its webhook receiver."""
    with WebhookReceiver() as receiver:
        manager = RunningAlertmanager(config_for_test(receiver.url), directory)
        manager.start()
        try:
            yield manager, receiver
        finally:
            manager.stop()
