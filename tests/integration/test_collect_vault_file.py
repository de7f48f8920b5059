"""Following Vault's file audit device on a real broker: across rotation (before and
during a restart), a line still being written and restarts, every line's events are
published exactly once."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.collect.publisher import CollectPublisher
from processors.collect.records import Mapped, Origin
from processors.collect.vault import VaultAuditMapper, VaultMapping
from processors.collect.vault_file import VaultFileFollower
from producers.settings import Settings
from schemas.codec import AvroCodec
from tests.support.broker import payload, read_to_end
from tests.support.collect import sample_lines

pytestmark = pytest.mark.integration

ORIGIN = Origin("acme", "vault-file")


def kv_reads(first: int, count: int) -> list[str]:
    """``count`` request/response pairs of Vault's documented KV read, each with its own
    request id and time (numbered from ``first``)."""
    request, response = (json.loads(line) for line in sample_lines("vault/kv_read.jsonl"))
    lines = []
    for number in range(first, first + count):
        request_id = f"0b5e0c1d-7f3a-4c2e-9d8b-{number:012d}"
        for entry in (request, response):
            entry["request"]["id"] = request_id
            entry["time"] = f"2026-11-29T10:{number // 60 % 60:02d}:{number % 60:02d}.000000000Z"
            lines.append(json.dumps(entry))
    return lines


def append(path: Path, lines: list[str], end: str = "\n") -> None:
    with path.open("a") as out:
        out.write("".join(line + "\n" for line in lines[:-1]) + lines[-1] + end)


def expected_ids(lines: list[str]) -> Counter[str]:
    mapper = VaultAuditMapper(ORIGIN, VaultMapping())
    ids: Counter[str] = Counter()
    for line in lines:
        for outcome in mapper.feed(json.loads(line)):
            assert isinstance(outcome, Mapped), outcome
            ids.update(event.event_id for event in outcome.events)
    return ids


@pytest.fixture
def publisher(settings: Settings) -> Iterator[CollectPublisher]:
    running = CollectPublisher(settings)
    yield running
    running.close()


def follower(log: Path, checkpoint: Path, publisher: CollectPublisher) -> VaultFileFollower:
    """A follower as a fresh ``custody collect`` process would start it."""
    return VaultFileFollower(
        log, ORIGIN, VaultAuditMapper(ORIGIN, VaultMapping()), publisher, checkpoint
    )


def take_all(follow: VaultFileFollower) -> int:
    """Step until a step takes nothing; the lines taken."""
    taken = 0
    while step := follow.step():
        taken += step
    return taken


def test_every_line_is_published_once_across_rotation_and_restarts(
    settings: Settings, publisher: CollectPublisher, tmp_path: Path
) -> None:
    log, checkpoint = tmp_path / "audit.log", tmp_path / "checkpoint.json"
    written: list[str] = []

    def write(path: Path, lines: list[str]) -> None:
        append(path, lines)
        written.extend(lines)

    write(log, kv_reads(0, 10))
    first = follower(log, checkpoint, publisher)
    assert take_all(first) == 20

    # logrotate moves the file; Vault writes to the old one until it reopens the path.
    log.rename(tmp_path / "audit.log.1")
    write(tmp_path / "audit.log.1", kv_reads(10, 5))
    write(log, kv_reads(15, 5))
    assert take_all(first) == 20

    # A line Vault has not finished writing waits for its end.
    [*whole, last] = kv_reads(20, 1)
    append(log, [*whole, last[:40]], end="")
    assert take_all(first) == 1
    with log.open("a") as out:
        out.write(last[40:] + "\n")
    written.extend([*whole, last])
    assert take_all(first) == 1

    # A restart resumes at the checkpoint.
    write(log, kv_reads(21, 5))
    assert take_all(follower(log, checkpoint, publisher)) == 10

    # Lines written, then the file rotated, while collect was down: the old file's rest
    # is found by its inode and read before the new file.
    write(log, kv_reads(26, 3))
    log.rename(tmp_path / "audit.log.2")
    write(log, kv_reads(29, 3))
    assert take_all(follower(log, checkpoint, publisher)) == 12

    codec = AvroCodec()
    values = [payload(m) for m in read_to_end(settings)]
    published = Counter(
        codec.decode_event(v).event_id for v in values if not v.startswith(b"end-marker-")
    )
    assert published == expected_ids(written)
    assert set(published.values()) == {1}


def test_a_copytruncated_file_is_read_again_from_its_start(
    settings: Settings, publisher: CollectPublisher, tmp_path: Path
) -> None:
    log, checkpoint = tmp_path / "audit.log", tmp_path / "checkpoint.json"
    append(log, kv_reads(0, 4))
    follow = follower(log, checkpoint, publisher)
    assert take_all(follow) == 8
    os.truncate(log, 0)
    append(log, kv_reads(4, 2))
    # The step at the end notices the truncation; the next ones read the new lines.
    assert take_all(follow) == 4
    codec = AvroCodec()
    values = [payload(m) for m in read_to_end(settings)]
    published = Counter(
        codec.decode_event(v).event_id for v in values if not v.startswith(b"end-marker-")
    )
    assert published == expected_ids(kv_reads(0, 4) + kv_reads(4, 2))
