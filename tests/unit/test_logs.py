"""The long-running roles log JSON lines."""

from __future__ import annotations

import json
import logging
import sys

from processors.logs import JsonLines


def test_a_record_is_one_json_object_with_its_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "custody.ingest", logging.WARNING, __file__, 1, "stored %d", (3,), None
        )
        record.exc_info = sys.exc_info()
    line = JsonLines().format(record)
    payload = json.loads(line)
    assert "\n" not in line
    assert (payload["level"], payload["logger"], payload["message"]) == (
        "warning",
        "custody.ingest",
        "stored 3",
    )
    assert payload["ts"].endswith("+00:00")
    assert "ValueError: boom" in payload["exception"]
