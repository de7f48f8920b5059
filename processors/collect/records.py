"""What a source adapter returns for one record, and the helpers every adapter shares.

A source adapter (OPA, Vault) is a pure mapping from one record of its system to contract
events, or to a typed :class:`Rejection` (the record is dead-lettered with its reason) or
:class:`Skipped` (the record is outside what Custody collects, counted by reason). Its
transport (HTTP upload, socket, file, import) lives apart, in :mod:`processors.collect`.

Event ids are derived from the record (:func:`event_id_for`): the same record mapped twice,
a retried upload or a replayed log, gives the same ids, which ClickHouse and the correlator
deduplicate on.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from schemas import models
from schemas.models import Envelope, describe_validation_error, validate_event
from schemas.secrets import find_secrets, may_hold_secret_inline, redact_secrets

# Fixed forever: changing it would change the id of every collected event.
EVENT_ID_NAMESPACE = uuid.UUID("5b0d2c1e-3f7a-5c55-9a4e-6f1d2b7c9e31")

REDACTED_ATTRIBUTE = "custody.redacted"
"""Attribute naming the fields a secret was removed from, and its kinds."""
SOURCE_ATTRIBUTE = "custody.source"
"""Attribute naming the source (the collect token's) an event came from."""
SYNTHETIC_ATTRIBUTE = "custody.synthetic_task"
"""Attribute set to ``"true"`` on an event whose task no custody context named."""
OBSERVE_ONLY_ATTRIBUTE = models.OBSERVE_ONLY_ATTRIBUTE
"""Attribute set to ``"true"`` on an access from an observe-only source: the correlator
records it and never judges it UNAUTHORIZED_ACCESS."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Who sent a record: the tenant and source its collect token binds, and whether the
    source is observe-only (its accesses are recorded, not judged as unauthorized: a
    runtime that reports no credentials or decisions)."""

    tenant: str
    source: str
    observe_only: bool = False


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that cannot become evidence: dead-lettered with ``reason`` (a short code,
    e.g. ``opa_result_missing``) and ``detail`` (one sentence naming fields, never values)."""

    reason: str
    detail: str
    raw: bytes | None = field(default=None, repr=False, compare=False)
    """The record as it came, for the dead letter, where the transport does not hold it
    (a span decoded out of a protobuf export)."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A record outside what Custody collects (e.g. a Vault login by a human auth method):
    counted by ``reason``, never published, never dead-lettered."""

    reason: str


@dataclass(frozen=True, slots=True)
class Mapped:
    """The contract events one record became (unstamped; the publisher stamps them)."""

    events: tuple[Envelope, ...]
    notes: tuple[str, ...] = field(default=())


Outcome = Mapped | Rejection | Skipped
"""What an adapter makes of one record."""


def counted(counts: Counter[str], outcomes: list[Outcome]) -> list[Outcome]:
    """``outcomes``, after adding them to an adapter's ``counts``: records mapped and the
    events they became, skipped and rejected records by reason."""
    for outcome in outcomes:
        if isinstance(outcome, Mapped):
            counts["mapped"] += 1
            counts["events"] += len(outcome.events)
        elif isinstance(outcome, Skipped):
            counts[f"skipped.{outcome.reason}"] += 1
        else:
            counts[f"rejected.{outcome.reason}"] += 1
    return outcomes


def event_id_for(origin: Origin, *parts: str) -> str:
    """A UUID derived from the origin and the parts naming the record and the event: the
    UUID version 5 of the name, as ``uuid.uuid5`` makes it, computed here without the
    UUID objects, which cost twice the hash on this path (one id per collected event)."""
    name = "\x1f".join((origin.tenant, origin.source, *parts))
    digest = bytearray(
        hashlib.sha1(EVENT_ID_NAMESPACE.bytes + name.encode(), usedforsecurity=False).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    hex_id = digest.hex()
    return f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"


def synthetic_task_id(origin: Origin, kind: str, key: str) -> str:
    """The task of a record no custody context names: deterministic, so every record about
    the same subject (a Vault token, an OPA subject) lands in one tree."""
    return f"synthetic:{origin.source}:{kind}:{key}"


def screened(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (an event in its JSON form) with every secret-looking value redacted, and
    :data:`REDACTED_ATTRIBUTE` naming where and what was removed (``path:kind``, comma
    separated). Unchanged when nothing looks secret."""
    # The marker pre-check over the bare strings first: find_secrets builds a path for
    # every string, which costs more than the rest of a mapping when nothing is found.
    if not may_hold_secret_inline("\x00".join(_strings(data)).encode()):
        return data
    findings = find_secrets(data)
    if not findings:
        return data
    clean: dict[str, Any] = redact_secrets(data)
    attributes = dict(clean.get("attributes") or {})
    attributes[REDACTED_ATTRIBUTE] = ",".join(f"{f.field}:{f.kind}" for f in findings)
    clean["attributes"] = attributes
    return clean


def _strings(value: Any) -> list[str]:
    """Every string of a nested structure, keys included (one list, filled in place: a
    recursive generator costs twice as much per event)."""
    found: list[str] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, Mapping):
            for key, inner in item.items():
                found.append(str(key))
                pending.append(inner)
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return found


def build_event(data: dict[str, Any], reason: str = "contract_violation") -> Envelope | Rejection:
    """Screen ``data`` for secrets and validate it into its contract model, or a
    :class:`Rejection` (``reason``) naming every invalid field without its value."""
    try:
        return validate_event(screened(data))
    except ValidationError as exc:
        return Rejection(reason, describe_validation_error(exc))


def text_of(value: Any, limit: int = 512) -> str | None:
    """A scalar as contract text (``None`` for missing, empty or nested values), cut to
    ``limit`` characters so an oversized field does not reject the whole record."""
    if value is None or isinstance(value, Mapping | list | tuple):
        return None
    text = (
        value
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )
    return text[:limit] or None
