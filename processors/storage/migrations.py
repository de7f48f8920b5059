"""``custody migrate``: apply the versioned SQL in ``infra/clickhouse/`` once each, in order.

A migration is a file ``NNNN_name.sql`` of statements separated by ``;`` at line ends.
Applied versions are recorded, with a checksum, in ``schema_migrations``; running again
applies only what is new, and a recorded migration whose file has changed since is an
error (edit by adding a migration, never by rewriting one).

``{{retention_days}}`` in a migration is replaced by the configured retention, and
``{{database}}`` by the target's database. The TTLs are re-applied on every run (a metadata
change, without rewriting stored parts), so changing ``CUSTODY_RETENTION_DAYS`` and running
``custody migrate`` again takes effect.

Least privilege. A migration whose first lines say ``-- requires: access_control``
(``0004_access``: the roles ``custody_writer`` and ``custody_analyst``, their settings
profiles, the ``analyst_tenants`` table and the row policies by tenant) is applied only
where the engine can store SQL users, roles and row policies: a server whose
``system.user_directories`` has a writable, persistent storage (``local_directory`` or
``replicated``). Elsewhere it is skipped, with the reason, and not recorded, so a later run
against a server that has access control applies it. The embedded engine never has it:
chdb runs every query as its one ``default`` user and has only the read-only ``users_xml``
user directory (``CREATE USER/ROLE`` fail with ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND, a
``local_directory`` in its config is ignored); there, whoever can open the data directory
owns the data, and `custody query` is read-only by its own checks.

The users come from settings, not from a migration: on every run where the roles exist,
``CUSTODY_CLICKHOUSE_WRITER_PASSWORD`` creates (or re-keys) the ingest user
``CUSTODY_CLICKHOUSE_WRITER_USER`` (default ``custody_ingest``) with the writer role, and
``CUSTODY_CLICKHOUSE_ANALYST_PASSWORD`` the analyst user ``CUSTODY_CLICKHOUSE_ANALYST_USER``
(default ``custody_reader``) with the analyst role. Only the SHA-256 of a password leaves
this process (``IDENTIFIED WITH sha256_hash BY '<hex>'``), so neither the statement nor
ClickHouse's query log holds it; nothing here logs a statement, and an error naming one
has the hash blanked out. Use long random passwords: an unsalted SHA-256 of a short one
can be guessed.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

from pydantic import SecretStr

from processors.storage.backend import Backend, StorageRejected, open_backend
from processors.storage.target import DATABASE, ChdbTarget, ServerTarget, Target

if TYPE_CHECKING:
    from producers.settings import Settings

_log = logging.getLogger(__name__)

MINIMUM_VERSION = (24, 3)
_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
_REQUIRES = re.compile(r"^--\s*requires:\s*([\w, ]+)$", re.M)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

ACCESS_CONTROL = "access_control"
WRITER_ROLE = "custody_writer"
ANALYST_ROLE = "custody_analyst"
# User directories that keep what CREATE USER/ROLE/ROW POLICY store (memory forgets it).
_WRITABLE_DIRECTORIES = frozenset({"local_directory", "replicated"})
NO_ACCESS_CONTROL_EMBEDDED = (
    "the embedded engine (chdb) has no SQL access control: it runs every query as its one "
    "default user and has only the read-only users_xml user directory (CREATE USER/ROLE "
    "fail with ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND); whoever can open the data "
    "directory owns the data"
)

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

    @property
    def requires(self) -> frozenset[str]:
        """What the engine must support (``-- requires: a, b`` lines)."""
        return frozenset(
            word.strip()
            for line in _REQUIRES.findall(self.sql)
            for word in line.split(",")
            if word.strip()
        )

    def statements(self, retention_days: int, database: str = DATABASE) -> list[str]:
        text = self.sql.replace("{{retention_days}}", str(retention_days))
        text = text.replace("{{database}}", database)
        return [part.strip() for part in re.split(r";\s*$", text, flags=re.M) if part.strip()]


@dataclass(frozen=True)
class AccessUser:
    """A ClickHouse user ``custody migrate`` keeps: its name, role and password."""

    name: str
    role: str
    password: SecretStr = field(repr=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise MigrationError(
                f"ClickHouse user name {self.name!r} must be letters, digits and underscores"
            )
        if not self.password.get_secret_value():
            raise MigrationError(f"the password of ClickHouse user {self.name} is empty")

    @property
    def password_sha256(self) -> str:
        return hashlib.sha256(self.password.get_secret_value().encode()).hexdigest()

    def statements(self) -> list[str]:
        """Idempotent SQL that creates the user, or re-keys it, with its role as default.

        Only the SHA-256 of the password is in it.
        """
        identified = f"IDENTIFIED WITH sha256_hash BY '{self.password_sha256}'"
        return [
            f"CREATE USER IF NOT EXISTS {self.name} {identified}",
            f"ALTER USER {self.name} {identified}",
            f"GRANT {self.role} TO {self.name}",
            f"ALTER USER {self.name} DEFAULT ROLE {self.role}",
        ]


def access_users(settings: Settings) -> list[AccessUser]:
    """The users the settings ask for: one per password set."""
    users = []
    if settings.clickhouse_writer_password is not None:
        users.append(
            AccessUser(
                settings.clickhouse_writer_user, WRITER_ROLE, settings.clickhouse_writer_password
            )
        )
    if settings.clickhouse_analyst_password is not None:
        users.append(
            AccessUser(
                settings.clickhouse_analyst_user,
                ANALYST_ROLE,
                settings.clickhouse_analyst_password,
            )
        )
    names = [user.name for user in users]
    if len(set(names)) != len(names):
        raise MigrationError("the writer and the analyst must be different ClickHouse users")
    return users


def access_control_missing(backend: Backend) -> str | None:
    """Why this engine cannot store SQL users, roles and row policies; None if it can."""
    if isinstance(backend.target, ChdbTarget):
        return NO_ACCESS_CONTROL_EMBEDDED
    rows = backend.select("SELECT type FROM system.user_directories")
    found = sorted({str(row["type"]) for row in rows})
    if _WRITABLE_DIRECTORIES.isdisjoint(found):
        return (
            f"the server's user directories ({', '.join(found) or 'none'}) cannot store SQL "
            "users and roles: add a local_directory to user_directories in its config"
        )
    return None


@dataclass
class MigrationReport:
    """What one ``custody migrate`` did."""

    applied: list[str] = field(default_factory=list)
    # migration name -> why it was not applied (it stays pending)
    skipped: dict[str, str] = field(default_factory=dict)
    # ClickHouse users created or re-keyed now
    users: list[str] = field(default_factory=list)


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
    The users of the settings in the environment are kept too (:func:`run_migrations`).
    """
    return run_migrations(target, retention_days, backend).applied


def run_migrations(
    target: Target,
    retention_days: int,
    backend: Backend | None = None,
    users: Sequence[AccessUser] | None = None,
) -> MigrationReport:
    """Apply what is not applied yet and keep the access users; report what was done.

    ``users`` default to those of the settings in the environment (:func:`access_users`).
    """
    if users is None:
        from producers.settings import Settings

        users = access_users(Settings())
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
        report = MigrationReport()
        missing: dict[str, str | None] = {}
        for migration in shipped():
            recorded = done.get(migration.version)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it "
                        "was applied; add a new migration instead of editing an applied one"
                    )
                continue
            if ACCESS_CONTROL in migration.requires:
                if ACCESS_CONTROL not in missing:
                    missing[ACCESS_CONTROL] = access_control_missing(backend)
                reason = missing[ACCESS_CONTROL]
                if reason is not None:
                    name = f"{migration.version:04d}_{migration.name}"
                    report.skipped[name] = reason
                    _log.warning("migration %s not applied: %s", name, reason)
                    continue
            _apply(backend, migration, retention_days, target.database)
            report.applied.append(f"{migration.version:04d}_{migration.name}")
        for table, expression in RETENTION.items():
            backend.execute(
                f"ALTER TABLE {table} MODIFY TTL {expression} + INTERVAL {int(retention_days)} "
                "DAY SETTINGS materialize_ttl_after_modify = 0"
            )
        if users:
            _keep_users(backend, users, report)
        return report
    finally:
        if own:
            backend.close()


def _apply(backend: Backend, migration: Migration, retention_days: int, database: str) -> None:
    """Run ``migration``'s statements, then record it as applied."""
    for statement in migration.statements(retention_days, database):
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


def _keep_users(backend: Backend, users: Sequence[AccessUser], report: MigrationReport) -> None:
    """Create or re-key the access users, where the access migration is applied."""
    access = [m for m in shipped() if ACCESS_CONTROL in m.requires]
    pending = [f"{m.version:04d}_{m.name}" for m in access]
    reason = next((report.skipped[name] for name in pending if name in report.skipped), None)
    if reason is not None:
        _log.warning(
            "ClickHouse users %s not created: %s", ", ".join(u.name for u in users), reason
        )
        return
    for user in users:
        for statement in user.statements():
            try:
                backend.execute(statement)
            except StorageRejected as exc:
                # Neither the password nor its hash goes into an error message or a log.
                message = str(exc).replace(user.password_sha256, "[sha256 hidden]")
                message = message.replace(user.password.get_secret_value(), "[hidden]")
                raise MigrationError(
                    f"cannot keep ClickHouse user {user.name}: {message}"
                ) from None
        report.users.append(user.name)
