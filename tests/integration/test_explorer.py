"""The web explorer in headless Chromium against the real stack: ``custody up`` (broker,
correlator, ingest+serve), simulated traffic with misbehaviour in every tree, then the page
served by the stack loads trees by URL and by the search box, draws exactly the nodes the
events name with revoked, expired and alerting ones marked, opens an alert's tree, and
draws a token's lifecycle. Screenshots go to ``tests/artifacts/explorer-*.png``.

Debian's ``chromium`` is driven by Playwright (no browser download); without
``/usr/bin/chromium`` the module is skipped.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from schemas.models import AccessEvent, TaskDeclaredEvent
from tests.integration.explorer_fixtures import (
    GRACE,
    OTHER_TENANT,
    ROOTS,
    SEED,
    TENANT,
    Tree,
    simulated,
)
from tests.support import REPO
from tests.support.polling import until
from tests.support.stack import Stack

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (Debian package chromium)", allow_module_level=True)

pytestmark = pytest.mark.integration

EXPLORER = REPO / "dashboards" / "explorer"
ARTIFACTS = REPO / "tests" / "artifacts"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
expect.set_options(timeout=20_000)


@dataclass
class Explorer:
    """The running stack, its address, and what was published to it."""

    stack: Stack
    url: str
    trees: list[Tree]  # tenant TENANT
    other: list[Tree]  # tenant OTHER_TENANT: the first tree again, ids and all

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as answer:
            return json.loads(answer.read())

    def trace(self, root: str, tenant: str) -> dict[str, Any]:
        """The tree as ``custody trace --json`` reads it (not through the explorer API)."""
        traced = self.stack.custody("trace", root, "--of-tenant", tenant, "--json")
        assert traced.returncode == 0, traced.stderr
        tree: dict[str, Any] = json.loads(traced.stdout)
        return tree

    def alerts(self, root: str, alert_type: str) -> list[dict[str, Any]]:
        rows = self.get("/api/alerts", type=alert_type, limit="5000")["alerts"]
        return [a for a in rows if a["root_task_id"] == root and a["tenant"] == TENANT]


def _stored_alert_types(explorer: Explorer, tenant: str) -> dict[str, Counter[str]]:
    """Stored alert types by root task, in one tenant."""
    stored: dict[str, Counter[str]] = {}
    for alert in explorer.get("/api/alerts", tenant=tenant, limit="5000")["alerts"]:
        stored.setdefault(alert["root_task_id"], Counter())[alert["alert_type"]] += 1
    return stored


def _tree_found(explorer: Explorer, tenant: str, root: str) -> bool:
    try:
        explorer.get("/api/tree", id=root, tenant=tenant)
    except urllib.error.HTTPError:
        return False
    return True


def _tree_stored(explorer: Explorer, tenant: str, tree: Tree) -> bool:
    """Every task, token and access of the tree is in ClickHouse, revocations included."""
    try:
        stored = explorer.get("/api/tree", id=tree.root, tenant=tenant)
    except urllib.error.HTTPError:
        return False
    nodes = tree.expected_nodes()
    return (
        {f"task:{t['task_id']}" for t in stored["tasks"]} == nodes["task"]
        and {f"token:{c['token_id']}" for c in stored["credentials"]} == nodes["token"]
        and {c["token_id"] for c in stored["credentials"] if c["revoked_at"]}
        == tree.revoked_tokens()
        and len(stored["accesses"]) == tree.accesses_with()
    )


@pytest.fixture(scope="module")
def explorer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Explorer]:
    stack = Stack(tmp_path_factory.mktemp("explorer"), {"CUSTODY_GRACE_SECONDS": str(GRACE)})
    try:
        stack.up()
        # Begun a day back: every deadline has passed once the partitions idle a moment.
        for tenant, roots in ((TENANT, ROOTS), (OTHER_TENANT, 1)):
            published = stack.custody(
                "--tenant", tenant, "simulate", "--roots", str(roots),
                "--misbehaviour-rate", "1", "--seed", str(SEED), "--start", "1d", "--json",
            )  # fmt: skip
            assert published.returncode == 0, published.stderr
        running = Explorer(stack, stack.address(), simulated(), simulated(OTHER_TENANT, 1))
        expected = {t.root: t.alert_types for t in running.trees}

        def alerts_missing() -> dict[str, Counter[str]]:
            stored = _stored_alert_types(running, TENANT)
            return {root: types - stored.get(root, Counter()) for root, types in expected.items()}

        until(
            lambda: not any(alerts_missing().values()),
            120,
            lambda: (
                f"the alerts the correlator must raise, in ClickHouse: missing "
                f"{alerts_missing()}, stored {_stored_alert_types(running, TENANT)}"
            ),
            0.5,
        )
        assert _stored_alert_types(running, TENANT) == expected

        def trees_missing() -> list[str]:
            return [t.root for t in running.trees if not _tree_stored(running, TENANT, t)]

        until(
            lambda: not trees_missing(),
            120,
            lambda: (
                f"every tree's tasks, tokens and accesses in ClickHouse: incomplete trees "
                f"{trees_missing()}"
            ),
            0.5,
        )
        # The other tenant's copy only needs to be found (the correlator keys its state by
        # root task id alone, so it does not judge that copy apart: see the report).
        until(
            lambda: _tree_found(running, OTHER_TENANT, running.other[0].root),
            120,
            "the other tenant's tree",
            0.5,
        )
        yield running
    finally:
        stack.custody("down")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        yield launched
        launched.close()


@dataclass
class Session:
    """One browser page on the explorer, recording what it fetched and what went wrong."""

    page: Page
    base: str
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, fragment: str = "") -> None:
        self.page.goto(f"{self.base}/{fragment}")

    def wait_tree(self, root: str) -> None:
        graph = self.page.get_by_test_id("graph")
        expect(graph).to_have_attribute("data-root", root)
        expect(graph).to_have_attribute("data-state", "ready")

    def nodes(self) -> dict[str, dict[str, Any]]:
        listed = self.page.evaluate(
            "() => window.custodyGraph.nodes().map("
            "n => ({id: n.id(), kind: n.data('kind'), classes: n.classes()}))"
        )
        return {node["id"]: node for node in listed}

    def edges(self) -> set[tuple[str, str, str]]:
        listed = self.page.evaluate(
            "() => window.custodyGraph.edges().map("
            "e => [e.data('source'), e.data('target'), e.data('kind')])"
        )
        return {(source, target, kind) for source, target, kind in listed}

    def with_class(self, name: str) -> set[str]:
        return {node_id for node_id, node in self.nodes().items() if name in node["classes"]}

    def click_node(self, node_id: str) -> None:
        """A real mouse click where the node is drawn on the canvas."""
        x, y = self.page.evaluate(
            "id => { const p = window.custodyGraph.getElementById(id).renderedPosition();"
            " return [p.x, p.y]; }",
            node_id,
        )
        box = self.page.get_by_test_id("graph").bounding_box()
        assert box is not None
        self.page.mouse.click(box["x"] + x, box["y"] + y)

    def search(self, text: str) -> None:
        self.page.get_by_test_id("search-input").fill(text)
        self.page.get_by_test_id("search-button").click()
        expect(self.page.get_by_test_id("search-results")).to_have_attribute("data-state", "ready")

    def markers(self, kind: str) -> int:
        return self.page.locator(f'[data-testid="timeline-marker"][data-kind="{kind}"]').count()

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"explorer-{name}.png"), full_page=True)

    def assert_self_contained(self, allow_errors: bool = False) -> None:
        assert self.foreign == [], "the page fetched something from elsewhere"
        if not allow_errors:
            assert self.errors == []


@pytest.fixture
def session(browser: Browser, explorer: Explorer) -> Iterator[Session]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    opened = Session(page, explorer.url)

    def record(url: str) -> None:
        if not (url.startswith(explorer.url + "/") or url.startswith("data:")):
            opened.foreign.append(url)

    page.on("request", lambda request: record(request.url))
    page.on("pageerror", lambda error: opened.errors.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: opened.errors.append(message.text) if message.type == "error" else None,
    )
    yield opened
    context.close()


def alert_node_ids(alert: dict[str, Any]) -> set[str]:
    """The nodes an alert names, by the API's contract."""
    ids = set()
    if alert["task_id"]:
        ids.add(f"task:{alert['task_id']}")
    if alert["token_id"]:
        ids.add(f"token:{alert['token_id']}")
    if alert["workload_id"]:
        ids |= {f"agent:{alert['workload_id']}", f"human:{alert['workload_id']}"}
    return ids


def test_a_tree_by_url_shows_every_node_with_its_marks(
    session: Session, explorer: Explorer
) -> None:
    tree = explorer.trees[1]  # delegation with a leaked token: revoked, expired and alerting
    traced = explorer.trace(tree.root, TENANT)
    session.open(f"#tree={tree.root}&tenant={TENANT}")
    session.wait_tree(tree.root)
    page = session.page
    expect(page.get_by_test_id("tree-title")).to_contain_text(tree.root)
    expect(page.get_by_test_id("tree-summary")).to_contain_text(f"{len(traced['tasks'])} tasks")

    nodes = session.nodes()
    expected = tree.expected_nodes()
    assert {kind: {i for i, n in nodes.items() if n["kind"] == kind} for kind in expected} == (
        expected
    )
    assert set(nodes) == set().union(*expected.values())  # nothing else, no stubs
    delegated = {(s, t) for s, t, kind in session.edges() if kind == "delegated"}
    assert delegated == tree.delegations()
    assert delegated
    assert session.with_class("root") == {f"task:{tree.root}"}

    states = {f"token:{c['token_id']}": c["state"] for c in traced["credentials"]}
    revoked = {node for node, state in states.items() if state == "REVOKED"}
    expired = {node for node, state in states.items() if state == "EXPIRED"}
    assert revoked
    assert expired
    assert session.with_class("revoked") == revoked
    assert session.with_class("expired") == expired

    alerting = set().union(*(alert_node_ids(a) for a in traced["alerts"])) & set(nodes)
    (leak,) = [a for a in traced["alerts"] if a["alert_type"] == "UNREVOKED_TOKEN"]
    assert f"token:{leak['token_id']}" in alerting
    assert session.with_class("alerting") == alerting
    badges = page.get_by_test_id("alert-badge")
    expect(badges).to_have_count(len(alerting))
    assert {badges.nth(i).get_attribute("data-node") for i in range(len(alerting))} == alerting
    expect(
        page.locator(f'[data-testid="alert-badge"][data-node="token:{leak["token_id"]}"]')
    ).to_contain_text("UNREVOKED_TOKEN")
    session.screenshot("tree")

    # Clicking the leaked token shows its data and its lifecycle, and the URL keeps it.
    session.click_node(f"token:{leak['token_id']}")
    expect(page.get_by_test_id("details")).to_have_attribute("data-id", f"token:{leak['token_id']}")
    expect(page.locator('[data-testid="details"] tr[data-key="state"] td')).to_have_text("EXPIRED")
    timeline = page.get_by_test_id("timeline")
    expect(timeline).to_have_attribute("data-token", leak["token_id"])
    expect(timeline).to_have_attribute("data-state", "ready")
    assert session.markers("ISSUED") == 1
    assert session.markers("ACCESS") == tree.accesses_with(leak["token_id"]) > 0
    assert session.markers("REVOKED") == 0
    assert session.markers("EXPIRES") == 1
    assert session.markers("ALERT") == 1
    expect(page).to_have_url(re.compile(f"token={re.escape(leak['token_id'])}"))
    session.assert_self_contained()


def test_the_search_box_opens_a_task_a_token_and_a_workload(
    session: Session, explorer: Explorer
) -> None:
    page = session.page
    session.open()
    tree = explorer.trees[3]
    deep = max(tree.of(TaskDeclaredEvent), key=lambda e: e.depth)
    assert deep.depth >= 2

    # A task id: one result, opened at once, the task selected.
    session.search(deep.task_id)
    results = page.get_by_test_id("search-result")
    expect(results).to_have_count(1)
    expect(results.first).to_have_attribute("data-kind", "task")
    session.wait_tree(tree.root)
    expect(page.get_by_test_id("details")).to_have_attribute("data-id", f"task:{deep.task_id}")
    selected = page.evaluate("() => window.custodyGraph.$(':selected').map(n => n.id())")
    assert selected == [f"task:{deep.task_id}"]

    # A token id (of another tree): its tree and its timeline.
    other = explorer.trees[4]
    used = Counter(e.body.token_id for e in other.of(AccessEvent))
    token_id, accesses = used.most_common(1)[0]
    session.search(token_id)
    expect(results).to_have_count(1)
    expect(results.first).to_have_attribute("data-kind", "token")
    session.wait_tree(other.root)
    timeline = page.get_by_test_id("timeline")
    expect(timeline).to_have_attribute("data-token", token_id)
    expect(timeline).to_have_attribute("data-state", "ready")
    expect(page.get_by_test_id("timeline-panel")).to_be_visible()
    assert session.markers("ISSUED") == 1
    assert session.markers("ACCESS") == accesses
    expect(page.get_by_test_id("timeline-row")).to_have_count(
        page.get_by_test_id("timeline-marker").count()
    )
    session.screenshot("timeline")
    # Zoomed to the token's activity (its expiry aside), no mark is lost.
    drawn = page.get_by_test_id("timeline-marker").count()
    page.get_by_test_id("timeline-zoom").click()
    expect(page.get_by_test_id("timeline-zoom")).to_have_attribute("data-zoom", "activity")
    expect(page.get_by_test_id("timeline-marker")).to_have_count(drawn)

    # A workload: a result per tree it worked in; clicking one opens that tree.
    session.search("agent/planner")
    expect(results.first).to_have_attribute("data-kind", "workload")
    assert results.count() > 1
    chosen = results.nth(1)
    root, workload = chosen.get_attribute("data-root"), chosen.get_attribute("data-id")
    assert root
    assert workload
    assert workload.endswith("/agent/planner")
    chosen.click()
    session.wait_tree(root)
    expect(page.get_by_test_id("details")).to_have_attribute("data-id", f"agent:{workload}")
    session.assert_self_contained()


def test_clicking_an_alert_opens_its_tree_with_the_alert_marked(
    session: Session, explorer: Explorer
) -> None:
    page = session.page
    session.open()
    stored = explorer.get("/api/alerts", limit="5000")["alerts"]
    items = page.get_by_test_id("alert-item")
    expect(items).to_have_count(len(stored))

    shared = next(t for t in explorer.trees if t.alert_types["SHARED_CREDENTIAL"])
    (alert,) = explorer.alerts(shared.root, "SHARED_CREDENTIAL")
    page.get_by_test_id("alert-type-select").select_option("SHARED_CREDENTIAL")
    wanted = sum(1 for a in stored if a["alert_type"] == "SHARED_CREDENTIAL")
    expect(
        page.locator('[data-testid="alert-item"][data-alert-type="SHARED_CREDENTIAL"]')
    ).to_have_count(wanted)
    expect(items).to_have_count(wanted)

    page.locator(f'[data-testid="alert-item"][data-alert-id="{alert["alert_id"]}"]').click()
    session.wait_tree(shared.root)
    expect(page).to_have_url(re.compile(f"tree={shared.root}.*alert={alert['alert_id']}"))
    token = f"token:{alert['token_id']}"
    assert token in session.with_class("alerting")
    assert session.with_class("highlight") == alert_node_ids(alert) & set(session.nodes())
    expect(page.locator(f'[data-testid="alert-badge"][data-node="{token}"]')).to_contain_text(
        "SHARED_CREDENTIAL"
    )
    expect(page.get_by_test_id("details")).to_have_attribute(
        "data-id", f"alert:{alert['alert_id']}"
    )
    expect(
        page.locator(f'[data-testid="alert-item"][data-alert-id="{alert["alert_id"]}"]')
    ).to_have_class(re.compile(r"\bactive\b"))
    session.screenshot("alert")

    # Another alert, naming a human who approved their own request; then back.
    approving = next(t for t in explorer.trees if t.alert_types["SELF_APPROVAL"])
    (self_approval,) = explorer.alerts(approving.root, "SELF_APPROVAL")
    page.get_by_test_id("alert-type-select").select_option("SELF_APPROVAL")
    page.locator(f'[data-testid="alert-item"][data-alert-id="{self_approval["alert_id"]}"]').click()
    session.wait_tree(approving.root)
    human = f"human:{self_approval['workload_id']}"
    assert human in session.with_class("alerting") & session.with_class("highlight")
    page.go_back()
    session.wait_tree(shared.root)
    assert token in session.with_class("highlight")
    session.assert_self_contained()


def test_unknown_and_ambiguous_trees_say_so(session: Session, explorer: Explorer) -> None:
    page = session.page
    message = page.get_by_test_id("message")
    session.open("#tree=no-such-task")
    expect(message).to_be_visible()
    expect(message).to_contain_text("no-such-task")
    expect(page.get_by_test_id("graph")).to_have_attribute("data-state", "empty")

    # The first tree was published to two tenants with the same ids.
    shared_root = explorer.other[0].root
    assert shared_root == explorer.trees[0].root
    session.open(f"#tree={shared_root}")
    expect(message).to_contain_text("several")
    session.open(f"#tree={shared_root}&tenant={OTHER_TENANT}")
    session.wait_tree(shared_root)
    expect(message).to_be_hidden()
    expect(page.get_by_test_id("tree-title")).to_have_attribute("data-tenant", OTHER_TENANT)
    session.assert_self_contained(allow_errors=True)  # the 404 and 409 are logged


def test_the_page_names_nothing_outside_its_origin() -> None:
    allowed = {"http://www.w3.org/2000/svg"}
    for name in ("index.html", "explorer.js", "explorer.css"):
        text = (EXPLORER / name).read_text()
        assert set(re.findall(r"https?://[^\s\"')]+", text)) <= allowed, name
    lock = json.loads((EXPLORER / "package-lock.json").read_text())
    version = lock["packages"]["node_modules/cytoscape"]["version"]
    vendored = (EXPLORER / "vendor" / "cytoscape.min.js").read_text()
    assert f'version="{version}"' in vendored.replace(" ", "")


def test_the_report_form_and_an_agents_blast_radius_open_from_the_explorer(
    session: Session, explorer: Explorer
) -> None:
    page = session.page
    session.open()
    # The report of the simulated period (simulations begin hours back, within a day).
    today = datetime.now(UTC).date()
    page.get_by_test_id("report-tenant").fill(TENANT)
    page.get_by_test_id("report-from").fill((today - timedelta(days=2)).isoformat())
    page.get_by_test_id("report-to").fill((today + timedelta(days=1)).isoformat())
    with page.expect_popup() as opened:
        page.get_by_test_id("report-button").click()
    report = opened.value
    report.wait_for_load_state()
    embedded = json.loads(report.locator("#custody-report").text_content() or "{}")
    assert embedded["tenant"] == TENANT
    assert embedded["counts"]["trees"] == len(explorer.trees)
    planted = {a for t in explorer.trees for a in t.alert_types}
    placed = {e["alert_type"] for c in embedded["controls"] for e in c["exceptions"]}
    assert placed == planted

    # An agent's details link to what it could and did reach.
    tree = explorer.trees[0]
    session.open(f"#tree={tree.root}&tenant={TENANT}")
    session.wait_tree(tree.root)
    agent = next(node for node, data in session.nodes().items() if data["kind"] == "agent")
    session.click_node(agent)
    expect(page.get_by_test_id("details")).to_have_attribute("data-id", agent)
    with page.expect_popup() as opened:
        page.get_by_test_id("blast-radius-link").click()
    radius = json.loads(opened.value.locator("body").text_content() or "{}")
    assert radius["subject"]["id"] == agent.removeprefix("agent:")
    assert radius["counts"]["trees"] >= 1
    session.assert_self_contained()
