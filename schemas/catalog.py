"""The Avro schemas shipped in ``schemas/avro/``: every released version of each record.

Layout: ``schemas/avro/v<N>/<record>.avsc``. A version directory is never edited once
released; a change is a new directory, checked for backward compatibility by the tests.
The newest version of a record is what producers write and what decoders resolve to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

EVENT = "custody_event"
ALERT = "custody_alert"
STATE = "custody_state"
RECORDS = (EVENT, ALERT, STATE)


@dataclass(frozen=True)
class SchemaVersion:
    """One released version of one record schema, parsed once."""

    record: str
    version: int
    raw: dict[str, Any]
    parsed: Any
    canonical_form: str
    # CRC-64-AVRO of the parsing canonical form, little-endian, as in single-object headers.
    fingerprint: bytes


def _version_dirs() -> list[tuple[int, Any]]:
    root = resources.files("schemas") / "avro"
    dirs = [
        (int(entry.name[1:]), entry)
        for entry in root.iterdir()
        if entry.is_dir() and entry.name.startswith("v") and entry.name[1:].isdigit()
    ]
    return sorted(dirs, key=lambda item: item[0])


@cache
def versions(record: str) -> tuple[SchemaVersion, ...]:
    """All released versions of ``record``, oldest first."""
    found = []
    for number, directory in _version_dirs():
        path = directory / f"{record}.avsc"
        if not path.is_file():
            continue
        raw = json.loads(path.read_text(encoding="utf-8"))
        parsed = fastavro.parse_schema(raw)
        canonical = to_parsing_canonical_form(parsed)
        fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        found.append(SchemaVersion(record, number, raw, parsed, canonical, fp))
    if not found:
        raise LookupError(f"no schema named {record!r} under schemas/avro/")
    return tuple(found)


def latest(record: str) -> SchemaVersion:
    """The version producers write."""
    return versions(record)[-1]


@cache
def by_fingerprint() -> dict[bytes, SchemaVersion]:
    """Every shipped schema version keyed by its single-object fingerprint."""
    return {v.fingerprint: v for record in RECORDS for v in versions(record)}


@cache
def by_canonical_form() -> dict[str, SchemaVersion]:
    """Every shipped schema version keyed by its parsing canonical form."""
    return {v.canonical_form: v for record in RECORDS for v in versions(record)}
