-- Lifecycle state from custody.state.v1, one row per key: the correlator numbers each
-- key's changes, so ReplacingMergeTree(version) keeps the latest ("latest wins") and a
-- replayed change is the same row. Readers use FINAL.
CREATE TABLE IF NOT EXISTS tasks
(
    tenant LowCardinality(String),
    root_task_id String,
    task_id String,
    parent_task_id Nullable(String),
    depth Int32,
    workload_id String,
    actor_kind LowCardinality(String),
    instance_id String,
    on_behalf_of Nullable(String),
    purpose Nullable(String),
    requested_scopes Array(String),
    status LowCardinality(String),
    outcome LowCardinality(Nullable(String)),
    declared_at Nullable(DateTime64(6, 'UTC')),
    completed_at Nullable(DateTime64(6, 'UTC')),
    version Int64,
    updated_at DateTime64(6, 'UTC'),
    source_event_ids Array(String)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, root_task_id, task_id)
TTL toDateTime(updated_at) + INTERVAL {{retention_days}} DAY
-- Small granules: a custody tree is a few dozen rows, read by key.
SETTINGS index_granularity = 1024;

CREATE TABLE IF NOT EXISTS delegations
(
    tenant LowCardinality(String),
    root_task_id String,
    child_task_id String,
    parent_task_id String,
    delegator String,
    delegatee String,
    scopes Array(String),
    decision_id String,
    delegated_at DateTime64(6, 'UTC'),
    version Int64,
    updated_at DateTime64(6, 'UTC'),
    source_event_ids Array(String)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, root_task_id, child_task_id)
TTL toDateTime(updated_at) + INTERVAL {{retention_days}} DAY
-- Small granules: a custody tree is a few dozen rows, read by key.
SETTINGS index_granularity = 1024;

CREATE TABLE IF NOT EXISTS credentials
(
    tenant LowCardinality(String),
    root_task_id String,
    token_id String,
    task_id String,
    token_subject String,
    credential_kind LowCardinality(String),
    audience String,
    scopes Array(String),
    issued_at DateTime64(6, 'UTC'),
    expires_at DateTime64(6, 'UTC'),
    decision_id String,
    parent_token_id Nullable(String),
    state LowCardinality(String),
    revoked_at Nullable(DateTime64(6, 'UTC')),
    revocation_reason LowCardinality(Nullable(String)),
    revoked_by Nullable(String),
    version Int64,
    updated_at DateTime64(6, 'UTC'),
    source_event_ids Array(String),
    INDEX token_id_idx token_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant, root_task_id, token_id)
TTL toDateTime(updated_at) + INTERVAL {{retention_days}} DAY
-- Small granules: a custody tree is a few dozen rows, read by key.
SETTINGS index_granularity = 1024;

-- The Avro layout of custody.state.v1; each view below takes its kind of change, and
-- fails the insert (ingest then isolates and dead-letters the record) when a change lacks
-- the payload of its kind, which the Avro schema cannot require.
CREATE TABLE IF NOT EXISTS state_avro
(
    kind String,
    tenant String,
    root_task_id String,
    key String,
    version Int64,
    updated_at DateTime64(6, 'UTC'),
    source_event_ids Array(String),
    task Nullable(Tuple(
        task_id String, parent_task_id Nullable(String), depth Int32,
        actor Tuple(workload_id String, kind String, instance_id String,
                    on_behalf_of Nullable(String)),
        purpose Nullable(String), requested_scopes Array(String), status String,
        outcome Nullable(String), declared_at Nullable(DateTime64(6, 'UTC')),
        completed_at Nullable(DateTime64(6, 'UTC')))),
    delegation Nullable(Tuple(
        delegator String, delegatee String, parent_task_id String, child_task_id String,
        scopes Array(String), decision_id String, delegated_at DateTime64(6, 'UTC'))),
    credential Nullable(Tuple(
        token_id String, task_id String, token_subject String, credential_kind String,
        audience String, scopes Array(String), issued_at DateTime64(6, 'UTC'),
        expires_at DateTime64(6, 'UTC'), decision_id String,
        parent_token_id Nullable(String), state String,
        revoked_at Nullable(DateTime64(6, 'UTC')), revocation_reason Nullable(String),
        revoked_by Nullable(String)))
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS state_avro_tasks_mv TO tasks AS
SELECT
    tenant, root_task_id,
    task.task_id AS task_id, task.parent_task_id AS parent_task_id, task.depth AS depth,
    task.actor.workload_id AS workload_id, task.actor.kind AS actor_kind,
    task.actor.instance_id AS instance_id, task.actor.on_behalf_of AS on_behalf_of,
    task.purpose AS purpose, task.requested_scopes AS requested_scopes,
    task.status AS status, task.outcome AS outcome,
    task.declared_at AS declared_at, task.completed_at AS completed_at,
    version, updated_at, source_event_ids
FROM state_avro
WHERE kind = 'TASK'
  AND throwIf(kind = 'TASK' AND task IS NULL, 'a TASK change without its task') = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS state_avro_delegations_mv TO delegations AS
SELECT
    tenant, root_task_id,
    delegation.child_task_id AS child_task_id,
    delegation.parent_task_id AS parent_task_id,
    delegation.delegator AS delegator, delegation.delegatee AS delegatee,
    delegation.scopes AS scopes, delegation.decision_id AS decision_id,
    delegation.delegated_at AS delegated_at,
    version, updated_at, source_event_ids
FROM state_avro
WHERE kind = 'DELEGATION'
  AND throwIf(kind = 'DELEGATION' AND delegation IS NULL, 'a DELEGATION change without its delegation') = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS state_avro_credentials_mv TO credentials AS
SELECT
    tenant, root_task_id,
    credential.token_id AS token_id, credential.task_id AS task_id,
    credential.token_subject AS token_subject,
    credential.credential_kind AS credential_kind, credential.audience AS audience,
    credential.scopes AS scopes, credential.issued_at AS issued_at,
    credential.expires_at AS expires_at, credential.decision_id AS decision_id,
    credential.parent_token_id AS parent_token_id, credential.state AS state,
    credential.revoked_at AS revoked_at,
    credential.revocation_reason AS revocation_reason,
    credential.revoked_by AS revoked_by,
    version, updated_at, source_event_ids
FROM state_avro
WHERE kind = 'CREDENTIAL'
  AND throwIf(kind = 'CREDENTIAL' AND credential IS NULL, 'a CREDENTIAL change without its credential') = 0;
