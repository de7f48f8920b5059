"""Integrity: ``custody verify`` finds every deletion, alteration and insertion made to the
stored evidence behind Custody's back.

Simulated traffic is published through the SDK (which stamps the hash chain) to a real
``custody up``, stored by ingest in chdb; then the stack stops, the events table is
tampered with directly (each tampering on its own copy of the data directory), and the
real CLI verifies. A pure check of the chain logic runs without services.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from processors.serving.verify import check_chain
from processors.storage.backend import ChdbBackend
from processors.storage.target import ChdbTarget
from producers.simulator import SimulationConfig, simulate
from tests.faults.conftest import Recorder, scaled
from tests.support.broker import run_custody
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.faults]

INSTANCES = ("faults/integrity/a", "faults/integrity/b")


class Stored:
    """A stopped stack's data directory holding two producers' chains."""

    def __init__(self, stack: Stack, published: dict[str, list[str]], start: datetime) -> None:
        self.stack = stack
        self.start = start
        # event ids in publication (= seq) order, per producer instance
        self.published = published
        self._types: dict[str, str] = {}

    @property
    def chdb(self) -> Path:
        return self.stack.home / ".custody" / "chdb"

    def copy(self, name: str) -> Path:
        """A copy of the stack's home whose chdb directory may be tampered with."""
        home = self.stack.home.parent / name
        # The Atomic database links metadata/<db> to store/... by a relative symlink.
        shutil.copytree(self.chdb, home / ".custody" / "chdb", symlinks=True)
        return home

    def tamper(self, home: Path, *statements: str) -> None:
        backend = ChdbBackend(ChdbTarget(home / ".custody" / "chdb"))
        try:
            for sql in statements:
                backend.execute(sql)
        finally:
            backend.close()

    def event_type(self, event_id: str) -> str:
        """The stored type of an event (read once from the untouched directory)."""
        if not self._types:
            backend = ChdbBackend(ChdbTarget(self.chdb))
            try:
                for row in backend.select("SELECT event_id, event_type FROM events"):
                    self._types[str(row["event_id"])] = str(row["event_type"])
            finally:
                backend.close()
        return self._types[event_id]

    def verify(self, home: Path, *args: str) -> tuple[int, dict[str, Any]]:
        result: subprocess.CompletedProcess[str] = run_custody(
            self.stack.bootstrap, "verify", "--json", *args, cwd=home, env=self.stack.env
        )
        assert result.returncode in (0, 5), result.stderr
        return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Stored:
    home = tmp_path_factory.mktemp("integrity")
    stack = Stack(home / "stack")
    stack.home.mkdir()
    roots = scaled(6, 60)
    start = datetime.now(UTC) - timedelta(hours=8)
    published: dict[str, list[str]] = {}
    try:
        stack.up()
        for index, instance in enumerate(INSTANCES):
            config = SimulationConfig(roots=roots, seed=11 + index, start=start, tenant="acme")
            stream = list(simulate(config))
            stack.publish(stream, instance)
            published[instance] = [event.event_id for event in stream]
        expected = sum(len(ids) for ids in published.values())
        deadline = datetime.now(UTC) + timedelta(seconds=120)
        while True:
            rows = stack.query("SELECT count() AS n FROM events")
            if rows[0]["n"] == expected or datetime.now(UTC) > deadline:
                break
            time.sleep(0.5)
        assert rows[0]["n"] == expected, f"stored {rows[0]['n']} of {expected}"
    finally:
        stack.custody("down")
    return Stored(stack, published, start)


def _kinds(report: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(f["kind"], f["producer_instance"], f["seq"]) for f in report["findings"]]


def test_untouched_evidence_verifies(stored: Stored, record_fault: Recorder) -> None:
    code, report = stored.verify(stored.copy("clean"))
    events = sum(len(ids) for ids in stored.published.values())
    survived = code == 0 and report["intact"] and report["events"] == events
    record_fault(
        "integrity",
        "verify untouched chains",
        survived and report["vouched"] == events - len(INSTANCES),
        events=events,
        vouched=report["vouched"],
        findings=len(report["findings"]),
    )
    assert survived
    assert report["findings"] == []
    assert report["vouched"] == events - len(INSTANCES)


def test_a_deleted_event_is_a_gap_named_by_its_neighbours(
    stored: Stored, record_fault: Recorder
) -> None:
    instance = INSTANCES[0]
    ids = stored.published[instance]
    middle = len(ids) // 2
    home = stored.copy("deleted")
    stored.tamper(
        home,
        f"ALTER TABLE events DELETE WHERE event_id = '{ids[middle]}' SETTINGS mutations_sync = 2",
    )
    code, report = stored.verify(home)
    found = report["findings"]
    survived = (
        code == 5
        and _kinds(report) == [("GAP", instance, middle + 1)]
        and ids[middle - 1] in found[0]["detail"]
        and ids[middle + 1] in found[0]["detail"]
    )
    record_fault("integrity", "delete one stored event", survived, findings=_kinds(report))
    assert survived, report


def test_the_first_event_deleted_is_a_gap_at_the_start(
    stored: Stored, record_fault: Recorder
) -> None:
    instance = INSTANCES[1]
    home = stored.copy("first-deleted")
    first = stored.published[instance][0]
    stored.tamper(
        home, f"ALTER TABLE events DELETE WHERE event_id = '{first}' SETTINGS mutations_sync = 2"
    )
    code, report = stored.verify(home)
    survived = code == 5 and _kinds(report) == [("GAP", instance, 1)]
    record_fault("integrity", "delete a chain's first event", survived, findings=_kinds(report))
    assert survived, report


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("resource", "'crm://someone-else'"),
        ("outcome", "'DENIED'"),
        ("actor_workload_id", "'spiffe://acme/agent/innocent'"),
        # A sorting-key column cannot be updated in place: the row is rewritten.
        ("event_time", "event_time - INTERVAL 1 HOUR"),
    ],
)
def test_an_altered_field_breaks_the_link_after_it(
    stored: Stored, record_fault: Recorder, column: str, value: str
) -> None:
    instance = INSTANCES[0]
    ids = stored.published[instance]
    home = stored.copy(f"altered-{column}")
    # An ACCESS event somewhere in the middle: it has a resource and an outcome.
    target = next(e for e in ids[len(ids) // 3 :] if stored.event_type(e) == "ACCESS")
    seq = ids.index(target) + 1
    if column == "event_time":
        stored.tamper(
            home,
            f"INSERT INTO events SELECT * REPLACE ({value} AS event_time) "
            f"FROM (SELECT * FROM events WHERE event_id = '{target}')",
            f"ALTER TABLE events DELETE WHERE event_id = '{target}' AND event_time = "
            f"(SELECT max(event_time) FROM events WHERE event_id = '{target}') "
            "SETTINGS mutations_sync = 2",
        )
    else:
        stored.tamper(
            home,
            f"ALTER TABLE events UPDATE {column} = {value} WHERE event_id = '{target}' "
            "SETTINGS mutations_sync = 2",
        )
    code, report = stored.verify(home)
    survived = code == 5 and _kinds(report) == [("BROKEN_LINK", instance, seq + 1)]
    record_fault(
        "integrity", f"alter {column} of a stored event", survived, findings=_kinds(report)
    )
    assert survived, report


def test_a_forged_event_repeats_a_seq(stored: Stored, record_fault: Recorder) -> None:
    instance = INSTANCES[1]
    ids = stored.published[instance]
    home = stored.copy("forged")
    victim = ids[len(ids) // 2]
    stored.tamper(
        home,
        # The alias would shadow event_id in a WHERE beside it: filter in a subquery.
        "INSERT INTO events SELECT * REPLACE ("
        "'00000000-0000-4000-8000-000000000000' AS event_id, 'crm://forged' AS resource) "
        f"FROM (SELECT * FROM events WHERE event_id = '{victim}')",
    )
    code, report = stored.verify(home)
    kinds = {kind for kind, _, _ in _kinds(report)}
    survived = code == 5 and "DUPLICATE_SEQ" in kinds
    record_fault("integrity", "insert a forged event", survived, findings=_kinds(report))
    assert survived, report


def test_since_checks_only_the_window(stored: Stored, record_fault: Recorder) -> None:
    home = stored.copy("window")
    # Two hours into the simulated work: the batch jobs' later events are after it.
    since = (stored.start + timedelta(hours=2)).isoformat()
    code, report = stored.verify(home, "--since", since)
    record_fault(
        "integrity",
        "verify --since (a window inside the chains)",
        code == 0 and report["events"] > 0,
        events=report["events"],
    )
    total = sum(len(ids) for ids in stored.published.values())
    assert code == 0
    assert report["intact"]
    assert 0 < report["events"] < total


def test_chain_logic_without_services() -> None:
    """Gaps, duplicates and broken links on hand-made rows; redactions are told apart."""
    rows = [_row(seq, None if seq == 1 else "x") for seq in (1, 2, 4, 4)]
    report = check_chain("p", rows)
    assert [(f.kind, f.seq) for f in report.findings] == [
        ("BROKEN_LINK", 2),
        ("GAP", 3),
        ("DUPLICATE_SEQ", 4),
    ]
    rows = [_row(1, None, redacted=True), _row(2, "x")]
    report = check_chain("p", rows)
    assert [f.kind for f in report.findings] == ["REDACTED_LINK"]
    assert report.intact


def _row(seq: int, prev_hash: str | None, redacted: bool = False) -> dict[str, Any]:
    """A stored-looking row of a simulated TASK_DECLARED event, renumbered."""
    event = next(iter(simulate(SimulationConfig(roots=1, seed=1)))).model_dump(mode="json")
    actor, body = event.pop("actor"), event.pop("body")
    return {
        **event,
        **{f"actor_{key}": value for key, value in actor.items()},
        **body,
        "event_id": f"e{seq}",
        "seq": seq,
        "prev_hash": prev_hash,
        "producer_instance": "p",
        "attributes": {"custody.redacted": "body.purpose"} if redacted else {},
    }
