"""``custody notify``: reads ``custody.alerts.v1`` and posts each batch of alerts to
Alertmanager; the batch's offsets are committed only after Alertmanager answered 2xx.

- Alertmanager down or answering 5xx: the batch is retried with backoff, the partitions
  paused, nothing committed; the alerts arrive once it is back. Killed meanwhile: the
  batch is posted again after the restart. Posting an alert twice is harmless: the same
  labels are the same Alertmanager alert, and Alertmanager notifies a group's alert once.
- A record that is not an alert: dead-lettered with its decoding reason.
- Alertmanager keeps its alerts in memory: one restarted before it notified an alert has
  forgotten it, though notify has committed it. So, as Prometheus does with its own
  alerts, notify posts every alert again every ``notify_resend_seconds`` for
  ``notify_resend_window_seconds`` after its first post; Alertmanager's notification log
  (kept on disk) keeps an alert it has notified from being notified again.
- Alertmanager refusing a post (4xx): its alerts are posted one by one, and those it still
  refuses are dead-lettered (``alertmanager_refused``) with its answer.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from processors.batch_consumer import Batch, BatchConsumer, BatchLimits, ConsumerStats, Retry
from processors.consumer_metrics import ConsumerMetrics
from processors.notify.alertmanager import AlertmanagerClient, Refused, Unavailable
from processors.notify.postable import Links, body_of, postable
from processors.storage.sink import Record, Rejected
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec, DecodeError
from schemas.models import Alert

REFUSED = "alertmanager_refused"
# How often, at most, the state file that `custody status` shows is written.
_STATE_EVERY_SECONDS = 1.0

_log = logging.getLogger("custody.notify")


class NotifyError(RuntimeError):
    """notify cannot start as configured."""


@dataclass
class NotifyStats(ConsumerStats):
    """What ``custody status --json`` shows of notify."""

    alertmanager: str = ""
    posted: int = 0
    waiting_for_alertmanager: bool = False


class Notify(BatchConsumer):
    """One notify consumer. ``run`` blocks until ``stop`` is set, then finishes its batch."""

    stage = "notify"

    def __init__(
        self,
        settings: Settings,
        client: AlertmanagerClient,
        links: Callable[[], Links],
        heartbeat: Path | None = None,
        metrics: ConsumerMetrics | None = None,
        state: Path | None = None,
    ) -> None:
        super().__init__(
            settings,
            settings.notify_group,
            (topics.ALERTS,),
            BatchLimits(
                settings.notify_batch_alerts, 16 * 1024 * 1024, settings.notify_batch_seconds
            ),
            settings.notify_retry_max_seconds,
            heartbeat,
            metrics,
        )
        self.client = client
        self.links = links
        self.stats = NotifyStats(alertmanager=client.address)
        self._codec = AvroCodec()
        self._state = state
        self._state_written = -_STATE_EVERY_SECONDS
        # alert id -> (first posted, monotonic; the post), oldest first.
        self._recent: dict[str, tuple[float, dict[str, Any]]] = {}
        self._resent_at = time.monotonic()

    def process(self, records: list[Record]) -> Sequence[Rejected]:
        """Post the batch's alerts; return the records that are not alerts, or that
        Alertmanager refuses."""
        rejected: list[Rejected] = []
        alerts: list[tuple[Record, Alert]] = []
        for record in records:
            try:
                alerts.append((record, self._codec.decode_alert(record.value or b"")))
            except DecodeError as exc:
                rejected.append(Rejected(record, exc.reason, str(exc)))
        now = datetime.now(UTC)
        links = self.links()
        posts = [postable(alert, links, now) for _, alert in alerts]
        if not posts:
            return rejected
        try:
            self._post(posts)
            self._sent([alert for _, alert in alerts], posts)
        except Refused:
            # One of them is wrong: find which, alert by alert.
            for (record, alert), post in zip(alerts, posts, strict=True):
                try:
                    self._post([post])
                    self._sent([alert], [post])
                except Refused as exc:
                    rejected.append(Rejected(record, REFUSED, str(exc)))
        return rejected

    def tick(self) -> None:
        """Keep the state file current; post the alerts of the resend window again, every
        ``notify_resend_seconds``."""
        self._write_state(force=False)
        now = time.monotonic()
        if now - self._resent_at < self.settings.notify_resend_seconds:
            return
        self._resent_at = now
        horizon = now - self.settings.notify_resend_window_seconds
        for alert_id in [a for a, (first, _) in self._recent.items() if first < horizon]:
            del self._recent[alert_id]
        posts = [post for _, post in self._recent.values()]
        size = self.settings.notify_batch_alerts
        for start in range(0, len(posts), size):
            try:
                self.client.post(body_of(posts[start : start + size]))
            except (Unavailable, Refused) as exc:
                # The next round tries again; the alerts themselves are already committed.
                self._failed(exc.label)
                self.log.warning("resending %d alerts failed: %s", len(posts), exc)
                return

    def _post(self, posts: list[dict[str, Any]]) -> None:
        try:
            self.client.post(body_of(posts))
        except Unavailable as exc:
            self._failed(exc.label)
            raise Retry(str(exc)) from None
        except Refused as exc:
            self._failed(exc.label)
            raise

    def _failed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.counted["failed"].labels(reason).inc()

    def _sent(self, alerts: list[Alert], posts: list[dict[str, Any]]) -> None:
        """Alertmanager took ``posts``, the posts of ``alerts``: count them by severity and
        keep them for the resend window."""
        if self.metrics is not None:
            for severity, count in Counter(alert.severity.name for alert in alerts).items():
                self.metrics.counted["sent"].labels(severity).inc(count)
        if self.settings.notify_resend_window_seconds > 0:
            now = time.monotonic()
            for alert, post in zip(alerts, posts, strict=True):
                self._recent.setdefault(alert.alert_id, (now, post))
        self.stats.posted += len(alerts)

    def note_waiting(self, error: str | None) -> None:
        self.stats.waiting_for_alertmanager = self.stats.waited(error)
        self._write_state(force=error is not None)

    def note_committed(self, batch: Batch, rejected: Sequence[Rejected]) -> None:
        self.stats.committed(len(rejected), self.last_commit_at)
        self._write_state(force=False)

    def _write_state(self, force: bool) -> None:
        if self._state is None:
            return
        now = time.monotonic()
        if not force and now - self._state_written < _STATE_EVERY_SECONDS:
            return
        self._state_written = now
        # Written whole, then renamed: a reader never sees half a file.
        partial = self._state.with_suffix(".partial")
        partial.write_text(json.dumps(self.stats.as_dict()))
        partial.replace(self._state)


class LinkResolver:
    """Where notifications point: the configured explorer, else the query API running
    for this stack (looked up until found: on ``custody up`` it may start after notify),
    else where it listens by default; the configured runbook, else the API's /runbook."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._found: Links | None = None

    def __call__(self) -> Links:
        if self._found is not None:
            return self._found
        from processors.serving.reader import running_api

        settings = self.settings
        running = None if settings.explorer_url else running_api(settings)
        explorer = (
            settings.explorer_url
            or running
            or f"http://{settings.serve_host}:{settings.serve_port}"
        ).rstrip("/")
        links = Links(
            explorer=explorer,
            runbook=settings.runbook_url or f"{explorer}/runbook",
            firing_seconds=settings.alert_firing_seconds,
        )
        if settings.explorer_url or running:
            self._found = links
        return links


def run(settings: Settings, metrics_address: str) -> None:
    """Run notify until SIGTERM/SIGINT, its metrics on ``metrics_address``. Raises
    :class:`NotifyError` without an Alertmanager URL."""
    import signal

    from processors.metrics_endpoint import serve_registry
    from processors.stack import NOTIFY, NOTIFY_METRICS_VARIABLE, heartbeat_path, state_path

    if settings.alertmanager_url is None:
        raise NotifyError("no Alertmanager to notify: set CUSTODY_ALERTMANAGER_URL")
    try:
        client = AlertmanagerClient(
            settings.alertmanager_url.get_secret_value(), settings.notify_timeout_seconds
        )
    except ValueError as exc:
        raise NotifyError(f"CUSTODY_ALERTMANAGER_URL: {exc}") from None
    metrics = ConsumerMetrics("notify")
    endpoint = serve_registry(metrics.registry, metrics_address, NOTIFY_METRICS_VARIABLE)
    notify = Notify(
        settings,
        client,
        LinkResolver(settings),
        heartbeat_path(settings, NOTIFY),
        metrics,
        state_path(settings, NOTIFY),
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: notify.stop.set())
    _log.info("notifying %s of %s (pid %d)", client.address, topics.ALERTS, os.getpid())
    try:
        notify.run()
    finally:
        endpoint.close()
        client.close()
