"""``custody notify`` between a real broker and a real Alertmanager running the shipped
configuration: every alert of a simulation reaches a webhook receiver, grouped and routed
as the configuration says; an Alertmanager stopped for 30 s, or a notify killed with
``kill -9``, loses nothing and doubles nothing."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer

from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec
from schemas.models import Alert
from tests.support.alertmanager import (
    SHIPPED_CONFIG,
    Notification,
    RunningAlertmanager,
    WebhookReceiver,
    alertmanager_with_receiver,
)
from tests.support.broker import header_list, read_to_end
from tests.support.correlator import Worker
from tests.support.pipeline import simulation
from tests.support.polling import until
from tests.support.stack import CONFIG
from tests.support.stored import correlate
from tests.support.trees import traffic

pytestmark = pytest.mark.integration

CODEC = AvroCodec()
# Stopped this long mid-stream, as the issue asks.
OUTAGE_SECONDS = 30.0


class NotifyProcess(Worker):
    """``custody notify`` with ``env``, its output appended to ``log``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__(env, str(log), "notify")

    def state(self) -> dict[str, Any]:
        """What it tells ``custody status`` (empty before its first write)."""
        try:
            state: dict[str, Any] = json.loads(
                (Path(self.env["CUSTODY_HOME"]) / "run" / "notify.state.json").read_text()
            )
        except (OSError, ValueError):
            return {}
        return state


@dataclass(frozen=True)
class Rig:
    """A broker, an Alertmanager with its receiver, and notify between them."""

    settings: Settings
    manager: RunningAlertmanager
    receiver: WebhookReceiver
    notify: NotifyProcess


@pytest.fixture(scope="module")
def simulated_alerts() -> list[Alert]:
    """The alerts of a simulation and of mixed traffic (which has CRITICAL ones), as the
    correlator raises them."""
    _, simulated = correlate(simulation(roots=100, seed=1).events)
    _, mixed = correlate(traffic(24, CONFIG)[0])
    alerts = simulated + mixed
    assert len({a.alert_id for a in alerts}) == len(alerts)
    assert len({a.alert_type for a in alerts}) >= 5
    assert any(a.severity.name == "CRITICAL" for a in alerts)
    assert any(a.severity.name != "CRITICAL" for a in alerts)
    return alerts


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[RunningAlertmanager, WebhookReceiver]]:
    with alertmanager_with_receiver(tmp_path) as running:
        yield running


@pytest.fixture
def notify_env(
    settings: Settings, alertmanager: tuple[RunningAlertmanager, WebhookReceiver], tmp_path: Path
) -> dict[str, str]:
    manager, _ = alertmanager
    return {
        **os.environ,
        "CUSTODY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CUSTODY_KAFKA_PROFILE": "development",
        "CUSTODY_KAFKA_SESSION_TIMEOUT_MS": "2000",
        "CUSTODY_HOME": str(tmp_path / "home"),
        "CUSTODY_ALERTMANAGER_URL": manager.url,
        "CUSTODY_EXPLORER_URL": "http://explorer.test:8470",
        "CUSTODY_NOTIFY_METRICS_ADDRESS": "127.0.0.1:0",
        "CUSTODY_NOTIFY_RETRY_MAX_SECONDS": "2",
        "CUSTODY_NOTIFY_RESEND_SECONDS": "2",
    }


@pytest.fixture
def rig(
    settings: Settings,
    alertmanager: tuple[RunningAlertmanager, WebhookReceiver],
    notify_env: dict[str, str],
    tmp_path: Path,
) -> Iterator[Rig]:
    process = NotifyProcess(notify_env, tmp_path / "notify.log")
    process.start()
    yield Rig(settings, *alertmanager, process)
    process.kill()


def publish(settings: Settings, alerts: list[Alert]) -> None:
    """The alerts on custody.alerts.v1, keyed by alert id as the correlator writes them."""
    producer = Producer(settings.kafka_common())
    for alert in alerts:
        producer.produce(topics.ALERTS, CODEC.encode_alert(alert), key=alert.alert_id.encode())
    assert producer.flush(30) == 0


def notified_all(receiver: WebhookReceiver, alerts: list[Alert], notify: NotifyProcess) -> None:
    wanted = {a.alert_id for a in alerts}

    def missing() -> str:
        return f"{len(wanted - receiver.alert_ids())} of {len(wanted)} alerts not notified"

    until(lambda: wanted <= receiver.alert_ids(), 120, missing)
    assert notify.process is not None
    assert notify.process.poll() is None, Path(notify.log).read_text()


def held_once_each(manager: RunningAlertmanager, alerts: list[Alert]) -> None:
    """Alertmanager holds one alert per Custody alert: a post repeated (a retry, a
    replay, a resend) updated the same alert."""
    held = [a["labels"]["alert_id"] for a in manager.alerts() if a["labels"].get("source")]
    assert sorted(held) == sorted(a.alert_id for a in alerts)


def no_alert_twice_in_a_notification(notifications: list[Notification]) -> None:
    for notification in notifications:
        ids = notification.alert_ids
        assert len(ids) == len(set(ids)), notification.payload["groupKey"]


def test_every_alert_reaches_its_receiver_grouped_and_routed_as_shipped(
    rig: Rig, simulated_alerts: list[Alert]
) -> None:
    settings, manager, receiver, notify = rig.settings, rig.manager, rig.receiver, rig.notify
    raw = Producer(settings.kafka_common())
    raw.produce(topics.ALERTS, b"not an alert", key=b"garbage")
    assert raw.flush(10) == 0
    publish(settings, simulated_alerts)
    notified_all(receiver, simulated_alerts, notify)

    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())["route"]
    group_by = shipped["group_by"]
    by_id = {a.alert_id: a for a in simulated_alerts}
    notifications = receiver.received()
    for notification in notifications:
        alerts = [by_id[i] for i in notification.alert_ids]
        critical = {a.severity.name == "CRITICAL" for a in alerts}
        # CRITICAL alerts go to their own receiver, never with the rest.
        assert critical == {notification.receiver == "custody-critical"}
        assert notification.receiver in ("custody", "custody-critical")
        posted = notification.payload["alerts"]
        assert set(notification.group_labels) == set(group_by)
        for alert in posted:
            assert {k: alert["labels"][k] for k in group_by} == notification.group_labels
            assert alert["annotations"]["runbook_url"].endswith(
                "#" + alert["labels"]["alertname"].lower()
            )
            assert alert["annotations"]["explorer_url"].startswith("http://explorer.test:8470/#")
    no_alert_twice_in_a_notification(notifications)
    held_once_each(manager, simulated_alerts)

    dead = read_to_end(settings, topics.DLQ)
    assert len(dead) == 1
    headers = dict(header_list(dead[0]))
    assert headers["custody-dlq-stage"] == b"notify"
    assert headers["custody-dlq-reason"] == b"unknown_wire_format"
    assert dead[0].value() == b"not an alert"


def test_an_alertmanager_away_for_30s_loses_nothing_and_doubles_nothing(
    rig: Rig, simulated_alerts: list[Alert]
) -> None:
    settings, manager, receiver, notify = rig.settings, rig.manager, rig.receiver, rig.notify
    half = len(simulated_alerts) // 2
    first, second = simulated_alerts[:half], simulated_alerts[half:]
    publish(settings, first)
    notified_all(receiver, first, notify)

    manager.stop()
    stopped = time.monotonic()
    publish(settings, second)
    until(
        lambda: notify.state().get("waiting_for_alertmanager") is True,
        OUTAGE_SECONDS,
        "notify never reported waiting for Alertmanager",
    )
    assert receiver.alert_ids().isdisjoint(a.alert_id for a in second)
    # The outage lasts its full length: what is measured is the recovery after it.
    until(lambda: time.monotonic() - stopped >= OUTAGE_SECONDS, OUTAGE_SECONDS + 5, "outage")
    manager.start()

    notified_all(receiver, simulated_alerts, notify)
    until(
        lambda: notify.state().get("waiting_for_alertmanager") is False,
        30,
        "notify still waiting for Alertmanager",
    )
    assert notify.state()["retries"] >= 1
    no_alert_twice_in_a_notification(receiver.received())
    # Alertmanager forgot its alerts in the restart: the resend taught it those of the
    # first half again, and the retried batch the rest.
    until(lambda: len(manager.alerts()) == len(simulated_alerts), 30, "alerts relearned")
    held_once_each(manager, simulated_alerts)


def test_a_notify_killed_mid_stream_loses_nothing(
    settings: Settings,
    alertmanager: tuple[RunningAlertmanager, WebhookReceiver],
    simulated_alerts: list[Alert],
    notify_env: dict[str, str],
    tmp_path: Path,
) -> None:
    manager, receiver = alertmanager
    # Small batches: the kill lands between posts, with batches posted and not committed.
    notify = NotifyProcess({**notify_env, "CUSTODY_NOTIFY_BATCH_ALERTS": "3"}, tmp_path / "n.log")
    half = len(simulated_alerts) // 2
    try:
        notify.start()
        publish(settings, simulated_alerts[:half])
        until(lambda: bool(manager.alerts()), 60, "a first alert in Alertmanager", interval=0.05)
        notify.kill()
        # The rest arrives while notify is down.
        publish(settings, simulated_alerts[half:])
        assert len(manager.alerts()) < len(simulated_alerts)
        notify.start()
        notified_all(receiver, simulated_alerts, notify)
    finally:
        notify.kill()
    no_alert_twice_in_a_notification(receiver.received())
    held_once_each(manager, simulated_alerts)
