"""Validation of events in their JSON-lines form, for ``custody publish`` and any
language that can write JSON.

Every line is checked before anything is published; each problem is reported with its
line number, the field and the reason, never with the offending value (it may be a secret).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from schemas.models import Envelope, field_errors, validate_event
from schemas.secrets import find_secrets


@dataclass(frozen=True, slots=True)
class LineError:
    """One problem on one line of the input."""

    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ParsedLines:
    """The valid events (with their line numbers) and every problem found."""

    events: list[tuple[int, Envelope]]
    errors: list[LineError]


def parse_event_lines(lines: Iterable[str]) -> ParsedLines:
    """Validate JSON-lines events; blank lines are skipped."""
    events: list[tuple[int, Envelope]] = []
    errors: list[LineError] = []
    first_seen: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append(
                LineError(number, "(line)", f"invalid JSON: {exc.msg} at column {exc.colno}")
            )
            continue
        if not isinstance(data, dict):
            errors.append(LineError(number, "(line)", "expected a JSON object"))
            continue
        problems = [
            LineError(number, f.field, f"value looks like a secret ({f.kind})")
            for f in find_secrets(data)
        ]
        try:
            event = validate_event(data)
        except ValidationError as exc:
            problems += [LineError(number, field, reason) for field, reason in field_errors(exc)]
        else:
            earlier = first_seen.setdefault(event.event_id, number)
            if earlier != number:
                problems.append(LineError(number, "event_id", f"duplicate of line {earlier}"))
            elif not problems:
                events.append((number, event))
        errors += problems
    return ParsedLines(events, errors)
