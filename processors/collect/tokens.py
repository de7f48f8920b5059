"""Collect tokens: the bearer tokens that authenticate a source to ``custody collect``.

``custody collect-token --tenant T --source NAME`` makes a token, prints it once and keeps
only its SHA-256: the file holds nothing that could be replayed. A token binds the tenant
and the source name of every event published with it.

A plain SHA-256 rather than a slow password hash: the tokens are 256 random bits, which no
dictionary or brute force can reach, and the hash is computed on every upload.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from processors.collect.records import Origin
from producers.settings import Settings

TOKEN_PREFIX = "cct_"  # noqa: S105 (the public prefix, not a secret)
"""Every collect token starts with it, so a leaked one is recognisable (and scannable)."""
_TOKEN = re.compile(rf"{TOKEN_PREFIX}[A-Za-z0-9_-]{{43}}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class TokenError(ValueError):
    """A tenant or source name that cannot be bound to a token, or an unreadable store."""


def tokens_path(settings: Settings) -> Path:
    """The file holding the token hashes."""
    return settings.collect_tokens_file or settings.home / "collect-tokens.json"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(text: str) -> bool:
    """Whether ``text`` has the shape of a collect token."""
    return _TOKEN.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Binding:
    """What a token's hash is bound to."""

    sha256: str
    tenant: str
    source: str
    created_at: str
    observe_only: bool = False


def issue_token(path: Path, tenant: str, source: str, *, observe_only: bool = False) -> str:
    """A new token for ``tenant``/``source`` (``observe_only``: the source's accesses are
    recorded, never judged unauthorized): its hash is appended to ``path`` (created 0600),
    the token itself is returned and kept nowhere."""
    for what, name in (("tenant", tenant), ("source", source)):
        if not _NAME.fullmatch(name):
            raise TokenError(f"{what} {name!r}: letters, digits, '.', '_' and '-' only")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    bindings = _read(path)
    bindings.append(
        Binding(
            _digest(token),
            tenant,
            source,
            datetime.now(UTC).isoformat(timespec="seconds"),
            observe_only,
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump([asdict(b) for b in bindings], out, indent=1)
    partial.replace(path)
    return token


def _read(path: Path) -> list[Binding]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise TokenError(f"{path}: {exc}") from None
    try:
        return [Binding(**item) for item in raw]
    except TypeError as exc:
        raise TokenError(f"{path}: not a token file ({exc})") from None


class TokenStore:
    """The token hashes of a file, read again whenever the file changes, so a token made
    while ``collect`` runs is accepted at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._origins: dict[str, Origin] = {}

    def origin_of(self, token: str) -> Origin | None:
        """The tenant and source ``token`` is bound to, or None for an unknown token."""
        if not looks_like_token(token):
            return None
        self._reload()
        return self._origins.get(_digest(token))

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp == self._stamp:
                return
            self._origins = {
                b.sha256: Origin(b.tenant, b.source, b.observe_only) for b in _read(self.path)
            }
            self._stamp = stamp
