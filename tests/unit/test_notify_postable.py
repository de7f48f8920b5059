"""A Custody alert as Alertmanager takes it: labels that identify and route it, the
annotations a person follows, its firing window, and no secret value anywhere."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from processors.notify.alertmanager import AlertmanagerClient
from processors.notify.postable import Links, body_of, labels, postable
from schemas.models import Alert, AlertType
from tests.support.stored import correlate
from tests.support.trees import mischievous

LINKS = Links("http://explorer.test:8470/", "http://explorer.test:8470/runbook", 3600.0)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def alerts_of(*mischief: str) -> list[Alert]:
    _, alerts = correlate(mischievous(set(mischief), name="n-"))
    assert alerts, f"no alert for {mischief}"
    return alerts


def test_labels_name_the_type_severity_tenant_tree_alert_and_subject() -> None:
    alert = next(a for a in alerts_of("leak") if a.alert_type is AlertType.UNREVOKED_TOKEN)
    found = labels(alert)
    assert found["alertname"] == "UNREVOKED_TOKEN"
    assert found["severity"] == alert.severity.name
    assert found["tenant"] == alert.tenant
    assert found["root_task_id"] == alert.root_task_id
    assert found["alert_id"] == alert.alert_id
    assert found["source"] == "custody"
    assert found["token_id"] == alert.token_id == "n-tok-research"
    # Alertmanager refuses empty label values: absent subjects are left out.
    assert all(found.values())


def test_annotations_link_the_tree_the_runbook_and_the_evidence() -> None:
    alert = alerts_of("orphan")[0]
    posted = postable(alert, LINKS, NOW)
    notes = posted["annotations"]
    assert notes["evidence_event_ids"].split(",") == alert.evidence_event_ids
    assert notes["runbook_url"] == f"{LINKS.runbook}#{alert.alert_type.name.lower()}"
    explorer = urlsplit(notes["explorer_url"])
    assert explorer.netloc == "explorer.test:8470"
    assert explorer.path == "/"
    state = {k: v[0] for k, v in parse_qs(explorer.fragment).items()}
    assert state == {"tree": alert.root_task_id, "tenant": alert.tenant, "alert": alert.alert_id}
    assert posted["generatorURL"] == notes["explorer_url"]
    assert "\n" not in notes["summary"]
    assert alert.alert_type.name in notes["summary"]
    assert len(notes["summary"]) <= 200


def test_an_alert_fires_for_the_configured_time_from_its_post() -> None:
    alert = alerts_of("leak")[0]
    posted = postable(alert, LINKS, NOW)
    assert datetime.fromisoformat(posted["startsAt"]) == alert.event_time
    assert datetime.fromisoformat(posted["endsAt"]) == NOW + timedelta(seconds=3600)
    # An alert stamped ahead of this clock still fires its whole window.
    ahead = alert.model_copy(update={"event_time": NOW + timedelta(hours=2)})
    ends = datetime.fromisoformat(postable(ahead, LINKS, NOW)["endsAt"])
    assert ends == NOW + timedelta(hours=2, seconds=3600)


def test_no_secret_value_reaches_a_label_or_an_annotation() -> None:
    secret = "ghp_" + "a1B2" * 9  # a GitHub token's shape
    clean, leaky = alerts_of("leak")[:1] * 2
    leaky = leaky.model_copy(update={"detail": f"seen {secret} in a log"})
    posts = [postable(alert, LINKS, NOW) for alert in (clean, leaky)]
    body = body_of(posts)
    assert secret.encode() not in body
    sent = json.loads(body)
    assert "[REDACTED]" in sent[1]["annotations"]["description"]
    assert sent[0] == posts[0]
    # A batch with nothing secret-looking is posted as mapped.
    assert json.loads(body_of(posts[:1])) == posts[:1]


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:9093", "http://127.0.0.1:9093"),
        ("https://am.example:443/prefix/", "https://am.example:443/prefix"),
        ("http://user:pw@127.0.0.1:9093", "http://127.0.0.1:9093"),
    ],
)
def test_the_client_logs_its_address_without_credentials(url: str, address: str) -> None:
    assert AlertmanagerClient(url, 1.0).address == address


def test_the_client_refuses_a_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="http"):
        AlertmanagerClient("ftp://127.0.0.1:9093", 1.0)
