"""Run a program whose output is not JSON lines, and log that output as JSON lines.

``python -m processors.log_relay NAME -- PROGRAM [ARG...]``

The local broker (Tansu) writes plain text; ``custody up`` starts it through this relay so
that its log, like every other of the stack, is JSON lines without terminal control codes
(:mod:`processors.logs`). Each line of the program's stdout and stderr becomes a record of
logger ``NAME``; its exit status is logged last, as an error unless it is 0 or the stop
the relay forwarded. SIGTERM and SIGINT are passed on to the program, which also dies with
the relay (a SIGKILL of the relay leaves no broker behind). Exits with the program's
status.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
from types import FrameType
from typing import IO, cast

from processors.logs import log_json_to_stderr, log_lines

_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """In the child, before it runs the program: be killed when the relay dies (and now,
    if it died before this was asked)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def relay(name: str, argv: list[str]) -> int:
    """Run ``argv``, logging each line it writes under logger ``name``; its exit status."""
    log = logging.getLogger(name)
    # The stack's broker command (processors/stack.py), never user input.
    program = subprocess.Popen(  # noqa: S603
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=functools.partial(_die_with, os.getpid()),
    )
    forwarded: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        forwarded.append(signum)
        program.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    # stdout=PIPE: a pipe is there.
    log_lines(cast(IO[bytes], program.stdout), log, logging.INFO)
    status = program.wait()
    stopped = status < 0 and -status in forwarded
    log.log(
        logging.INFO if status == 0 or stopped else logging.ERROR,
        "%s exited with status %d",
        argv[0],
        status,
    )
    return 128 - status if status < 0 else status


def main(args: list[str]) -> int:
    """``NAME -- PROGRAM [ARG...]``."""
    if len(args) < 3 or args[1] != "--":
        raise SystemExit("usage: python -m processors.log_relay NAME -- PROGRAM [ARG...]")
    log_json_to_stderr()
    return relay(args[0], args[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
