"""What the embedded engine (chdb) can do about users, run in a process of its own.

chdb starts its engine once per process, with the startup arguments of the first session,
so each scenario here runs in a fresh interpreter (``python -m tests.faults._chdb_users
SCENARIO DIR``) and prints one JSON object: what was tried and what the engine answered.

- ``prepare``: migrate ``DIR/chdb`` (0004 is skipped there), add rows of tenants ``a`` and
  ``b`` and the ``analyst_tenants`` table of 0004 mapping chdb's one user to ``a``.
- ``sql_access``: ``CREATE ROLE/USER/ROW POLICY`` as chdb runs them by default, and again
  with a config that grants ``access_management`` and lists a ``local_directory``.
- ``analyst``: chdb's ``default`` user configured (users.xml) with 0004's row filters and
  the analyst profile's constraints: what ``custody query`` (BackendReader) returns.
- ``readonly_profile``: the same user with ``readonly = 2``: writes refused, and what that
  does to ``custody query``, which sets ``readonly = 1`` itself.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[2]
ACCESS_SQL = ROOT / "infra" / "clickhouse" / "0004_access.sql"
TENANT_TABLES = ("events", "task_roots", "tasks", "delegations", "credentials", "alerts")
EVENT_COLUMNS = (
    "event_id, event_type, event_time, tenant, producer, root_task_id, task_id, depth, "
    "actor_workload_id, actor_kind, actor_instance_id, producer_instance, seq"
)


def access_statements(database: str = "custody") -> list[str]:
    """The statements of migration 0004 as ``custody migrate`` would run them."""
    from processors.storage.migrations import shipped

    (migration,) = [m for m in shipped() if m.name == "access"]
    return migration.statements(400, database)


def tenant_filter(database: str = "custody") -> str:
    """The USING expression of 0004's analyst policy (the same on every tenant table)."""
    text = ACCESS_SQL.read_text().replace("{{database}}", database)
    found: set[str] = set(
        re.findall(r"custody_analyst_tenant ON \S+ FOR SELECT\s+USING (.+?)\s+TO ", text)
    )
    assert len(found) == 1, found
    return found.pop()


def _users_xml(profile: str, filters: dict[str, str]) -> str:
    policies = "".join(
        f"<{table}><filter>{escape(expression)}</filter></{table}>"
        for table, expression in filters.items()
    )
    return f"""<clickhouse>
  <profiles>
    <default/>
    <analyst>
      <max_execution_time>60</max_execution_time>
      <constraints>
        <max_execution_time><max>300</max></max_execution_time>
        <max_memory_usage><max>4294967296</max></max_memory_usage>
      </constraints>
    </analyst>
    <readonly_analyst><readonly>2</readonly></readonly_analyst>
    <admin/>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>::/0</ip></networks>
      <profile>{profile}</profile>
      <quota>default</quota>
      {"<access_management>1</access_management>" if profile == "admin" else ""}
      <databases><custody>{policies}</custody></databases>
    </default>
  </users>
  <quotas><default/></quotas>
</clickhouse>
"""


def _configure(directory: Path, profile: str, filters: dict[str, str]) -> str:
    """Write a config for chdb's startup and return the ``?config-file=`` suffix."""
    users = directory / f"users-{profile}.xml"
    users.write_text(_users_xml(profile, filters))
    access = directory / "access"
    config = directory / f"config-{profile}.xml"
    config.write_text(
        "<clickhouse><user_directories>"
        f"<users_xml><path>{escape(str(users))}</path></users_xml>"
        f"<local_directory><path>{escape(str(access))}/</path></local_directory>"
        "</user_directories></clickhouse>"
    )
    return f"?config-file={config}"


def _with_config(suffix: str) -> None:
    """Make every chdb session of this process start with ``suffix`` (a config file)."""
    from chdb import session

    class Configured(session.Session):
        def __init__(self, path: str | None = None) -> None:
            super().__init__(f"{path}{suffix}")

    # Replacing chdb's class is the point (this process only); mypy refuses any assignment
    # to a class.
    session.Session = Configured  # type: ignore[misc]


def _try(run: Any) -> dict[str, Any]:
    try:
        return {"ok": True, "result": run()}
    except Exception as exc:
        message = str(exc)
        code = re.search(r"Code: (\d+)", message)
        return {
            "ok": False,
            "error": type(exc).__name__,
            "code": int(code[1]) if code else None,
            "message": message[:300],
        }


def prepare(directory: Path) -> dict[str, Any]:
    from pydantic import SecretStr

    from processors.storage.backend import ChdbBackend
    from processors.storage.migrations import AccessUser, run_migrations
    from processors.storage.target import ChdbTarget

    target = ChdbTarget(directory / "chdb")
    backend = ChdbBackend(target)
    try:
        report = run_migrations(
            target,
            400,
            backend,
            users=[AccessUser("custody_ingest", "custody_writer", SecretStr("not-used-here"))],
        )
        rows = []
        for n, tenant in enumerate(("a", "a", "b")):
            rows.append(
                f"('00000000-0000-4000-8000-00000000000{n}', 'TASK_DECLARED', "
                f"'2026-01-01 00:00:0{n}', '{tenant}', 'p', 'root-{tenant}', 'task-{n}', 0, "
                f"'spiffe://w', 'AGENT', 'i', 'pi', {n})"
            )
        backend.execute(f"INSERT INTO events ({EVENT_COLUMNS}) VALUES {', '.join(rows)}")
        backend.execute(
            "INSERT INTO alerts (alert_id, alert_type, severity, tenant, root_task_id, "
            "event_time, detected_at, evidence_event_ids, detail) VALUES "
            "('x1', 'ORPHANED_TOKEN', 'HIGH', 'a', 'root-a', now64(6), now64(6), [], ''), "
            "('x2', 'ORPHANED_TOKEN', 'HIGH', 'b', 'root-b', now64(6), now64(6), [], '')"
        )
        # 0004's own table, created by its own statement (chdb skips the migration).
        (create,) = [s for s in access_statements() if "CREATE TABLE" in s]
        backend.execute(create)
        backend.execute("INSERT INTO analyst_tenants VALUES ('default', 'a')")
        recorded = backend.select("SELECT version FROM schema_migrations ORDER BY version")
        return {
            "applied": report.applied,
            "skipped": report.skipped,
            "users": report.users,
            "recorded": [int(row["version"]) for row in recorded],
        }
    finally:
        backend.close()


def sql_access(directory: Path, configured: bool) -> dict[str, Any]:
    from chdb import session

    suffix = _configure(directory, "admin", {}) if configured else ""
    chdb = session.Session(f"{directory / 'chdb'}{suffix}")
    try:
        digest = "0" * 64
        tried = {
            "user_directories": "SELECT groupArray(type) FROM system.user_directories",
            "create_role": "CREATE ROLE IF NOT EXISTS custody_probe_role",
            "create_user": "CREATE USER IF NOT EXISTS custody_probe_user "
            f"IDENTIFIED WITH sha256_hash BY '{digest}'",
            "create_row_policy": "CREATE ROW POLICY IF NOT EXISTS custody_probe "
            "ON custody.events FOR SELECT USING 1 TO default",
        }
        return {
            name: _try(lambda q=query: chdb.query(q, "TSV").bytes().decode().strip())
            for name, query in tried.items()
        }
    finally:
        chdb.close()


def analyst(directory: Path) -> dict[str, Any]:
    expression = tenant_filter()
    filters = dict.fromkeys(TENANT_TABLES, expression)
    filters["analyst_tenants"] = "user = currentUser()"
    _with_config(_configure(directory, "analyst", filters))
    from processors.serving.reader import BackendReader
    from processors.storage.backend import ChdbBackend
    from processors.storage.target import ChdbTarget

    backend = ChdbBackend(ChdbTarget(directory / "chdb"))
    try:
        reader = BackendReader(backend)
        return {
            "filter": expression,
            "user": _try(lambda: reader.select("SELECT currentUser() AS u")[0]["u"]),
            "event_tenants": _try(
                lambda: sorted({r["tenant"] for r in reader.select("SELECT tenant FROM events")})
            ),
            "alert_tenants": _try(
                lambda: sorted({r["tenant"] for r in reader.select("SELECT tenant FROM alerts")})
            ),
            "count_b_by_key": _try(
                lambda: reader.select(
                    "SELECT count() AS n FROM events WHERE root_task_id = 'root-b'"
                )[0]["n"]
            ),
            # A query's own SETTINGS cannot lift custody query's limit (readonly = 1 wins).
            "time_limit_inside": _try(
                lambda: reader.select(
                    "SELECT getSetting('max_execution_time') AS t "
                    "SETTINGS max_execution_time = 100000"
                )[0]["t"]
            ),
        }
    finally:
        backend.close()


def readonly_profile(directory: Path) -> dict[str, Any]:
    from chdb import session

    suffix = _configure(directory, "readonly_analyst", {})
    chdb = session.Session(f"{directory / 'chdb'}{suffix}")

    def run(sql: str) -> str:
        return str(chdb.query(sql, "TSV").bytes().decode().strip())

    from processors.serving.readonly import READ_SETTINGS, readonly_sql

    as_custody_query = (
        readonly_sql("SELECT count() FROM custody.events")
        + " SETTINGS "
        + (", ".join(f"{key} = {value}" for key, value in READ_SETTINGS.items()))
    )
    try:
        return {
            "readonly": _try(lambda: run("SELECT getSetting('readonly')")),
            "insert": _try(
                lambda: run("INSERT INTO custody.analyst_tenants VALUES ('default', 'b')")
            ),
            "drop": _try(lambda: run("DROP TABLE custody.analyst_tenants")),
            "select": _try(lambda: run("SELECT count() FROM custody.events")),
            "custody_query_settings": _try(lambda: run(as_custody_query)),
        }
    finally:
        chdb.close()


def main() -> None:
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    if scenario == "prepare":
        result = prepare(directory)
    elif scenario == "sql_access":
        result = sql_access(directory, configured=False)
    elif scenario == "sql_access_configured":
        result = sql_access(directory, configured=True)
    elif scenario == "analyst":
        result = analyst(directory)
    elif scenario == "readonly_profile":
        result = readonly_profile(directory)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
