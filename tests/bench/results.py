"""The entry every benchmark returns: one line of ``bench-results.json``."""

from __future__ import annotations

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
