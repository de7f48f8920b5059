-- Test-only: reduced versions of the tables of infra/clickhouse/*.sql that ClickHouse 18.16
-- (Debian's clickhouse-server) accepts, for the integration tests against a real server.
-- The production schema needs 24.3 (`custody migrate` refuses older servers); here:
--   DateTime64(6, 'UTC') -> DateTime (second precision; the server zone is pinned to UTC),
--   LowCardinality(T)    -> T,
--   Map(String, String)  -> column dropped (attributes, context),
--   no TTL, no data-skipping indexes, no *_avro tables or views (the native protocol
--   carries rows: the sink decodes records in Python and writes only the columns a table
--   has, skipping those with a default expression, such as ingested_at).
-- Every column kept has the same name as in the production schema. Engines and sorting keys
-- are the production ones, so a replayed record is the same row and FINAL reads it once.

CREATE TABLE IF NOT EXISTS events
(
    event_id String,
    event_type String,
    event_time DateTime,
    tenant String,
    producer String,
    root_task_id String,
    task_id String,
    parent_task_id Nullable(String),
    depth Int32,
    actor_workload_id String,
    actor_kind String,
    actor_instance_id String,
    actor_on_behalf_of Nullable(String),
    producer_instance String,
    seq Int64,
    prev_hash Nullable(String),
    purpose Nullable(String),
    requested_scopes Array(String),
    deadline Nullable(DateTime),
    decision_id Nullable(String),
    policy_engine Nullable(String),
    policy_id Nullable(String),
    policy_version Nullable(String),
    decision Nullable(String),
    resource Nullable(String),
    action Nullable(String),
    data_scope Array(String),
    reasons Array(String),
    token_id Nullable(String),
    token_subject Nullable(String),
    credential_kind Nullable(String),
    audience Nullable(String),
    scopes Array(String),
    issued_at Nullable(DateTime),
    expires_at Nullable(DateTime),
    parent_token_id Nullable(String),
    tool Nullable(String),
    outcome Nullable(String),
    detail Nullable(String),
    delegator Nullable(String),
    delegatee Nullable(String),
    child_task_id Nullable(String),
    approval_id Nullable(String),
    approver Nullable(String),
    approves Nullable(String),
    reason Nullable(String),
    break_glass_id Nullable(String),
    standing_access_unavailable Nullable(String),
    revoked_by Nullable(String),
    ingested_at DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant, root_task_id, event_time, event_id);

CREATE TABLE IF NOT EXISTS tasks
(
    tenant String,
    root_task_id String,
    task_id String,
    parent_task_id Nullable(String),
    depth Int32,
    workload_id String,
    actor_kind String,
    instance_id String,
    on_behalf_of Nullable(String),
    purpose Nullable(String),
    requested_scopes Array(String),
    status String,
    outcome Nullable(String),
    declared_at Nullable(DateTime),
    completed_at Nullable(DateTime),
    version Int64,
    updated_at DateTime,
    source_event_ids Array(String)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, root_task_id, task_id);

CREATE TABLE IF NOT EXISTS delegations
(
    tenant String,
    root_task_id String,
    child_task_id String,
    parent_task_id String,
    delegator String,
    delegatee String,
    scopes Array(String),
    decision_id String,
    delegated_at DateTime,
    version Int64,
    updated_at DateTime,
    source_event_ids Array(String)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, root_task_id, child_task_id);

CREATE TABLE IF NOT EXISTS credentials
(
    tenant String,
    root_task_id String,
    token_id String,
    task_id String,
    token_subject String,
    credential_kind String,
    audience String,
    scopes Array(String),
    issued_at DateTime,
    expires_at DateTime,
    decision_id String,
    parent_token_id Nullable(String),
    state String,
    revoked_at Nullable(DateTime),
    revocation_reason Nullable(String),
    revoked_by Nullable(String),
    version Int64,
    updated_at DateTime,
    source_event_ids Array(String)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, root_task_id, token_id);

CREATE TABLE IF NOT EXISTS alerts
(
    alert_id String,
    alert_type String,
    severity String,
    tenant String,
    root_task_id String,
    task_id Nullable(String),
    token_id Nullable(String),
    workload_id Nullable(String),
    event_time DateTime,
    detected_at DateTime,
    evidence_event_ids Array(String),
    detail String,
    ingested_at DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
ORDER BY (tenant, root_task_id, alert_id);
