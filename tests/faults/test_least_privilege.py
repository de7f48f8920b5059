"""Least privilege in ClickHouse (issue 6, item 5), tried on every engine there is here.

- The SQL of migration 0004 and of the users ``custody migrate`` keeps: no secret in it,
  only a password's SHA-256; the released migrations unchanged; applied where a server
  can store SQL access control, skipped with the reason elsewhere (a recording backend
  stands in for a 24.3+ server, which this machine does not have).
- chdb (engine 26.9): whether it can create users, roles and row policies at all (no: one
  user, a read-only users.xml directory), and, configuring that one user by users.xml,
  0004's tenant filter and what ``custody query`` then returns.
- Debian's ClickHouse 18.16: users.xml users, a writer that ingest runs as (no DDL) and a
  read-only analyst; per-table row filters, if the version has them.
- ``custody query`` refuses writes even for a user who may write.

Each check records what it tried with ``record_fault`` before asserting; what an engine
cannot do is recorded as not applicable with the reason, not skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from processors.serving.reader import BackendReader, QueryError
from processors.serving.readonly import ReadOnlyError
from processors.storage.backend import ChdbBackend, Row, ServerBackend, StorageRejected
from processors.storage.migrations import (
    ACCESS_CONTROL,
    ANALYST_ROLE,
    WRITER_ROLE,
    AccessUser,
    MigrationError,
    access_users,
    run_migrations,
    shipped,
)
from processors.storage.sink import BatchWriter, Record
from processors.storage.target import ChdbTarget, ServerTarget
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec
from tests.faults.conftest import ROOT, Recorder
from tests.support.clickhouse_server import (
    ClickHouseServer,
    create_reduced_tables,
    server_binary,
)
from tests.support.samples import many_trees, stamped

pytestmark = [pytest.mark.integration, pytest.mark.faults]

AREA = "least privilege"
TENANT_TABLES = ("events", "task_roots", "tasks", "delegations", "credentials", "alerts")
# The released migrations: their checksums (recorded by every deployment) never change.
RELEASED = {
    1: "0001_events",
    2: "0002_state",
    3: "0003_alerts",
}


def _committed_checksum(name: str) -> str:
    """The checksum of a migration as committed (what deployments have recorded)."""
    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"HEAD:infra/clickhouse/{name}.sql"],
        capture_output=True,
        check=True,
    ).stdout
    return hashlib.sha256(text).hexdigest()


# ---- the SQL ---------------------------------------------------------------------------------


def test_access_migration_grants_only_what_each_role_needs(record_fault: Recorder) -> None:
    migrations = {m.version: m for m in shipped()}
    access = migrations[4]
    statements = access.statements(400, "custody")
    text = "\n".join(statements)
    grants = re.findall(r"GRANT (.+?) ON custody\.(\S+) TO (\w+)", text)
    writer = {(what, table) for what, table, role in grants if role == WRITER_ROLE}
    analyst = {(what, table) for what, table, role in grants if role == ANALYST_ROLE}
    policies = re.findall(r"CREATE ROW POLICY IF NOT EXISTS (\w+) ON custody\.(\w+)", text)
    tenant_policies = {table for name, table in policies if name == "custody_analyst_tenant"}
    others = {table for name, table in policies if name == "custody_others"}
    # Released migrations unchanged (the checksums deployments have recorded).
    unchanged = {
        name: migrations[version].checksum == _committed_checksum(name)
        for version, name in RELEASED.items()
    }
    secret_free = not re.search(r"IDENTIFIED|CREATE USER|sha256_hash", text, re.I)
    ok = (
        access.requires == {ACCESS_CONTROL}
        and all(what in {"INSERT", "SELECT", "SHOW COLUMNS"} for what, _ in writer)
        and {what for what, _ in analyst} == {"SELECT"}
        and {t for w, t in writer if w == "INSERT"} == {*TENANT_TABLES, *_avro_tables()}
        and {t for w, t in writer if w == "SELECT"} == {"events", *_avro_tables()}
        and {t for _, t in analyst} == {*TENANT_TABLES, "analyst_tenants"}
        and tenant_policies == set(TENANT_TABLES)
        and others == {*TENANT_TABLES, "analyst_tenants"}
        and all(unchanged.values())
        and secret_free
        and "{{" not in text
        and all("IF NOT EXISTS" in s for s in statements if s.lstrip("- \n").startswith("CREATE"))
    )
    record_fault(
        area=AREA,
        tried="migration 0004: roles custody_writer (INSERT where ingest writes, SELECT on "
        "view sources) and custody_analyst (SELECT only), row policies on every tenant table, "
        "no secret, released migrations 0001-0003 unchanged",
        survived=ok,
        statements=len(statements),
        writer_grants=sorted(" ".join(g) for g in writer),
        analyst_grants=sorted(" ".join(g) for g in analyst),
        tenant_policies=sorted(tenant_policies),
        released_unchanged=unchanged,
    )
    assert access.requires == {ACCESS_CONTROL}
    assert secret_free
    assert all(unchanged.values()), unchanged
    assert tenant_policies == set(TENANT_TABLES)
    assert others == {*TENANT_TABLES, "analyst_tenants"}
    assert ok


def _avro_tables() -> set[str]:
    return {"events_avro", "state_avro", "alerts_avro"}


def _hash_in(statement: str) -> str | None:
    """The sha256 hash ``statement`` sets as a password, if it sets one that way."""
    found = re.search(r"IDENTIFIED WITH sha256_hash BY '([0-9a-f]{64})'", statement)
    return found[1] if found else None


def test_users_are_sent_as_a_sha256_only(record_fault: Recorder) -> None:
    password = "correct horse battery staple 4f1"
    settings = Settings(
        clickhouse_writer_password=SecretStr(password),
        clickhouse_analyst_password=SecretStr(password + "-analyst"),
    )
    users = access_users(settings)
    statements = [s for user in users for s in user.statements()]
    digests = {hashlib.sha256(u.password.get_secret_value().encode()).hexdigest() for u in users}
    leaked = [s for s in statements if password in s]
    with_hash = [s for s in statements if "IDENTIFIED" in s]
    shown = repr(users) + repr(settings) + str(settings.model_dump())
    refused_names = []
    for bad in ("x; DROP TABLE events", "a b", ""):
        try:
            AccessUser(bad, WRITER_ROLE, SecretStr("p"))
        except MigrationError:
            refused_names.append(bad)
    ok = (
        [(u.name, u.role) for u in users]
        == [("custody_ingest", WRITER_ROLE), ("custody_reader", ANALYST_ROLE)]
        and not leaked
        and all(_hash_in(s) in digests for s in with_hash)
        and password not in shown
        and len(refused_names) == 3
        and access_users(Settings()) == []
    )
    record_fault(
        area=AREA,
        tried="the users custody migrate keeps, from CUSTODY_CLICKHOUSE_WRITER_PASSWORD / "
        "_ANALYST_PASSWORD: only sha256 hashes in the SQL, nothing in reprs, bad names refused",
        survived=ok,
        statements=len(statements),
        statements_with_password=len(leaked),
        refused_names=len(refused_names),
    )
    assert not leaked
    assert password not in shown
    assert ok


class RecordingServer:
    """A stand-in for a 24.3+ server: records every statement, answers what migrate asks."""

    parses_avro = False

    def __init__(self, directories: Sequence[str], fail_on: str | None = None) -> None:
        self.target = ServerTarget("127.0.0.1", 1, "custody", "admin")
        self.directories = directories
        self.fail_on = fail_on
        self.executed: list[str] = []
        self.recorded: list[int] = []

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        if self.fail_on and self.fail_on in sql:
            raise StorageRejected(f"Code: 497. DB::Exception: refused: {sql}", 497)
        self.executed.append(sql)
        if sql.startswith("INSERT INTO schema_migrations"):
            self.recorded.append(int((params or {})["version"]))

    def select(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> list[Row]:
        if "version()" in sql:
            return [{"v": "24.8.4.13"}]
        if "system.user_directories" in sql:
            return [{"type": kind} for kind in self.directories]
        return []  # no migration applied yet

    def insert_avro(self, table: str, container: bytes) -> None:
        raise AssertionError("migrate inserts no Avro")

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        raise AssertionError("migrate inserts no rows")

    def version(self) -> str:
        return "24.8.4.13"

    def close(self) -> None:
        pass


def test_the_access_migration_runs_only_where_access_control_exists(
    record_fault: Recorder,
) -> None:
    password = "rotate-me-2e8b6c"
    users = [AccessUser("custody_ingest", WRITER_ROLE, SecretStr(password))]
    with_access = RecordingServer(["users_xml", "local_directory"])
    report = run_migrations(with_access.target, 400, with_access, users)
    access_sql = "\n".join(with_access.executed)
    without = RecordingServer(["users_xml"])
    skipped = run_migrations(without.target, 400, without, users)
    failing = RecordingServer(["local_directory"], fail_on="ALTER USER")
    try:
        run_migrations(failing.target, 400, failing, users)
        error = ""
    except MigrationError as exc:
        error = str(exc)
    digest = hashlib.sha256(password.encode()).hexdigest()
    ok = (
        "0004_access" in report.applied
        and with_access.recorded == [1, 2, 3, 4, 5, 6, 7, 8]
        and "CREATE ROLE IF NOT EXISTS custody_writer" in access_sql
        and report.users == ["custody_ingest"]
        and password not in access_sql
        and "0004_access" in skipped.skipped
        and without.recorded == [1, 2, 3, 5, 6, 8]
        and not any("CREATE USER" in s for s in without.executed)
        and "custody_ingest" in error
        and digest not in error
        and password not in error
    )
    record_fault(
        area=AREA,
        tried="custody migrate on a 24.3+ server with and without a writable user directory "
        "(recorded statements): roles, policies and users applied, or skipped with the reason "
        "and left pending; a failing user statement reports no hash",
        survived=ok,
        applied=report.applied,
        skipped_reason=skipped.skipped.get("0004_access", ""),
        error=error,
    )
    assert ok


# ---- chdb --------------------------------------------------------------------------------


def _chdb(scenario: str, directory: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.faults._chdb_users", scenario, str(directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_CLICKHOUSE")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("least-privilege-chdb")
    prepared = _chdb("prepare", directory)
    (directory / "prepared.json").write_text(json.dumps(prepared))
    return directory


def test_chdb_has_no_sql_access_control(record_fault: Recorder, chdb_dir: Path) -> None:
    prepared = json.loads((chdb_dir / "prepared.json").read_text())
    default = _chdb("sql_access", chdb_dir)
    configured = _chdb("sql_access_configured", chdb_dir)
    tried = ("create_role", "create_user", "create_row_policy")
    refused = all(not default[k]["ok"] and default[k]["code"] == 497 for k in tried) and all(
        not configured[k]["ok"] and configured[k]["code"] == 514 for k in tried
    )
    skipped = prepared["skipped"].get("0004_access", "")
    ok = refused and prepared["recorded"] == [1, 2, 3, 5, 6, 8] and "chdb" in skipped
    record_fault(
        area=AREA,
        tried="chdb: CREATE ROLE/USER/ROW POLICY (default, and with access_management and a "
        "local_directory in its config); custody migrate there",
        survived=ok,
        applicable=False,
        reason="not applicable on the embedded engine: " + skipped,
        default_codes={k: default[k]["code"] for k in tried},
        configured_codes={k: configured[k]["code"] for k in tried},
        user_directories=configured["user_directories"].get("result"),
        migration_skipped=skipped,
    )
    assert refused, (default, configured)
    assert prepared["recorded"] == [1, 2, 3, 5, 6, 8]
    assert ok


def test_chdb_tenant_filter_of_0004_limits_what_custody_query_returns(
    record_fault: Recorder, chdb_dir: Path
) -> None:
    result = _chdb("analyst", chdb_dir)
    ok = (
        result["event_tenants"] == {"ok": True, "result": ["a"]}
        and result["alert_tenants"] == {"ok": True, "result": ["a"]}
        and result["count_b_by_key"] == {"ok": True, "result": 0}
        and result["time_limit_inside"]["result"] in (30, "30")
    )
    record_fault(
        area=AREA,
        tried="chdb with its one user configured (users.xml) by 0004's row filter on every "
        "tenant table, mapped to tenant a in analyst_tenants: custody query as that user",
        survived=ok,
        filter=result["filter"],
        event_tenants=result["event_tenants"].get("result"),
        alert_tenants=result["alert_tenants"].get("result"),
        rows_of_tenant_b_by_key=result["count_b_by_key"].get("result"),
        time_limit_inside_query=result["time_limit_inside"].get("result"),
    )
    assert ok, result


def test_chdb_readonly_profile_refuses_writes_and_custody_query_settings(
    record_fault: Recorder, chdb_dir: Path
) -> None:
    result = _chdb("readonly_profile", chdb_dir)
    writes_refused = result["insert"]["code"] == 164 and result["drop"]["code"] == 164
    settings_refused = (
        not result["custody_query_settings"]["ok"]
        and "readonly" in result["custody_query_settings"]["message"]
    )
    record_fault(
        area=AREA,
        tried="chdb user with a readonly = 2 profile: INSERT and DROP, and custody query's "
        "own settings (readonly = 1, final, limits)",
        survived=writes_refused and result["select"]["ok"],
        insert_code=result["insert"]["code"],
        drop_code=result["drop"]["code"],
        custody_query_under_readonly_profile=(
            "refused: " + result["custody_query_settings"].get("message", "")
            if settings_refused
            else "ran"
        ),
        consequence="custody_analyst's profile sets no readonly (its grants are SELECT only); "
        "custody query adds readonly = 1 per query",
    )
    assert writes_refused, result
    assert result["select"]["ok"], result


# ---- custody query refuses writes, whoever runs it --------------------------------------------

# Where a refused INTO OUTFILE would have written: the test only checks it never appears.
LEAK = "/tmp/custody-leak"  # noqa: S108
WRITES = (
    "INSERT INTO events (event_id, tenant) VALUES ('x', 'a')",
    "SELECT 1; DROP TABLE events",
    "WITH 1 AS x INSERT INTO events (event_id) VALUES ('x')",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "ALTER TABLE events DELETE WHERE 1",
    "OPTIMIZE TABLE events FINAL",
    f"SELECT * FROM events INTO OUTFILE '{LEAK}'",
)


def _refusals(reader: BackendReader) -> dict[str, str]:
    refused = {}
    for sql in WRITES:
        try:
            reader.select(sql)
            refused[sql] = ""
        except (ReadOnlyError, QueryError) as exc:
            refused[sql] = type(exc).__name__ + ": " + str(exc)[:120]
    return refused


def test_custody_query_refuses_writes_even_for_a_user_who_may_write(
    record_fault: Recorder, tmp_path: Path
) -> None:
    target = ChdbTarget(tmp_path / "chdb")
    backend = ChdbBackend(target)
    try:
        run_migrations(target, 400, backend, users=[])
        before = backend.select("SELECT count() AS n FROM events")[0]["n"]
        reader = BackendReader(backend)
        refused = _refusals(reader)
        # A query's own SETTINGS cannot lift readonly: the outer readonly = 1 wins.
        readonly_inside = reader.select("SELECT getSetting('readonly') AS r SETTINGS readonly = 0")[
            0
        ]["r"]
        # the same user can write outside custody query: it is the query path that refuses
        backend.execute("CREATE TABLE IF NOT EXISTS write_probe (x UInt8) ENGINE = Memory")
        backend.execute("INSERT INTO write_probe VALUES (1)")
        could_write = backend.select("SELECT count() AS n FROM write_probe")[0]["n"] == 1
        after = backend.select("SELECT count() AS n FROM events")[0]["n"]
        tables = {r["name"] for r in backend.select("SHOW TABLES")}
    finally:
        backend.close()
    cli = subprocess.run(
        [str(Path(sys.executable).with_name("custody")), "query", WRITES[0]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")},
            "CUSTODY_CLICKHOUSE_URL": f"chdb://{target.path}",
            "CUSTODY_HOME": str(tmp_path / "home"),
        },
    )
    ok = (
        could_write
        and all(refused.values())
        and int(readonly_inside) == 1
        and before == after
        and "events" in tables
        and cli.returncode != 0
        and not Path(LEAK).exists()
    )
    record_fault(
        area=AREA,
        tried=f"custody query with {len(WRITES)} writes and escapes (INSERT, a second "
        "statement, WITH ... INSERT, file(), ALTER, OPTIMIZE, INTO "
        "OUTFILE), and SETTINGS readonly = 0, as chdb's all-powerful user, through the reader "
        "and the CLI",
        survived=ok,
        refused=sum(1 for v in refused.values() if v),
        of=len(WRITES),
        events_before=before,
        events_after=after,
        cli_exit_code=cli.returncode,
        user_could_write_otherwise=could_write,
        readonly_inside_query_with_settings_readonly_0=readonly_inside,
    )
    assert all(refused.values()), refused
    assert cli.returncode != 0, cli.stdout + cli.stderr
    assert ok


# ---- Debian's ClickHouse 18.16 ------------------------------------------------------------

WRITER_PASSWORD = "writer-" + hashlib.sha256(b"least privilege test").hexdigest()[:16]

_USERS_18 = """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default><poll_interval>1</poll_interval></default>
        <custody_writer><poll_interval>1</poll_interval><allow_ddl>0</allow_ddl></custody_writer>
        <custody_analyst><poll_interval>1</poll_interval><readonly>1</readonly></custody_analyst>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <custody_ingest>
            <password_sha256_hex>{writer_sha256}</password_sha256_hex>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>custody_writer</profile>
            <quota>default</quota>
            <allow_databases><database>custody</database></allow_databases>
        </custody_ingest>
        <analyst_a>
            <password></password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>custody_analyst</profile>
            <quota>default</quota>
            <allow_databases><database>custody</database></allow_databases>
            <databases><custody>{filters}</custody></databases>
        </analyst_a>
    </users>
    <quotas><default/></quotas>
</yandex>
"""


@pytest.fixture
def clickhouse_18(tmp_path: Path) -> Iterator[ClickHouseServer]:
    if server_binary() is None:
        pytest.skip("clickhouse-server is not installed (recorded by the test below)")
    filters = "".join(f"<{t}><filter>tenant = 'a'</filter></{t}>" for t in TENANT_TABLES)
    server = ClickHouseServer(
        tmp_path / "clickhouse",
        users_xml=_USERS_18.format(
            writer_sha256=hashlib.sha256(WRITER_PASSWORD.encode()).hexdigest(),
            filters=filters,
        ),
    )
    server.start()
    try:
        create_reduced_tables(server)
        yield server
    finally:
        server.stop()


def _server(server: ClickHouseServer, user: str, password: str = "") -> ServerBackend:
    return ServerBackend(ServerTarget(server.host, server.tcp_port, "custody", user, password))


def _attempt(backend: ServerBackend, sql: str) -> int | None:
    """None if ``sql`` ran, else ClickHouse's error code."""
    try:
        backend.execute(sql)
        return None
    except StorageRejected as exc:
        return exc.code
    except Exception as exc:  # a refused login surfaces as unavailable on some paths
        match = re.search(r"Code: (\d+)", str(exc))
        return int(match[1]) if match else -1


def test_clickhouse_18_writer_and_read_only_analyst(
    record_fault: Recorder, clickhouse_18: ClickHouseServer
) -> None:
    codec = AvroCodec()
    trees = many_trees(4)
    roots = sorted({e.root_task_id for e in trees})
    events = [  # two trees of tenant a, two of tenant b
        e.model_copy(update={"tenant": "ab"[roots.index(e.root_task_id) % 2]}) for e in trees
    ]
    encoded = [
        codec.encode_event(stamped(e, seq=i + 1, instance="lp")) for i, e in enumerate(events)
    ]
    records = [
        Record(topics.EVENTS, 0, i, e.root_task_id.encode(), v)
        for i, (e, v) in enumerate(zip(events, encoded, strict=True))
    ]
    writer = _server(clickhouse_18, "custody_ingest", WRITER_PASSWORD)
    try:
        stored = BatchWriter(writer).write(records).stored
        writer_ddl = {
            "CREATE TABLE": _attempt(writer, "CREATE TABLE custody.x (a UInt8) ENGINE = Memory"),
            "DROP TABLE": _attempt(writer, "DROP TABLE custody.alerts"),
            "ALTER DELETE": _attempt(writer, "ALTER TABLE custody.events DELETE WHERE 1"),
            "read another database": _attempt(writer, "SELECT * FROM default.anything"),
        }
        # custody query, run as the writer: still refuses writes
        query_refusals = _refusals(BackendReader(writer))
    finally:
        writer.close()
    wrong = _server(clickhouse_18, "custody_ingest", "not-the-password")
    try:
        wrong_password = _attempt(wrong, "SELECT 1")
    finally:
        wrong.close()
    analyst = _server(clickhouse_18, "analyst_a")
    try:
        analyst_writes = {
            "INSERT": _attempt(
                analyst, "INSERT INTO custody.events (event_id, tenant) VALUES ('x', 'b')"
            ),
            "DROP TABLE": _attempt(analyst, "DROP TABLE custody.events"),
        }
        tenants = sorted({r["tenant"] for r in analyst.select("SELECT tenant FROM events")})
        all_tenants = sorted({e.tenant for e in events})
        try:
            BackendReader(analyst).select("SELECT count() AS n FROM events")
            custody_query = "ran"
        except (QueryError, ReadOnlyError) as exc:
            custody_query = str(exc)[:160]
    finally:
        analyst.close()
    writer_ok = stored == len(records) and all(code is not None for code in writer_ddl.values())
    record_fault(
        area=AREA,
        tried="ClickHouse 18.16, users.xml: ingest's BatchWriter as a writer user "
        "(password_sha256_hex, allow_ddl = 0, only database custody); DDL, another "
        "database and a wrong password as that user; custody query as that user",
        survived=writer_ok and wrong_password is not None and all(query_refusals.values()),
        stored=stored,
        of=len(records),
        ddl_refusal_codes=writer_ddl,
        wrong_password_code=wrong_password,
        custody_query_refused=sum(1 for v in query_refusals.values() if v),
        of_writes=len(WRITES),
    )
    record_fault(
        area=AREA,
        tried="ClickHouse 18.16, users.xml: a readonly = 1 analyst: INSERT and DROP",
        survived=all(code == 164 for code in analyst_writes.values()),
        refusal_codes=analyst_writes,
    )
    filtered = tenants == ["a"]
    record_fault(
        area=AREA,
        tried="ClickHouse 18.16: row filter by tenant in users.xml (<databases><custody>"
        "<events><filter>tenant = 'a'</filter>) for the analyst",
        survived=filtered or tenants == all_tenants,
        applicable=filtered,
        reason=""
        if filtered
        else "not applicable on 18.16: it has no row-level security and ignores the "
        "<databases> filter (its library knows only allow_databases; users.xml row filters "
        "are documented from 2019, SQL row policies came with 20.x RBAC); production "
        "targets 24.3+",
        tenants_seen=tenants,
        tenants_stored=all_tenants,
        custody_query_as_readonly_analyst=custody_query,
    )
    assert stored == len(records)
    assert all(code is not None for code in writer_ddl.values()), writer_ddl
    assert wrong_password is not None
    assert all(query_refusals.values()), query_refusals
    assert all(code == 164 for code in analyst_writes.values()), analyst_writes
    assert filtered or tenants == all_tenants
