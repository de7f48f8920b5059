"""Schema evolution rules: each released version must read data written by the one before.

Backward compatibility is judged by the reference implementation (the ``avro`` package's
``ReaderWriterCompatibilityChecker``), not by fastavro, so the verdict matches what other
Avro implementations will do. That package comes with the ``dev`` extra only: the contract
tests judge releases, publishing and decoding never import this module.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas import catalog


@dataclass(frozen=True)
class CompatibilityVerdict:
    record: str
    reader_version: int
    writer_version: int
    compatible: bool
    messages: tuple[str, ...]


def can_read(reader: dict[str, Any], writer: dict[str, Any]) -> tuple[bool, tuple[str, ...]]:
    """Whether data written with ``writer`` can be read with ``reader``, and why not."""
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    ok = result.compatibility is SchemaCompatibilityType.compatible
    return ok, tuple(str(m) for m in result.messages)


def check_released_versions() -> list[CompatibilityVerdict]:
    """A verdict for each consecutive pair of released versions of every record."""
    verdicts = []
    for record in catalog.RECORDS:
        released = catalog.versions(record)
        for older, newer in itertools.pairwise(released):
            ok, messages = can_read(newer.raw, older.raw)
            verdicts.append(
                CompatibilityVerdict(record, newer.version, older.version, ok, messages)
            )
    return verdicts
