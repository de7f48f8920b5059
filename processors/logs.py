"""Structured logs: one JSON object per line on stderr, for the long-running roles.

When a role's output is not a terminal (``custody up`` appends each process's output to
its log file), every line of it parses as JSON and holds no terminal control codes:
whatever else reaches stdout or stderr becomes a record too. That covers a print, a rich
message, an uncaught exception (a ``critical`` record with its traceback), and what
native libraries write to the stderr descriptor themselves (librdkafka's
``%3|...|FAIL|...`` lines, at the level they give).
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import TextIO, cast

# Terminal escape sequences (CSI, OSC) and the other control characters but tab.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|[\x00-\x08\x0b-\x1f\x7f]"
)
# librdkafka's lines start with their syslog level: "%3|<time>|<facility>|...".
_SYSLOG_LEVEL = re.compile(r"^%([0-7])\|")
_SYSLOG_TO_LOGGING = [logging.ERROR] * 4 + [logging.WARNING] + [logging.INFO] * 2 + [logging.DEBUG]
_ERROR_WORDS = re.compile(r"\b(?:ERROR|Error|panicked)\b")
_WARNING_WORDS = re.compile(r"\bWARN(?:ING)?\b")
# How long a role's exit waits for the last lines written to stderr to be logged.
_DRAIN_SECONDS = 5.0


class JsonLines(logging.Formatter):
    """``{"ts", "level", "logger", "message"[, "exception"]}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def without_control_codes(text: str) -> str:
    """``text`` without terminal escape sequences and control characters (newlines
    included; tabs kept)."""
    return _CONTROL.sub("", text)


def level_of(line: str, default: int) -> int:
    """The level a line of another program's output says it has: librdkafka's syslog
    level, or an ERROR/WARN word; ``default`` otherwise."""
    syslog = _SYSLOG_LEVEL.match(line)
    if syslog:
        return _SYSLOG_TO_LOGGING[int(syslog.group(1))]
    if _ERROR_WORDS.search(line):
        return logging.ERROR
    if _WARNING_WORDS.search(line):
        return logging.WARNING
    return default


def log_lines(lines: Iterable[bytes], logger: logging.Logger, default: int) -> None:
    """Log each line of another program's output (control codes removed, empty lines
    skipped) at the level it says it has."""
    for raw in lines:
        line = without_control_codes(raw.decode(errors="replace")).strip()
        if line:
            logger.log(level_of(line, default), line)


class _LoggingStream(io.TextIOBase):
    """A text stream whose lines become log records: a write that ends a line logs what
    was written since the last record as one record, control codes removed."""

    def __init__(self, logger: logging.Logger, level: int, original: TextIO) -> None:
        super().__init__()
        self._logger = logger
        self._level = level
        self._original = original
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        if self._pending.endswith("\n"):
            self.flush()
        return len(text)

    def flush(self) -> None:
        lines = [without_control_codes(line) for line in self._pending.splitlines()]
        self._pending = ""
        message = "\n".join(line for line in lines if line.strip())
        if message:
            self._logger.log(self._level, message)

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._original.fileno()


class _QuietHandler(logging.StreamHandler[TextIO]):
    """A handler that says nothing when it cannot write: it would say so on stderr, which
    is logged through it again."""

    def handleError(self, record: logging.LogRecord) -> None:
        return


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    logging.getLogger("custody").critical(
        "stopped by %s: %s", kind.__name__, value, exc_info=(kind, value, traceback)
    )


def _capture_stderr() -> TextIO:
    """Turn the stderr descriptor into a pipe whose lines a thread logs; the stream the
    log records go to instead (the descriptor's original file)."""
    sys.stderr.flush()
    log = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    reader = threading.Thread(
        target=log_lines,
        args=(os.fdopen(read, "rb"), logging.getLogger("custody.stderr"), logging.WARNING),
        name="stderr-to-log",
        daemon=True,
    )
    reader.start()

    def drain() -> None:
        # The pipe's last writer closes: the thread logs what is left, then ends.
        sys.stderr.flush()
        os.dup2(log.fileno(), 2)
        reader.join(_DRAIN_SECONDS)

    atexit.register(drain)
    return log


def log_json_to_stderr(level: int = logging.INFO) -> None:
    """Send every log record of this process to stderr as JSON lines. Where stdout or
    stderr is not a terminal, whatever else reaches it is logged (stdout at info, stderr
    at warning unless a line says otherwise), and an uncaught exception is logged as a
    critical record."""
    captured = not sys.stderr.isatty()
    handler = _QuietHandler(_capture_stderr() if captured else sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if captured:
        sys.excepthook = _log_uncaught
    if not sys.stdout.isatty():
        # sys.stdout is typed as TextIO, which no io class is.
        stdout = _LoggingStream(logging.getLogger("custody.stdout"), logging.INFO, sys.stdout)
        sys.stdout = cast(TextIO, stdout)
