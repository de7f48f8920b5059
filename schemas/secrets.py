"""Detection of values that look like secrets.

No secret may enter the pipeline: a credential is named by its ``token_id`` (a jti or an
opaque id), never by its value. Producers reject an event holding a secret-looking value;
processors redact and flag one. Findings name the field and the kind of secret, never the
value, so reporting a finding cannot leak it.

Detected: JSON Web Tokens (JWS/JWE compact form), PEM private keys, AWS access key ids,
Google API keys, GitHub and Slack tokens, Azure storage account keys. Values that merely
mention a secret (``token_id``, ``"api-key rotation"``) are not flagged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

_PATTERNS: dict[str, str] = {
    "jwt": r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
    # The whole block up to its END line (or the end of a truncated value) is the secret.
    "private_key": r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)",
    "aws_access_key": r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z2-7]{16}\b",
    "google_api_key": r"\bAIza[0-9A-Za-z_-]{35}\b",
    "github_token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{60,})\b",
    "slack_token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "azure_storage_key": r"AccountKey=[A-Za-z0-9+/]{80,}={0,2}",
}
_ANY_SECRET = re.compile("|".join(f"(?P<{kind}>{regex})" for kind, regex in _PATTERNS.items()))
# One search over all values joined by a separator no pattern can cross.
_SEPARATOR = "\x00"

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
    # Fast path: one regex pass over everything; the per-field pass only runs on a hit.
    if not _ANY_SECRET.search(_SEPARATOR.join(text for _, text in pairs)):
        return []
    findings = []
    for path, text in pairs:
        kind = kind_of_secret(text)
        if kind is not None:
            findings.append(SecretFinding(path, kind))
    return findings


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
