"""Saved OPA decision logs, as ``custody import opa`` and the upload route read them.

Accepted, in one file or mixed: JSON arrays of decision events (what OPA's
``decision_logs`` plugin uploads, un-gzipped), JSON lines of decision events, and OPA's
console decision logger output (JSON lines where the logger's ``level``, ``msg``, ``time``
and ``type`` sit beside the decision's fields). A value that does not parse is rejected by
the line it starts on and reading goes on at the next line, so one broken record costs
only itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from processors.collect.opa import json_type
from processors.collect.records import Rejection

DECISION_LOG_TYPE = "openpolicyagent.org/decision_logs"
"""The ``type`` OPA's console logger gives a decision log line."""
_LOGGER_FIELDS = ("level", "msg", "time", "type")
_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\r\n"


def _unwrapped(value: dict[str, Any]) -> dict[str, Any]:
    """A decision event without the console logger's fields around it. The server's own
    log lines (start-up, errors) share the console with decisions: they pass as they are,
    and :func:`~processors.collect.opa.map_decision` counts them as skipped."""
    if "msg" not in value or "level" not in value:
        return value
    if value.get("type") != DECISION_LOG_TYPE and "decision_id" not in value:
        return value
    # The decision's own time is "timestamp"; "time" is when the logger wrote the line.
    return {key: item for key, item in value.items() if key not in _LOGGER_FIELDS}


def _items(value: Any, line: int) -> Iterator[dict[str, Any] | Rejection]:
    if isinstance(value, dict):
        yield _unwrapped(value)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict):
                yield _unwrapped(item)
            else:
                yield Rejection(
                    "opa_malformed_json",
                    f"line {line}: array item {index} ({json_type(item)}) is not an object",
                )
    else:
        yield Rejection(
            "opa_malformed_json", f"line {line}: a JSON {json_type(value)}, not an object"
        )


def read_decisions(text: str) -> Iterator[dict[str, Any] | Rejection]:
    """Every decision event of a saved log, in order; a :class:`Rejection` for a value that
    does not parse or is not an object (naming its line, never its content). Blank lines
    are ignored."""
    # A byte-order mark, as some editors and Windows tools save, is no record.
    position, line, end = int(text.startswith("\ufeff")), 1, len(text)
    while True:
        start = position
        while position < end and text[position] in _WHITESPACE:
            position += 1
        line += text.count("\n", start, position)
        if position >= end:
            return
        try:
            value, after = _DECODER.raw_decode(text, position)
        except (json.JSONDecodeError, RecursionError) as exc:
            # The parser's message names what it expected, never the text it read.
            problem = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            yield Rejection("opa_malformed_json", f"line {line}: {problem}")
            newline = text.find("\n", position)
            position = end if newline < 0 else newline
            continue
        yield from _items(value, line)
        line += text.count("\n", position, after)
        position = after


def decisions_of_upload(body: bytes) -> list[Any]:
    """The decision events of an upload body (OPA's JSON array, gzip already undone);
    raises ValueError naming the problem when it is not a JSON array."""
    try:
        value = json.loads(body)
    except UnicodeDecodeError as exc:
        raise ValueError("the upload is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"the upload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise ValueError("the upload is not JSON this reader takes: nested too deeply") from exc
    if not isinstance(value, list):
        raise ValueError(
            f"the upload is a JSON {json_type(value)}, not an array of decision events"
        )
    return value
