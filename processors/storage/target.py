"""Where ClickHouse is: ``CUSTODY_CLICKHOUSE_URL`` parsed into an embedded or a server target.

- ``chdb://PATH`` (or ``chdb:///abs/path``): the embedded engine, data under PATH (relative
  paths are taken from the working directory). The default is ``chdb://.custody/chdb``.
- ``clickhouse://user:password@host:port/database``: a ClickHouse server over the native
  protocol (port 9000 when omitted, database ``custody`` when omitted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

DATABASE = "custody"


class TargetError(ValueError):
    """``CUSTODY_CLICKHOUSE_URL`` is not a URL Custody understands."""


@dataclass(frozen=True)
class ChdbTarget:
    """The embedded engine, owning the data directory ``path``."""

    path: Path
    database: str = DATABASE

    def describe(self) -> str:
        return f"chdb://{self.path}"


@dataclass(frozen=True)
class ServerTarget:
    """A ClickHouse server reached with clickhouse-driver."""

    host: str
    port: int
    database: str
    user: str = "default"
    password: str = field(default="", repr=False)

    def describe(self) -> str:
        # Never the password: this lands in logs and error messages.
        return f"clickhouse://{self.user}@{self.host}:{self.port}/{self.database}"


Target = ChdbTarget | ServerTarget


def parse_target(url: str) -> Target:
    """Parse a ClickHouse URL; the error message never repeats a password."""
    if url.startswith("chdb://"):
        path = url[len("chdb://") :]
        if not path:
            raise TargetError("chdb:// needs a data directory, e.g. chdb://.custody/chdb")
        return ChdbTarget(Path(path))
    parts = urlsplit(url)
    if parts.scheme != "clickhouse":
        raise TargetError(
            f"unsupported ClickHouse URL scheme {parts.scheme!r}: "
            "use chdb://PATH or clickhouse://user:password@host:port/database"
        )
    if not parts.hostname:
        raise TargetError("clickhouse:// URL has no host")
    try:
        port = parts.port or 9000
    except ValueError:
        raise TargetError("clickhouse:// URL has an invalid port") from None
    database = parts.path.strip("/") or DATABASE
    return ServerTarget(
        host=parts.hostname,
        port=port,
        database=database,
        user=unquote(parts.username) if parts.username else "default",
        password=unquote(parts.password) if parts.password else "",
    )
