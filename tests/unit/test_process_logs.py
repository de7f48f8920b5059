"""The stack's processes log JSON lines, appended start after start, and a start that
fails leaves its reason in the log and in the error ``custody up`` raises."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from processors import stack, starting
from processors.processes import running
from producers.settings import Settings

# A role as `custody correlate` and `custody ingest` set themselves up, writing to its
# output every way a process can: logging, print, rich, the stderr descriptor from native
# code, an uncaught exception.
ROLE = textwrap.dedent(
    """
    import ctypes, logging, os, sys
    from rich.console import Console
    from processors.logs import log_json_to_stderr

    log_json_to_stderr()
    logging.getLogger("custody.role").warning("a record")
    print("\\x1b[31mprinted\\x1b[0m in red")
    Console(stderr=True).print("[bold red]rich[/] message")
    os.write(2, b"%3|1796287815.075|FAIL|rdkafka#consumer-1| Connection refused\\n")
    ctypes.CDLL(None).write(2, b"native line\\n", 12)
    raise RuntimeError("the broker at 127.0.0.1:9 is unreachable")
    """
)


def _records(log: Path) -> list[dict[str, Any]]:
    raw = log.read_bytes()
    assert b"\x1b" not in raw
    assert b"\b" not in raw
    return [json.loads(line) for line in raw.decode().splitlines()]


def _run_role(log: Path) -> int:
    with log.open("ab") as out:
        return subprocess.run(
            [sys.executable, "-c", ROLE],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        ).returncode


def test_a_role_writing_to_a_file_writes_only_json_lines_and_appends(tmp_path: Path) -> None:
    log = tmp_path / "role.log"
    assert [_run_role(log), _run_role(log)] == [1, 1]
    records = _records(log)
    said = [(r["level"], r["logger"], r["message"]) for r in records]
    once = [
        ("warning", "custody.role", "a record"),
        ("info", "custody.stdout", "printed in red"),
        ("warning", "custody.stderr", "rich message"),
        (
            "error",
            "custody.stderr",
            "%3|1796287815.075|FAIL|rdkafka#consumer-1| Connection refused",
        ),
        ("warning", "custody.stderr", "native line"),
        (
            "critical",
            "custody",
            "stopped by RuntimeError: the broker at 127.0.0.1:9 is unreachable",
        ),
    ]
    assert sorted(said) == sorted(once * 2)
    uncaught = [r for r in records if r["level"] == "critical"]
    assert all("RuntimeError: the broker" in r["exception"] for r in uncaught)


def _relay(log: Path, *program: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "processors.log_relay", "tool", "--", *program],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def test_the_relay_logs_a_plain_text_program_as_json_lines(tmp_path: Path) -> None:
    log = tmp_path / "tool.log"
    script = r'printf "\033[?25lspinning\b\033[?25h\n"; echo "Error: port taken" >&2; exit 3'
    assert _relay(log, "sh", "-c", script).wait(timeout=60) == 3
    said = [(r["level"], r["logger"], r["message"]) for r in _records(log)]
    assert said == [
        ("info", "tool", "spinning"),
        ("error", "tool", "Error: port taken"),
        ("error", "tool", "sh exited with status 3"),
    ]


def _deadline(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def _child_of(pid: int) -> int | None:
    """The process ``pid`` started, once it runs its program (``sleep``)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    words = children.read_text().split() if children.exists() else []
    if not words:
        return None
    try:
        program = Path(f"/proc/{words[0]}/cmdline").read_bytes()
    except OSError:
        return None
    return int(words[0]) if program.startswith(b"sleep\0") else None


def test_the_relay_passes_a_stop_on_and_takes_its_program_with_it(tmp_path: Path) -> None:
    log = tmp_path / "tool.log"
    stopped = _relay(log, "sleep", "300")
    assert _deadline(lambda: _child_of(stopped.pid) is not None, 30)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=30) == 128 + signal.SIGTERM
    assert _records(log)[-1]["message"] == f"sleep exited with status {-signal.SIGTERM}"
    assert _records(log)[-1]["level"] == "info"

    killed = _relay(log, "sleep", "300")
    assert _deadline(lambda: _child_of(killed.pid) is not None, 30)
    program = _child_of(killed.pid)
    assert program is not None
    killed.kill()
    killed.wait(timeout=30)
    assert _deadline(lambda: not running(program), 30), "the program outlived its relay"


def _settings(home: Path) -> Settings:
    return Settings(home=home, kafka_bootstrap="127.0.0.1:9")


def test_a_start_that_fails_leaves_its_reason_in_the_log_and_the_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    errors = []
    for _ in range(2):
        started = stack.start_process(settings, "role", [sys.executable, "-c", ROLE])
        with pytest.raises(starting.StackError) as raised:
            starting.wait_until_started([started], lambda name: False, timeout=60)
        errors.append(str(raised.value))
    log = tmp_path / "logs" / "role.log"
    assert (
        errors
        == [
            "role exited at start (status 1): RuntimeError: the broker at 127.0.0.1:9 is "
            f"unreachable (log: {log})"
        ]
        * 2
    )
    records = _records(log)
    starts = [r for r in records if r["logger"] == "custody.stack"]
    assert [r["message"] for r in starts] == [f"starting role: {sys.executable} -c {ROLE}"] * 2
    assert sum(r["level"] == "critical" for r in records) == 2


def _progressing(ready_after: float, quiet: bool = False) -> list[str]:
    """A process that logs a line every 0.2 s (none if ``quiet``) and is ready (its file
    ``ready`` exists) after ``ready_after`` seconds."""
    script = textwrap.dedent(
        f"""
        import logging, pathlib, time
        from processors.logs import log_json_to_stderr
        log_json_to_stderr()
        start = time.monotonic()
        while time.monotonic() - start < {ready_after}:
            if not {quiet}:
                elapsed = time.monotonic() - start
                logging.getLogger("custody.role").info("recovering, %.1f s in", elapsed)
            time.sleep(0.2)
        pathlib.Path("ready").touch()
        time.sleep(300)
        """
    )
    return [sys.executable, "-c", script]


def _wait(tmp_path: Path, argv: list[str], timeout: float, stall: float) -> list[str]:
    """Start ``argv`` and wait until it is ready; what the wait showed meanwhile."""
    started = stack.start_process(_settings(tmp_path), "role", argv)
    shown: list[str] = []
    try:
        starting.wait_until_started(
            [started],
            lambda name: (Path.cwd() / "ready").exists(),
            timeout=timeout,
            stall=stall,
            progress=shown.append,
        )
    finally:
        started.process.kill()
        started.process.wait()
    return shown


def test_up_waits_as_long_as_a_start_moves_and_shows_its_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # Ready after 3 s, though its log would count as stuck after 1 s of silence.
    shown = _wait(tmp_path, _progressing(ready_after=3), timeout=60, stall=1)
    assert (tmp_path / "ready").exists()
    assert any(s.startswith("role: recovering, ") for s in shown)


def test_a_start_whose_log_stops_moving_is_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    began = time.monotonic()
    with pytest.raises(
        starting.StackError, match=r"role stuck at start: its log has not moved for 1s"
    ):
        _wait(tmp_path, _progressing(ready_after=60, quiet=True), timeout=60, stall=1)
    assert time.monotonic() - began < 30


def test_a_start_that_moves_but_never_ends_meets_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(starting.StackError, match=r"role not ready after 2s \(it said last: recov"):
        _wait(tmp_path, _progressing(ready_after=60), timeout=2, stall=10)
    assert not (tmp_path / "ready").exists()


def test_a_large_log_is_moved_aside_at_a_start(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "role.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"{}\n" * (6 * 1024 * 1024))
    started = stack.start_process(_settings(tmp_path), "role", [sys.executable, "-c", "pass"])
    started.process.wait(timeout=60)
    assert (tmp_path / "logs" / "role.log.1").stat().st_size == 18 * 1024 * 1024
    assert [r["logger"] for r in _records(log)] == ["custody.stack"]
    assert os.stat(log).st_size < 1024
