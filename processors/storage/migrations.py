"""``custody migrate``: apply the versioned SQL in ``infra/clickhouse/`` once each, in order.

A migration is a file ``NNNN_name.sql`` of statements separated by ``;`` at line ends.
Applied versions are recorded, with a checksum, in ``schema_migrations``; running again
applies only what is new, and a recorded migration whose file has changed since is an
error (edit by adding a migration, never by rewriting one).

``{{retention_days}}`` in a migration is replaced by the configured retention. The TTLs are
re-applied on every run (a metadata change, without rewriting stored parts), so changing
``CUSTODY_RETENTION_DAYS`` and running ``custody migrate`` again takes effect.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from processors.storage.backend import Backend, StorageRejected, open_backend
from processors.storage.target import ServerTarget, Target

MINIMUM_VERSION = (24, 3)
_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")

# Each table's TTL expression, re-applied with the configured retention on every run.
RETENTION = {
    "events": "toDateTime(event_time)",
    "task_roots": "toDateTime(first_seen)",
    "tasks": "toDateTime(updated_at)",
    "delegations": "toDateTime(updated_at)",
    "credentials": "toDateTime(updated_at)",
    "alerts": "toDateTime(event_time)",
}


class MigrationError(RuntimeError):
    """The migrations cannot be applied to this ClickHouse."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self, retention_days: int) -> list[str]:
        text = self.sql.replace("{{retention_days}}", str(retention_days))
        return [part.strip() for part in re.split(r";\s*$", text, flags=re.M) if part.strip()]


def shipped() -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found = []
    for entry in resources.files("infra.clickhouse").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number: {versions}")
    return found


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def check_version(found: str) -> None:
    """Refuse a server older than the schema needs, naming the version found."""
    if parse_version(found)[:2] < MINIMUM_VERSION:
        needed = ".".join(map(str, MINIMUM_VERSION))
        raise MigrationError(
            f"ClickHouse {found} found; Custody's schema needs ClickHouse {needed} or newer "
            "(DateTime64, LowCardinality, Map, Nullable tuples, TTL). Upgrade the server."
        )


def _ensure_database(target: Target) -> None:
    # A server refuses a connection to a database that does not exist yet, so it is
    # created from the default database first (chdb creates it when it opens).
    if isinstance(target, ServerTarget):
        bootstrap = open_backend(target, database="default")
        try:
            check_version(bootstrap.version())
            bootstrap.execute(f"CREATE DATABASE IF NOT EXISTS {target.database}")
        finally:
            bootstrap.close()


def applied(backend: Backend) -> dict[int, str]:
    """Recorded migrations: version -> checksum."""
    rows = backend.select("SELECT version, checksum FROM schema_migrations ORDER BY version")
    return {int(row["version"]): str(row["checksum"]) for row in rows}


def migrate(target: Target, retention_days: int, backend: Backend | None = None) -> list[str]:
    """Apply what is not applied yet; returns the names of the migrations applied now.

    ``backend`` reuses an open connection (an embedded engine can be opened only once).
    """
    if backend is None:
        _ensure_database(target)
    own = backend is None
    backend = backend or open_backend(target)
    try:
        check_version(backend.version())
        backend.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, "
            "checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
            "ENGINE = MergeTree ORDER BY version"
        )
        done = applied(backend)
        now_applied = []
        for migration in shipped():
            recorded = done.get(migration.version)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it "
                        "was applied; add a new migration instead of editing an applied one"
                    )
                continue
            for statement in migration.statements(retention_days):
                try:
                    backend.execute(statement)
                except StorageRejected as exc:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                    ) from None
            backend.execute(
                "INSERT INTO schema_migrations (version, name, checksum) "
                "VALUES ({version:UInt32}, {name:String}, {checksum:String})",
                {
                    "version": migration.version,
                    "name": migration.name,
                    "checksum": migration.checksum,
                },
            )
            now_applied.append(f"{migration.version:04d}_{migration.name}")
        for table, expression in RETENTION.items():
            backend.execute(
                f"ALTER TABLE {table} MODIFY TTL {expression} + INTERVAL {int(retention_days)} "
                "DAY SETTINGS materialize_ttl_after_modify = 0"
            )
        return now_applied
    finally:
        if own:
            backend.close()
