"""``custody up`` after a ``kill -9``: the correlator's log keeps every start's lines as
JSON, and a restart that fails says why, in the log and in ``custody up``'s error."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from processors.correlator.app import APP_ID
from processors.correlator.codec import stored_form, tree_key
from processors.processes import running
from tests.support.polling import poll
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def _records(log: Path) -> list[dict[str, Any]]:
    raw = log.read_bytes()
    assert b"\x1b" not in raw, f"control codes in {log}"
    assert b"\b" not in raw, f"control codes in {log}"
    return [json.loads(line) for line in raw.decode().splitlines()]


def _kill_9(stack: Stack, name: str) -> None:
    pid = stack.pid(name)
    os.kill(pid, signal.SIGKILL)
    assert poll(lambda: not running(pid), 10, 0.05), f"{name} survived SIGKILL"


def _plant_tree_of_a_newer_format(stack: Stack) -> None:
    """A tree in the correlator's table as a newer release would save it."""
    state = {"format": 999, "tenant": "acme", "root_task_id": "root-from-the-future"}
    producer = Producer({"bootstrap.servers": stack.bootstrap})
    producer.produce(
        f"{APP_ID}-custody-trees-changelog",
        key=tree_key("acme", "root-from-the-future").encode(),
        value=stored_form(0, json.dumps(state).encode()),
        partition=0,
    )
    assert producer.flush(30) == 0


def test_restarts_append_json_lines_and_a_failed_one_says_why(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    logs = tmp_path / ".custody" / "logs"
    try:
        stack.up()
        first = stack.pid("correlate")
        _kill_9(stack, "correlate")
        stack.up()
        assert stack.pid("correlate") != first
        records = _records(logs / "correlate.log")
        said = [r["message"] for r in records]
        assert sum(m.startswith("starting correlate: ") for m in said) == 2
        assert said.count("ready: correlating custody.events.v1") == 2
        for name in ("broker", "ingest"):
            assert _records(logs / f"{name}.log"), f"{name}.log is empty"

        _kill_9(stack, "correlate")
        _plant_tree_of_a_newer_format(stack)
        failed = stack.custody("up")
        assert failed.returncode == 1
        error = " ".join(failed.stderr.split())
        assert "correlate exited at start (status 1): " in error
        assert "StateFormatError: tree state was saved in correlator state format 999" in error
        assert "docs/operations.md" in error
        records = _records(logs / "correlate.log")
        assert sum(r["message"].startswith("starting correlate: ") for r in records) == 3
        assert any("format 999" in r.get("exception", "") for r in records)
    finally:
        stack.custody("down")
