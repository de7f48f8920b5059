-- requires: access_control
-- Least privilege (README "Least privilege in ClickHouse"). Applied only where the engine
-- stores SQL users, roles and row policies (a server with a local_directory or replicated
-- user directory); on the embedded engine it is skipped with the reason, and not recorded.
-- Users and their password hashes are not here: `custody migrate` creates them from
-- CUSTODY_CLICKHOUSE_WRITER_PASSWORD / _ANALYST_PASSWORD (processors/storage/migrations.py).

-- Which tenants each analyst may read: one row per (ClickHouse user, tenant). Managed by
-- an operator (INSERT / ALTER TABLE ... DELETE); read by the row policies below.
CREATE TABLE IF NOT EXISTS analyst_tenants
(
    user String,
    tenant String
)
ENGINE = ReplacingMergeTree
ORDER BY (user, tenant);

-- custody_writer: what `custody ingest` does and nothing else. INSERT into the tables it
-- writes (rows on a server, Avro into the *_avro tables on the embedded path) and into
-- the targets of their materialized views; SELECT on the views' source tables, which
-- ClickHouse checks when an insert is pushed through a view (ClickHouse issues #14810,
-- #63777; the *_avro tables use the Null engine and are always empty); SHOW COLUMNS,
-- because ingest reads its tables' columns from system.columns. No DDL (allow_ddl = 0).
CREATE ROLE IF NOT EXISTS custody_writer;
GRANT INSERT ON {{database}}.events TO custody_writer;
GRANT INSERT ON {{database}}.task_roots TO custody_writer;
GRANT INSERT ON {{database}}.tasks TO custody_writer;
GRANT INSERT ON {{database}}.delegations TO custody_writer;
GRANT INSERT ON {{database}}.credentials TO custody_writer;
GRANT INSERT ON {{database}}.alerts TO custody_writer;
GRANT INSERT ON {{database}}.events_avro TO custody_writer;
GRANT INSERT ON {{database}}.state_avro TO custody_writer;
GRANT INSERT ON {{database}}.alerts_avro TO custody_writer;
GRANT SELECT ON {{database}}.events TO custody_writer;
GRANT SELECT ON {{database}}.events_avro TO custody_writer;
GRANT SELECT ON {{database}}.state_avro TO custody_writer;
GRANT SELECT ON {{database}}.alerts_avro TO custody_writer;
GRANT SHOW COLUMNS ON {{database}}.* TO custody_writer;
CREATE SETTINGS PROFILE IF NOT EXISTS custody_writer SETTINGS allow_ddl = 0 TO custody_writer;

-- custody_analyst: SELECT on what `custody query/trace/alerts/export`, serve and the
-- explorer read; nothing else (no INSERT, no DDL, no table functions, no system access).
-- The profile caps what a query may ask for; custody query adds readonly = 1 itself.
CREATE ROLE IF NOT EXISTS custody_analyst;
GRANT SELECT ON {{database}}.events TO custody_analyst;
GRANT SELECT ON {{database}}.task_roots TO custody_analyst;
GRANT SELECT ON {{database}}.tasks TO custody_analyst;
GRANT SELECT ON {{database}}.delegations TO custody_analyst;
GRANT SELECT ON {{database}}.credentials TO custody_analyst;
GRANT SELECT ON {{database}}.alerts TO custody_analyst;
GRANT SELECT ON {{database}}.analyst_tenants TO custody_analyst;
CREATE SETTINGS PROFILE IF NOT EXISTS custody_analyst SETTINGS
    allow_ddl = 0,
    max_execution_time = 60 MAX 300,
    max_memory_usage = 2147483648 MAX 4294967296
TO custody_analyst;

-- Rows by tenant: an analyst reads only the tenants analyst_tenants lists for them (none
-- until an operator adds a row). Once a table has a row policy, ClickHouse shows a user
-- not named by any policy no rows at all, so every other user (ingest, operators) gets an
-- explicit see-everything policy.
CREATE ROW POLICY IF NOT EXISTS custody_analyst_tenant ON {{database}}.events FOR SELECT
    USING tenant IN (SELECT tenant FROM {{database}}.analyst_tenants WHERE user = currentUser())
    TO custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_analyst_tenant ON {{database}}.task_roots FOR SELECT
    USING tenant IN (SELECT tenant FROM {{database}}.analyst_tenants WHERE user = currentUser())
    TO custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_analyst_tenant ON {{database}}.tasks FOR SELECT
    USING tenant IN (SELECT tenant FROM {{database}}.analyst_tenants WHERE user = currentUser())
    TO custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_analyst_tenant ON {{database}}.delegations FOR SELECT
    USING tenant IN (SELECT tenant FROM {{database}}.analyst_tenants WHERE user = currentUser())
    TO custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_analyst_tenant ON {{database}}.credentials FOR SELECT
    USING tenant IN (SELECT tenant FROM {{database}}.analyst_tenants WHERE user = currentUser())
    TO custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_analyst_tenant ON {{database}}.alerts FOR SELECT
    USING tenant IN (SELECT tenant FROM {{database}}.analyst_tenants WHERE user = currentUser())
    TO custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_analyst_self ON {{database}}.analyst_tenants FOR SELECT
    USING user = currentUser()
    TO custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_others ON {{database}}.events FOR SELECT
    USING 1 TO ALL EXCEPT custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_others ON {{database}}.task_roots FOR SELECT
    USING 1 TO ALL EXCEPT custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_others ON {{database}}.tasks FOR SELECT
    USING 1 TO ALL EXCEPT custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_others ON {{database}}.delegations FOR SELECT
    USING 1 TO ALL EXCEPT custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_others ON {{database}}.credentials FOR SELECT
    USING 1 TO ALL EXCEPT custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_others ON {{database}}.alerts FOR SELECT
    USING 1 TO ALL EXCEPT custody_analyst;
CREATE ROW POLICY IF NOT EXISTS custody_others ON {{database}}.analyst_tenants FOR SELECT
    USING 1 TO ALL EXCEPT custody_analyst;
