"""Vault audit lines (JSON lines, from the file or socket device, or a saved log) to
adapter outcomes: the part every Vault transport shares."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from processors.collect.records import Outcome, Rejection, Skipped
from processors.collect.vault import VaultAuditMapper

MALFORMED = "vault_malformed_json"
REQUEST_HELD = "vault_request_joined_with_response"


def outcomes_of_lines(
    mapper: VaultAuditMapper, lines: Iterable[bytes]
) -> Iterator[tuple[Outcome, bytes | None]]:
    """Each line's outcomes, paired with the line where it is dead-lettered. A blank line
    is nothing; a line that is not a JSON object is a :class:`Rejection`."""
    for line in lines:
        text = line.strip()
        if not text:
            continue
        try:
            entry = json.loads(text)
        except ValueError as exc:
            # The parser's message names a position, never the content.
            yield Rejection(MALFORMED, f"not JSON: {exc}"), line
            continue
        if not isinstance(entry, dict):
            yield Rejection(MALFORMED, "the line is not a JSON object"), line
            continue
        outcomes = mapper.feed(entry)
        if not outcomes:
            # A request entry: its events come with its response's line (or at the end of
            # an import); counted, so that every line is accounted for.
            yield Skipped(REQUEST_HELD), None
        for outcome in outcomes:
            yield outcome, line if isinstance(outcome, Rejection) else None
