"""Waiting for the processes of the local stack to start: each is watched through its
log (JSON lines) until it is ready, exits, stalls or runs out of time, and a failure is
told in the words its log gives."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A starting worker whose log has not moved for this long is stuck: longer than a
# consumer group join (a session timeout), during which a worker has nothing to say.
START_STALL_SECONDS = 120.0
# How much of a log's end is read for its last records.
_TAIL_BYTES = 64 * 1024


class StackError(RuntimeError):
    """A process of the local stack did not start."""


@dataclass(frozen=True)
class Started:
    """A process just started: its handle, and its log from where this start begins."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    offset: int

    def exited(self) -> int | None:
        """Its exit status, once it has exited."""
        return self.process.poll()

    def last_said(self) -> str:
        """The last thing its log says since this start."""
        records = _records_since(self.log, self.offset)
        return _said(records[-1]) if records else ""

    def failure(self) -> str:
        """Why its start failed, as its log says: the first error record since the start
        with an exception (its message and the exception's last line), else the last
        error record, else the last line. The first: a crash's reason is logged before
        what fails while the process stops after it (faust's consumer thread stopping on a
        closed event loop, say)."""
        records = _records_since(self.log, self.offset)
        errors = [r for r in records if r.get("level") in ("error", "critical")]
        with_exception = [r for r in errors if r.get("exception")]
        if with_exception:
            return _said(with_exception[0])
        return _said((errors or records or [{"message": "its log is empty"}])[-1])


def _said(record: dict[str, Any]) -> str:
    """A record in a line: its exception's last line (``Type: text``) when it has one,
    after its message unless that repeats the exception's text."""
    message = str(record.get("message", ""))
    exception = str(record.get("exception") or "").strip().splitlines()
    if exception:
        text = exception[-1].partition(": ")[2]
        message = exception[-1] if text and text in message else f"{message}: {exception[-1]}"
    return message[:1000]


def _records_since(log: Path, offset: int) -> list[dict[str, Any]]:
    """The records at the end of ``log`` from ``offset`` on (a line that is not JSON is a
    record of its text)."""
    try:
        with log.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(offset, size - _TAIL_BYTES))
            lines = file.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        records.append(record if isinstance(record, dict) else {"message": line.strip()})
    return records


def wait_until_started(
    starting: list[Started],
    ready: Callable[[str], bool],
    timeout: float,
    stall: float = START_STALL_SECONDS,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Wait until ``ready(name)`` holds for every process of ``starting``. Raises
    :class:`StackError`, with the reason its log gives, when one exits, when one's log
    has not moved for ``stall`` seconds, or after ``timeout`` seconds in all."""
    begun = time.monotonic()
    moved = {s.name: (-1, begun) for s in starting}
    said = {s.name: "" for s in starting}
    waiting = list(starting)
    while waiting:
        waiting = [s for s in waiting if not ready(s.name)]
        now = time.monotonic()
        for s in waiting:
            status = s.exited()
            if status is not None:
                raise StackError(
                    f"{s.name} exited at start (status {status}): {s.failure()} (log: {s.log})"
                )
            size = _size(s.log)
            if size != moved[s.name][0]:
                moved[s.name] = (size, now)
                said[s.name] = s.last_said()
            if now - moved[s.name][1] >= stall:
                raise StackError(
                    f"{s.name} stuck at start: its log has not moved for {stall:.0f}s "
                    f"(it said last: {said[s.name]}) (log: {s.log})"
                )
            if now - begun >= timeout:
                raise StackError(
                    f"{s.name} not ready after {timeout:.0f}s "
                    f"(it said last: {said[s.name]}) (log: {s.log})"
                )
        if waiting and progress is not None:
            elapsed = now - begun
            progress("; ".join(f"{s.name}: {said[s.name]} ({elapsed:.0f}s)" for s in waiting))
        if waiting:
            time.sleep(0.2)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1
