"""The entry every benchmark returns: one line of ``bench-results.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NotRequired, TypedDict


class Entry(TypedDict):
    """A measured value, and its ratio to a floor measured in the same run (if any)."""

    name: str
    value: float
    unit: str
    baseline: float | None
    ratio: float | None
    detail: NotRequired[dict[str, Any]]


def entry(
    name: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    detail: dict[str, Any] | None = None,
) -> Entry:
    """An entry with ``ratio = value / baseline`` (null without a baseline)."""
    result: Entry = {
        "name": name,
        "value": round(value, 1),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 1),
        "ratio": None if not baseline else round(value / baseline, 3),
    }
    if detail is not None:
        result["detail"] = detail
    return result


def env_count(variable: str, default: int) -> int:
    """A benchmark's size: the environment's ``variable``, else ``default``."""
    return int(os.environ.get(variable, default))


def env_path(variable: str) -> Path | None:
    """A path the environment's ``variable`` names (a profile to write), if set."""
    value = os.environ.get(variable)
    return Path(value) if value else None
