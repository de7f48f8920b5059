"""``custody report`` over a large store (10M events by default, all in one tenant), on chdb.

**Store.** :func:`tests.bench.bench_trace.fill` with every tree in one tenant
(``tenants=1``): the reported tenant holds all the stored events, 30 days of them, with the
matching tasks, credentials, delegations and alerts state rows. The issue asks for the
report "for one tenant over 10M stored events"; this is the hardest reading of it (a tenant
of a five-tenant store would hold a fifth of them).

**Report.** ``build(BackendReader(backend), period, load_mapping())`` then ``render(...,
"json")``: what ``custody report --format json`` runs when it opens the directory itself,
over the whole period of the fill (from the hour of its first event to the hour after its
last). :data:`WARMUP` untimed rounds, then :data:`ROUNDS` timed ones; the median seconds,
and the median seconds of each section's statement (``build``'s timings), of assembling
and of rendering, each with its share of their sum. The report must count every event of
the tenant, else the run fails.

**Floor.** Reading the tenant's events once: ``count()`` and ``uniqExact(root_task_id)``
over the same tenant and period through the same reader (so ``FINAL`` applies as in the
report), timed in the same rounds, alternating with the report.

**Merged.** Then ``OPTIMIZE TABLE ... FINAL`` on every table, and the same rounds again
(as a store whose background merges have caught up).

``CUSTODY_BENCH_REPORT_EVENTS`` (default 10,000,000) sets the number of events.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from processors.reporting.build import period_of
from processors.reporting.frameworks import load_mapping
from processors.reporting.render import render
from processors.reporting.report import Period, build
from processors.serving.reader import BackendReader
from processors.storage.backend import ChdbBackend, iso
from producers.settings import Settings
from tests.bench.bench_trace import active_parts, filled, optimize
from tests.bench.results import Entry, entry, env_count

DEFAULT_EVENTS = 10_000_000
WARMUP = 1
ROUNDS = 3
GOAL_SECONDS = 10.0

FLOOR = """
SELECT count() AS events, uniqExact(root_task_id) AS trees
FROM events
WHERE tenant = {tenant:String}
  AND event_time >= parseDateTime64BestEffort({start:String}, 6, 'UTC')
  AND event_time < parseDateTime64BestEffort({end:String}, 6, 'UTC')"""


def whole_period(backend: ChdbBackend, home: Path) -> tuple[Period, int]:
    """The tenant holding the most events, over the hours its events span, with the
    correlator's default settings; and how many events it holds."""
    row = backend.select(
        "SELECT tenant, count() AS n, min(event_time) AS first, max(event_time) AS last "
        "FROM events FINAL GROUP BY tenant ORDER BY n DESC LIMIT 1"
    )[0]
    first = datetime.fromisoformat(str(row["first"])).replace(tzinfo=UTC)
    last = datetime.fromisoformat(str(row["last"])).replace(tzinfo=UTC)
    start = first.replace(minute=0, second=0, microsecond=0)
    end = last.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return period_of(Settings(home=home), str(row["tenant"]), start, end), int(row["n"])


def time_rounds(reader: BackendReader, period: Period, tenant_events: int) -> dict[str, Any]:
    """Floor and report alternately, :data:`WARMUP` untimed then :data:`ROUNDS` timed
    rounds; the medians, the rounds and each section's median seconds and share."""
    mapping = load_mapping()
    params = period.params()
    floors: list[float] = []
    reports: list[float] = []
    sections: dict[str, list[float]] = {}
    sealed: dict[str, Any] = {}
    content = b""
    for index in range(WARMUP + ROUNDS):
        started = time.perf_counter()
        floor = reader.select(FLOOR, params)[0]
        floor_seconds = time.perf_counter() - started
        started = time.perf_counter()
        sealed, timings = build(reader, period, mapping)
        rendered = time.perf_counter()
        content = render(sealed, "json")
        timings["render"] = time.perf_counter() - rendered
        report_seconds = time.perf_counter() - started
        if int(floor["events"]) != tenant_events or sealed["counts"]["events"] != tenant_events:
            raise RuntimeError(
                f"the floor counted {floor['events']} and the report "
                f"{sealed['counts']['events']} events of the tenant's {tenant_events}"
            )
        shown = {name: round(seconds, 2) for name, seconds in timings.items()}
        print(
            f"report: round {index + 1}/{WARMUP + ROUNDS} floor {floor_seconds:.2f} s, report "
            f"{report_seconds:.2f} s; sections {shown}"
        )
        if index < WARMUP:
            continue
        floors.append(floor_seconds)
        reports.append(report_seconds)
        for name, seconds in timings.items():
            sections.setdefault(name, []).append(seconds)
    medians = {name: statistics.median(found) for name, found in sections.items()}
    total = sum(medians.values())
    return {
        "seconds": round(statistics.median(reports), 3),
        "floor_seconds": round(statistics.median(floors), 3),
        "rounds": [round(s, 2) for s in reports],
        "floor_rounds": [round(s, 2) for s in floors],
        "sections_seconds": {name: round(s, 2) for name, s in medians.items()},
        "sections_share": {name: round(s / total, 3) for name, s in medians.items()},
        "report_json_bytes": len(content),
        "alerts": sealed["counts"]["alerts"],
        "identities": len(sealed["inventory"]),
        "goal": f"<= {GOAL_SECONDS:g} s",
        "goal_met": statistics.median(reports) <= GOAL_SECONDS,
    }


def run() -> list[Entry]:
    """Fill one tenant; time the report and its floor; merge every table and time both
    again."""
    events = env_count("CUSTODY_BENCH_REPORT_EVENTS", DEFAULT_EVENTS)
    print(f"report: filling about {events:,} events in one tenant")
    with tempfile.TemporaryDirectory() as tmp, filled(Path(tmp), events, tenants=1) as made:
        backend, trees, counts, parts = made.backend, made.trees, made.counts, made.parts
        fill_seconds, merge_wait = made.fill_seconds, made.merge_wait
        period, tenant_events = whole_period(backend, Path(tmp) / "home")
        print(
            f"report: {counts['events']:,} events ({tenant_events:,} of tenant "
            f"{period.tenant}) in {trees:,} trees stored in {fill_seconds:.1f} s; "
            f"rows {counts}; active parts {parts}"
        )
        reader = BackendReader(backend)
        found = time_rounds(reader, period, tenant_events)
        optimize_seconds = optimize(backend)
        merged_parts = active_parts(backend)
        merged = time_rounds(reader, period, tenant_events)
        print(
            f"report: {found['seconds']:.2f} s (floor {found['floor_seconds']:.2f} s); "
            f"merged in {optimize_seconds:.1f} s to {merged_parts}: {merged['seconds']:.2f} s "
            f"(floor {merged['floor_seconds']:.2f} s)"
        )
    store = {
        "events": counts["events"],
        "tenant": period.tenant,
        "tenant_events": tenant_events,
        "trees": trees,
        "period": {"from": iso(period.start), "to": iso(period.end)},
        "rows": counts,
        "fill_seconds": round(fill_seconds, 1),
        "merge_wait_seconds": round(merge_wait, 1),
    }
    merged_detail = {
        **merged,
        "active_parts": merged_parts,
        "optimize_seconds": round(optimize_seconds, 1),
    }
    detail = {**store, **found, "active_parts": parts, "merged": merged_detail}
    return [
        entry("report.seconds", found["seconds"], "s", found["floor_seconds"], detail),
        entry(
            "report.seconds_merged",
            merged["seconds"],
            "s",
            merged["floor_seconds"],
            {**store, **merged_detail},
        ),
    ]
