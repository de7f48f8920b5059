"""Following Vault's file audit device: every line published once, across rotation and
restarts.

The follower reads complete lines from where its checkpoint says, publishes them, and
only after Kafka acknowledged every event moves the checkpoint (the file's device and
inode, and the byte offset after the last line taken), written atomically. So:

- a restart (or a crash) resumes at the checkpoint: lines after it are read again, lines
  before it never; a line whose events were acked but whose checkpoint was not yet
  written is published again with the same derived event ids, and stored once;
- rotation (``logrotate`` moving the file, Vault reopening the path on SIGHUP): the old
  file is read to its end before the new one is opened; after a restart, the
  checkpointed inode is looked for among the path's siblings (``audit.log.1``, ...), so
  lines written to the old file before the restart are not lost;
- a truncated file (``copytruncate``) is read again from its start;
- a line still being written (no newline yet) waits for its end.

The Vault adapter's memory (tokens' contexts and children) lives in this process: after a
restart, revocations of children of tokens issued before it are not inferred
(docs/collect.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from processors.collect.metrics import CollectMetrics
from processors.collect.publisher import CollectPublisher, Tally, Unavailable
from processors.collect.records import Origin, Outcome
from processors.collect.vault import VaultAuditMapper
from processors.collect.vault_lines import outcomes_of_lines

_log = logging.getLogger("custody.collect.vault_file")

# Lines published per batch: one wait for Kafka's acks covers them all.
BATCH_LINES = 2_000
# The longest line taken (Vault's entries are a few KB; a larger one is cut at this size
# and dead-lettered as malformed rather than held in memory without bound).
MAX_LINE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Checkpoint:
    """Where the follower stands: a file (device, inode) and the offset after the last
    line whose events Kafka acknowledged."""

    device: int
    inode: int
    offset: int


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The saved checkpoint, or None when there is none."""
    try:
        return Checkpoint(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"checkpoint {path} cannot be read: {exc}") from None


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` atomically (a crash leaves the old one or the new one)."""
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(checkpoint)))
    os.replace(partial, path)


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


@dataclass
class VaultFileFollower:
    """Follows one audit log file (``path``) for one origin (the tenant and source it is
    run for), its checkpoint at ``checkpoint_path``."""

    path: Path
    origin: Origin
    mapper: VaultAuditMapper
    publisher: CollectPublisher
    checkpoint_path: Path
    metrics: CollectMetrics | None = None
    tally: Tally = field(default_factory=Tally, init=False)
    lines: int = field(default=0, init=False)
    _file: BinaryIO | None = field(default=None, init=False)
    _offset: int = field(default=0, init=False)
    # Outcomes of lines read but not yet acknowledged, with the offset after them.
    _unacked: tuple[list[tuple[Outcome, bytes | None]], int, int] | None = field(
        default=None, init=False
    )

    def _open_at_checkpoint(self) -> None:
        checkpoint = load_checkpoint(self.checkpoint_path)
        if checkpoint is not None:
            wanted = (checkpoint.device, checkpoint.inode)
            for candidate in self._candidates():
                try:
                    if _identity(candidate.stat()) == wanted:
                        self._open(candidate, checkpoint.offset)
                        return
                except FileNotFoundError:
                    continue
            _log.warning(
                "the checkpointed file of %s is gone (rotated away): reading %s from its start",
                self.path,
                self.path,
            )
        self._open(self.path, 0)

    def _candidates(self) -> list[Path]:
        """The path first, then its rotated siblings (``audit.log.1``, ``audit.log-...``)."""
        siblings = sorted(self.path.parent.glob(self.path.name + "?*"))
        return [self.path, *siblings]

    def _open(self, path: Path, offset: int) -> None:
        if self._file is not None:
            self._file.close()
        self._file = path.open("rb")
        size = os.fstat(self._file.fileno()).st_size
        self._offset = offset if offset <= size else 0
        self._file.seek(self._offset)

    def _opened(self) -> BinaryIO:
        """The file being followed, opened at the checkpoint on first use."""
        if self._file is None:
            self._open_at_checkpoint()
        if self._file is None:
            raise RuntimeError("no file opened")
        return self._file

    def _read_lines(self) -> tuple[list[bytes], int]:
        """Complete lines from the offset (at most :data:`BATCH_LINES`) and the offset
        after them; a partial last line is left for the next read."""
        file = self._opened()
        file.seek(self._offset)
        lines: list[bytes] = []
        offset = self._offset
        while len(lines) < BATCH_LINES:
            line = file.readline(MAX_LINE_BYTES)
            if not line:
                break
            if not line.endswith(b"\n") and len(line) < MAX_LINE_BYTES:
                break
            lines.append(line)
            offset += len(line)
        return lines, offset

    def _rotated_or_truncated(self) -> bool:
        """At the end of the open file: move to a new file at the path, or back to the
        start of a truncated one; whether anything changed."""
        opened = os.fstat(self._opened().fileno())
        if opened.st_size < self._offset:
            _log.info("%s was truncated: reading it from its start", self.path)
            self._offset = 0
            return True
        try:
            current = self.path.stat()
        except FileNotFoundError:
            return False  # rotated away, the new file not created yet
        if _identity(current) != _identity(opened):
            _log.info("%s was rotated: following the new file", self.path)
            self._open(self.path, 0)
            self._checkpoint()
            return True
        return False

    def _checkpoint(self) -> None:
        device, inode = _identity(os.fstat(self._opened().fileno()))
        save_checkpoint(self.checkpoint_path, Checkpoint(device, inode, self._offset))

    def step(self) -> int:
        """Publish the lines available now, then move the checkpoint; the number of lines
        taken. Raises :class:`Unavailable` when Kafka did not take them: the checkpoint
        stays, and the next step publishes the same outcomes again (the adapter has seen
        the lines: it must not be fed them twice)."""
        if self._unacked is None:
            lines, offset = self._read_lines()
            if not lines:
                # At the end: a rotated or truncated file is read on at once.
                return self.step() if self._rotated_or_truncated() else 0
            self._unacked = (list(outcomes_of_lines(self.mapper, lines)), offset, len(lines))
        outcomes, offset, count = self._unacked
        started = time.monotonic()
        tally = self.publisher.publish(self.origin, outcomes)
        if self.metrics is not None:
            self.metrics.counted("vault", tally, time.monotonic() - started)
        self._unacked = None
        self._offset = offset
        self._checkpoint()
        self.tally.add(tally)
        self.lines += count
        return count

    def follow(self, stop: threading.Event, poll_seconds: float = 0.2) -> None:
        """Step until ``stop`` is set: at once while lines keep coming, every
        ``poll_seconds`` when at the end, with backoff while Kafka is unavailable."""
        wait = poll_seconds
        while not stop.is_set():
            try:
                taken = self.step()
                wait = poll_seconds
            except Unavailable as exc:
                _log.warning("Vault audit lines of %s not taken: %s", self.path, exc)
                taken, wait = 0, min(wait * 2, 30.0)
            except FileNotFoundError:
                taken = 0  # Vault has not created the file yet
            if not taken:
                stop.wait(wait)
        if self._file is not None:
            self._file.close()
