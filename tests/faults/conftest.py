"""The fault suite (``make faults``; a short version runs in ``make test``).

Each test tries one fault against the real local stack and records what it tried and
whether the pipeline survived it with :func:`record_fault`, before asserting. At the end
of the session the records go to ``faults-results.json`` (``CUSTODY_FAULTS_RESULTS``
overrides the path) and ``python -m tests.faults.report`` prints them as a markdown table,
the source of the one in ``docs/faults.md``.

``CUSTODY_FAULTS_SCALE=full`` (``make faults``) runs the sizes the issue asks for (100,000
events, ten kills of each worker, ...); the default ``short`` runs the same code smaller,
within CI's time.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

# The integration suite's fixtures (a private Tansu per test, settings pointing at it).
from tests.support.broker import broker, settings

__all__ = ["broker", "record_fault", "scaled", "settings"]

ROOT = Path(__file__).resolve().parents[2]
SCALE = os.environ.get("CUSTODY_FAULTS_SCALE", "short")
_RESULTS: list[dict[str, Any]] = []


def scaled(short: int, full: int) -> int:
    """``full`` under ``make faults``, ``short`` otherwise."""
    return full if SCALE == "full" else short


Recorder = Callable[..., None]


@pytest.fixture
def record_fault(request: pytest.FixtureRequest) -> Recorder:
    """``record_fault(area, tried, survived, **measured)``: one row of the results."""

    def record(area: str, tried: str, survived: bool, **measured: Any) -> None:
        _RESULTS.append(
            {
                "test": request.node.nodeid,
                "area": area,
                "tried": tried,
                "survived": bool(survived),
                "scale": SCALE,
                "measured": measured,
            }
        )

    return record


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _RESULTS:
        return
    path = Path(os.environ.get("CUSTODY_FAULTS_RESULTS", ROOT / "faults-results.json"))
    path.write_text(
        json.dumps(
            {
                "scale": SCALE,
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "results": _RESULTS,
            },
            indent=2,
        )
        + "\n"
    )
