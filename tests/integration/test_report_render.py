"""The auditor's report as files, built from a simulation and mixed misbehaving traffic
stored on the embedded engine, with one alert whose detail tries to close the page's
script element:

- the HTML in Debian's Chromium (driven by Playwright, no browser download): every
  section there, each exception linked to its tree and alert in the explorer as
  notifications link it, no request but the page itself, no script run; a screenshot goes
  to ``tests/artifacts/report.png``;
- the PDF printed by headless Chromium, read back by ``pdftotext`` (poppler-utils);
- the report the HTML embeds is the report, exactly, hostile detail included.

Without ``/usr/bin/chromium`` or ``/usr/bin/pdftotext`` the tests needing them are skipped.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Dialog, Page, Route, sync_playwright

from processors.notify.postable import explorer_link
from processors.reporting.controls import CONTROL_OF
from processors.reporting.frameworks import load_mapping
from processors.reporting.render import RenderError, embedded_report, print_pdf, render
from processors.reporting.report import build
from processors.serving.reader import BackendReader
from schemas.models import Alert
from tests.support import REPO
from tests.support.reporting import stored_period

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
PDFTOTEXT = Path("/usr/bin/pdftotext")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (Debian package chromium)"
)
needs_pdftotext = pytest.mark.skipif(
    not PDFTOTEXT.exists(), reason=f"{PDFTOTEXT} is absent (Debian package poppler-utils)"
)

EXPLORER = "http://explorer.test"
PAGE = "http://report.test/report.html"
HOSTILE = "</script><script>alert(1)</script><!-- <b>not bold</b>"
ARTIFACTS = REPO / "tests" / "artifacts"
SECTIONS = {
    "summary": "Summary of controls",
    "controls": "Controls",
    "inventory": "Identity inventory",
    "break-glass": "Break-glass register",
    "delegations": "Delegations",
    "frameworks": "Framework mapping",
    "evidence": "Evidence and integrity",
    "queries": "Queries",
}


@dataclass
class Built:
    report: dict[str, Any]
    alerts: list[Alert]  # every alert stored, the hostile one last


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    stored = stored_period(tmp_path_factory.mktemp("report-render") / "chdb", 12, 20, 16)
    hostile = stored.alerts[0].model_copy(update={"alert_id": "hostile-detail", "detail": HOSTILE})
    stored.add_alert(hostile)
    backend = stored.open()
    try:
        report, _ = build(BackendReader(backend), stored.period, load_mapping(), EXPLORER)
    finally:
        backend.close()
    return Built(report, stored.alerts)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian package chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield launched
        launched.close()


@dataclass
class Loaded:
    page: Page
    requested: list[str]  # every request the page made, routed or not
    dialogs: list[str]  # every dialog a script opened


def load(browser: Browser, html: str) -> Loaded:
    """``html`` served as :data:`PAGE`; every other request recorded and refused."""
    context = browser.new_context(viewport={"width": 1280, "height": 1600})
    page = context.new_page()
    loaded = Loaded(page, [], [])

    def answer(route: Route) -> None:
        if route.request.url == PAGE:
            route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html)
        else:
            route.abort()

    def opened(dialog: Dialog) -> None:
        loaded.dialogs.append(dialog.message)
        dialog.dismiss()

    context.route("**/*", answer)
    page.on("request", lambda request: loaded.requested.append(request.url))
    page.on("dialog", opened)
    page.goto(PAGE, wait_until="load")
    return loaded


@needs_chromium
def test_the_page_shows_every_section_links_each_exception_and_requests_nothing(
    built: Built, browser: Browser
) -> None:
    report = built.report
    loaded = load(browser, render(report, "html").decode())
    page = loaded.page
    try:
        headings = {
            section: page.locator(f"main > section#{section} > h2").inner_text()
            for section in SECTIONS
        }
        assert headings == SECTIONS
        assert page.locator("#report-sha256").inner_text() == report["integrity"]["report_sha256"]
        assert "custody report verify FILE" in page.locator("header").inner_text()

        for control in report["controls"]:
            article = page.locator(f"article#control-{control['id']}")
            assert control["title"] in article.locator("h3").inner_text()
            assert article.locator("h3 .badge").get_attribute("class") == (
                f"badge s-{control['status']}"
            )
        # Each exception row links to the explorer exactly as a notification does.
        rows = page.locator("tr[data-alert-id]")
        links = {
            rows.nth(i).get_attribute("data-alert-id"): rows.nth(i)
            .locator("a.explorer")
            .get_attribute("href")
            for i in range(rows.count())
        }
        assert links == {a.alert_id: explorer_link(EXPLORER, a) for a in built.alerts}
        hostile = page.locator("tr[data-alert-id='hostile-detail']")
        assert HOSTILE in hostile.inner_text()
        assert hostile.locator("td.detail > b").count() == 0
        expected_control = CONTROL_OF[built.alerts[-1].alert_type]
        assert page.locator(f"#control-{expected_control} tr#alert-hostile-detail").count() == 1

        standing = [bool(i["standing_access"]) for i in report["inventory"]]
        assert page.locator("table.inventory tbody tr.standing").count() == sum(standing)
        unused = page.locator("table.inventory .scope.unused").all_inner_texts()
        assert sorted(unused) == sorted(
            s for i in report["inventory"] for s in i["granted_not_used"]
        )
        assert page.locator("#break-glass tr[data-break-glass]").count() == len(
            report["break_glass"]
        )
        frameworks = page.locator("#frameworks h3").all_inner_texts()
        assert frameworks == list(dict.fromkeys(i["framework"] for i in report["frameworks"]))
        sources = {
            a.get_attribute("href") for a in page.locator("#frameworks td a[href^='https']").all()
        }
        assert sources == {i["source"] for i in report["frameworks"]}
        assert page.locator("#queries details").get_attribute("open") is None
        assert page.locator("#queries pre").count() == len(report["queries"])

        # Nothing ran and nothing was fetched: the one script element is the data block.
        assert page.locator("script").count() == 1
        assert loaded.dialogs == []
        assert loaded.requested == [PAGE]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    finally:
        page.context.close()


@needs_chromium
def test_without_an_explorer_the_exceptions_name_their_ids_unlinked(
    built: Built, browser: Browser
) -> None:
    unlinked = copy.deepcopy(built.report)
    unlinked["explorer_url"] = None
    loaded = load(browser, render(unlinked, "html").decode())
    page = loaded.page
    try:
        rows = page.locator("tr[data-alert-id]")
        assert rows.count() == len(built.alerts)
        assert page.locator("a[href^='http://']").count() == 0
        for alert in built.alerts:
            assert alert.alert_id in page.locator(f"tr[id='alert-{alert.alert_id}']").inner_text()
        assert loaded.requested == [PAGE]
    finally:
        page.context.close()


@needs_chromium
@needs_pdftotext
def test_the_pdf_reads_back_tenant_controls_and_digest(built: Built, tmp_path: Path) -> None:
    report = built.report
    pdf = render(report, "pdf")
    assert pdf.startswith(b"%PDF-")
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    read = subprocess.run(
        [str(PDFTOTEXT), str(path), "-"], capture_output=True, text=True, timeout=60, check=True
    )
    text = " ".join(read.stdout.split())
    assert f"Tenant {report['tenant']}" in text
    for control in report["controls"]:
        assert " ".join(control["title"].split()) in text
    assert report["integrity"]["report_sha256"] in text
    info = subprocess.run(
        [str(PDFTOTEXT.with_name("pdfinfo")), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "(A4)" in info.stdout


def test_the_html_embeds_the_report_exactly(built: Built) -> None:
    report = built.report
    details = [e["detail"] for c in report["controls"] for e in c["exceptions"]]
    assert HOSTILE in details
    html = render(report, "html").decode()
    assert embedded_report(html) == report
    # The hostile detail neither closes the data block nor opens a comment or a tag.
    assert html.count("<script") == 1
    assert "<!--" not in html
    assert "<script>alert(1)" not in html
    # Nothing for a browser to fetch: no source, stylesheet, import or CSS url().
    assert re.search(r"\bsrc=|<link|@import|url\(", html) is None
    with pytest.raises(RenderError, match="no embedded report"):
        embedded_report(html.replace('id="custody-report"', 'id="other"'))


def test_the_json_is_the_report_indented_with_sorted_keys(built: Built) -> None:
    written = render(built.report, "json")
    assert written.endswith(b"}\n")
    assert json.loads(written) == built.report
    assert written.startswith(b'{\n  "')
    keys = list(json.loads(written))
    assert keys == sorted(keys)
    with pytest.raises(RenderError, match="unknown format"):
        render(built.report, "docx")


def test_a_pdf_without_chromium_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RenderError, match="apt-get install chromium"):
        print_pdf("<!doctype html><p>report</p>")
