"""Detection of values that look like secrets.

No secret may enter the pipeline: a credential is named by its ``token_id`` (a jti or an
opaque id), never by its value. Producers reject an event holding a secret-looking value;
processors redact and flag one. Findings name the field and the kind of secret, never the
value, so reporting a finding cannot leak it.

Detected: JSON Web Tokens (JWS compact form), PEM private keys, AWS access key ids,
Google API keys, GitHub and Slack tokens, Azure storage account keys. Values that merely
mention a secret (``token_id``, ``"api-key rotation"``) are not flagged.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import hyperscan

# kind -> (marker, rest): every secret starts with its literal-ish marker, so one cheap
# search for the markers rules out nearly every clean value before the full patterns run.
_PATTERNS: dict[str, tuple[str, str]] = {
    "jwt": (r"eyJ", r"[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    # The whole block up to its END line (or the end of a truncated value) is the secret.
    "private_key": (
        r"-----BEGIN ",
        r"(?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)",
    ),
    "aws_access_key": (
        r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)",
        r"[A-Z2-7]{16}\b",
    ),
    "google_api_key": (r"AIza", r"[0-9A-Za-z_-]{35}\b"),
    "github_token": (r"(?:gh[pousr]_|github_pat_)", r"[A-Za-z0-9_]{36,}"),
    "slack_token": (r"xox[abprs]-", r"[A-Za-z0-9-]{10,}"),
    "azure_storage_key": (r"AccountKey=", r"[A-Za-z0-9+/]{80,}={0,2}"),
}
_ANY_SECRET = re.compile(
    "|".join(f"(?P<{kind}>{marker}{rest})" for kind, (marker, rest) in _PATTERNS.items())
)
_ANY_MARKER = re.compile("|".join(marker for marker, _ in _PATTERNS.values()))
# Values are joined by a separator no pattern can cross.
_SEPARATOR = "\x00"


class _MarkerScanner:
    """The markers compiled for Hyperscan, which scans bytes at about 6 GB/s where
    Python's ``re`` manages 0.1-0.2 GB/s on this alternation: the pre-check runs on every
    published, correlated and ingested record.

    A scratch space must not be shared by concurrent scans, so each thread gets its own.
    """

    def __init__(self) -> None:
        markers = [marker.encode() for marker, _ in _PATTERNS.values()]
        self._database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._database.compile(
            expressions=markers,
            ids=list(range(len(markers))),
            elements=len(markers),
        )
        self._local = threading.local()

    def _scratch(self) -> hyperscan.Scratch:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self._database)
        return scratch

    def ends(self, data: bytes, first_only: bool = False) -> list[int]:
        """Where marker matches end in ``data`` (only the first one with ``first_only``)."""
        found: list[int] = []

        def on_match(_id: int, _start: int, end: int, _flags: int, _context: object) -> bool:
            found.append(end)
            return first_only  # True stops the scan

        with contextlib.suppress(hyperscan.ScanTerminated):
            self._database.scan(data, match_event_handler=on_match, scratch=self._scratch())
        return found


_SCANNER = _MarkerScanner()

REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class SecretFinding:
    """A secret-looking value: where it is and what it looks like (never the value)."""

    field: str
    kind: str

    def __str__(self) -> str:
        return f"{self.field}: value looks like a secret ({self.kind})"


class SecretValueError(ValueError):
    """Raised by producers for an event that holds a secret-looking value."""

    def __init__(self, findings: list[SecretFinding]) -> None:
        self.findings = findings
        super().__init__(
            "; ".join(str(f) for f in findings)
            + " (send a token_id or an HMAC of the value, never the value)"
        )


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            # A path must not repeat a secret used as a key: it is printed and logged.
            name = "[secret key]" if kind_of_secret(str(key)) else str(key)
            child = f"{path}.{name}" if path else name
            yield f"{child} (key)", str(key)
            yield from _strings(item, child)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def kind_of_secret(text: str) -> str | None:
    """The kind of secret ``text`` contains, or None."""
    match = _ANY_SECRET.search(text)
    return match.lastgroup if match else None


def find_secrets(value: Any) -> list[SecretFinding]:
    """Every secret-looking string in a nested structure of dicts, lists and strings."""
    pairs = list(_strings(value, ""))
    # Fast path: one marker search over everything; the per-field pass only runs on a hit.
    if not _ANY_MARKER.search(_SEPARATOR.join(text for _, text in pairs)):
        return []
    findings = []
    for path, text in pairs:
        kind = kind_of_secret(text)
        if kind is not None:
            findings.append(SecretFinding(path, kind))
    return findings


def may_hold_secret(encoded: bytes) -> bool:
    """Cheap pre-check of an encoded record (Avro or UTF-8 JSON store each string as
    contiguous bytes): False means no field can hold a secret; True means look closer
    with :func:`find_secrets`."""
    return bool(_SCANNER.ends(encoded, first_only=True))


# One search per marker: each starts with a literal (or a small set of first bytes), which
# re finds with a fast scan, where one alternation of them all is tried at every byte.
_MARKER_SEARCHES = tuple(re.compile(marker.encode()).search for marker, _ in _PATTERNS.values())


def may_hold_secret_inline(encoded: bytes) -> bool:
    """:func:`may_hold_secret` with the same verdict, found without letting go of the GIL.

    Hyperscan releases the GIL for every scan. For one small record that costs more than
    the scan: in a process whose other threads wait for the GIL (a producer's delivery
    reports), each release hands them the interpreter, and taking it back costs about
    18 µs a record, where these searches take 2-3 µs. For a single record under a few KB.
    """
    # A plain loop: any() over a generator costs 15% more per record on this hot path.
    for search in _MARKER_SEARCHES:  # noqa: SIM110
        if search(encoded):
            return True
    return False


def records_that_may_hold_secrets(records: Sequence[bytes]) -> set[int]:
    """:func:`may_hold_secret` over a batch in one scan: the indexes of the records to
    look at closer. The records are joined by a byte no marker contains, so a match never
    spans two of them."""
    starts = []
    position = 0
    for record in records:
        starts.append(position)
        position += len(record) + 1
    ends = _SCANNER.ends(b"\x00".join(records))
    return {bisect.bisect_right(starts, end - 1) - 1 for end in ends}


def reject_secrets(value: Any) -> None:
    """Raise :class:`SecretValueError` if ``value`` holds a secret-looking string."""
    findings = find_secrets(value)
    if findings:
        raise SecretValueError(findings)


def redact_secrets(value: Any) -> Any:
    """A copy of ``value`` with every secret-looking match replaced by ``[REDACTED]``."""
    if isinstance(value, str):
        return _ANY_SECRET.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {redact_secrets(k): redact_secrets(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_secrets(item) for item in value]
    return value


def mask_secrets(raw: bytes | None) -> tuple[bytes | None, list[str]]:
    """``raw`` bytes of any format with every secret-looking match overwritten by ``*`` of
    the same length, and the kinds found.

    For dead letters, which keep a record's bytes to lose nothing: the same length keeps an
    Avro record's framing (strings are length-prefixed) and any other format's layout, so
    the record still shows where the secret was without holding it.
    """
    if raw is None or not may_hold_secret(raw):
        return raw, []
    # latin-1 maps each byte to one character and back, so spans stay byte offsets.
    text = raw.decode("latin-1")
    kinds: list[str] = []

    def mask(match: re.Match[str]) -> str:
        kinds.append(str(match.lastgroup))
        return "*" * len(match.group())

    masked = _ANY_SECRET.sub(mask, text)
    return masked.encode("latin-1"), sorted(set(kinds))
