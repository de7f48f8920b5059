"""The runbook page notifications link to: a section, with its anchor, for every alert
type, and no raw HTML from the source passes through."""

from __future__ import annotations

import re

from processors.notify.postable import runbook_link
from processors.serving.runbook import alert_reference, anchor, render
from schemas.models import AlertType
from tests.support.stored import correlate
from tests.support.trees import mischievous


def test_every_alert_type_has_a_section_with_its_anchor() -> None:
    ids = set(re.findall(r'id="([^"]+)"', alert_reference().decode()))
    missing = [t.name for t in AlertType if t.name.lower() not in ids]
    assert missing == []


def test_a_notification_links_to_its_types_section() -> None:
    _, alerts = correlate(mischievous({"leak"}, name="rb-"))
    link = runbook_link("http://api.test/runbook", alerts[0])
    fragment = link.rpartition("#")[2]
    assert fragment == alerts[0].alert_type.name.lower()
    assert f'id="{fragment}"' in alert_reference().decode()


def test_anchors_follow_githubs_headings() -> None:
    assert anchor("UNREVOKED_TOKEN") == "unrevoked_token"
    assert anchor("Alerts in Alertmanager") == "alerts-in-alertmanager"
    assert anchor("How alerts are decided?") == "how-alerts-are-decided"


def test_raw_html_in_the_source_is_not_rendered() -> None:
    page = render("# T\n\n<script>alert(1)</script>\n", "t")
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
