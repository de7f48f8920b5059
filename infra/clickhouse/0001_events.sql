-- Raw events: every envelope and body field as a column, named as in the contract.
-- Body fields shared by several event types (token_id, decision_id, scopes, ...) share
-- one column, so an analyst filters on token_id whatever the event type. (An array of a
-- NULL body reads as [], not NULL, so shared arrays are picked with multiIf, not coalesce.)
-- ReplacingMergeTree over a sorting key that ends in event_id: a replayed event is the
-- same row, collapsed within an insert and at merges; readers use FINAL (custody query
-- sets final=1) so each event_id is read once even before a merge.
CREATE TABLE IF NOT EXISTS events
(
    event_id String,
    event_type LowCardinality(String),
    event_time DateTime64(6, 'UTC'),
    tenant LowCardinality(String),
    producer LowCardinality(String),
    root_task_id String,
    task_id String,
    parent_task_id Nullable(String),
    depth Int32,
    actor_workload_id String,
    actor_kind LowCardinality(String),
    actor_instance_id String,
    actor_on_behalf_of Nullable(String),
    producer_instance String,
    seq Int64,
    prev_hash Nullable(String),
    attributes Map(String, String),
    purpose Nullable(String),
    requested_scopes Array(String),
    deadline Nullable(DateTime64(6, 'UTC')),
    decision_id Nullable(String),
    policy_engine Nullable(String),
    policy_id Nullable(String),
    policy_version Nullable(String),
    decision LowCardinality(Nullable(String)),
    resource Nullable(String),
    action Nullable(String),
    data_scope Array(String),
    reasons Array(String),
    context Map(String, String),
    token_id Nullable(String),
    token_subject Nullable(String),
    credential_kind LowCardinality(Nullable(String)),
    audience Nullable(String),
    scopes Array(String),
    issued_at Nullable(DateTime64(6, 'UTC')),
    expires_at Nullable(DateTime64(6, 'UTC')),
    parent_token_id Nullable(String),
    tool Nullable(String),
    outcome LowCardinality(Nullable(String)),
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
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX token_id_idx token_id TYPE bloom_filter GRANULARITY 4,
    INDEX workload_idx actor_workload_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant, root_task_id, event_time, event_id)
TTL toDateTime(event_time) + INTERVAL {{retention_days}} DAY
-- Small granules: a custody tree is a few dozen rows, read by key.
SETTINGS index_granularity = 1024;

-- The Avro layout of custody.events.v1 (one optional record per body type). ingest
-- inserts Avro container blocks here and ClickHouse parses them; the Null engine keeps
-- nothing, the view below flattens each row into events.
CREATE TABLE IF NOT EXISTS events_avro
(
    event_id String,
    event_type String,
    event_time DateTime64(6, 'UTC'),
    tenant String,
    producer String,
    root_task_id String,
    task_id String,
    parent_task_id Nullable(String),
    depth Int32,
    actor Tuple(
        workload_id String, kind String, instance_id String, on_behalf_of Nullable(String)),
    producer_instance String,
    seq Int64,
    prev_hash Nullable(String),
    attributes Map(String, String),
    body_task_declared Nullable(Tuple(
        purpose String, requested_scopes Array(String),
        deadline Nullable(DateTime64(6, 'UTC')))),
    body_authz_decision Nullable(Tuple(
        decision_id String, policy_engine String, policy_id String, policy_version String,
        decision String, resource String, action String, data_scope Array(String),
        reasons Array(String), context Map(String, String))),
    body_credential_issued Nullable(Tuple(
        token_id String, token_subject String, credential_kind String, audience String,
        scopes Array(String), issued_at DateTime64(6, 'UTC'), expires_at DateTime64(6, 'UTC'),
        decision_id String, parent_token_id Nullable(String))),
    body_access Nullable(Tuple(
        token_id String, tool String, resource String, action String,
        data_scope Array(String), decision_id Nullable(String), outcome String,
        detail Nullable(String))),
    body_delegation Nullable(Tuple(
        delegator String, delegatee String, child_task_id String, scopes Array(String),
        decision_id String)),
    body_approval Nullable(Tuple(
        approval_id String, approver String, approves String, scopes Array(String),
        expires_at Nullable(DateTime64(6, 'UTC')), reason String)),
    body_break_glass Nullable(Tuple(
        break_glass_id String, reason String, standing_access_unavailable String,
        approval_id Nullable(String), expires_at DateTime64(6, 'UTC'))),
    body_credential_revoked Nullable(Tuple(
        token_id String, reason String, revoked_by String)),
    body_task_completed Nullable(Tuple(outcome String, detail Nullable(String)))
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_avro_mv TO events AS
SELECT
    event_id, event_type, event_time, tenant, producer, root_task_id, task_id,
    parent_task_id, depth,
    actor.workload_id AS actor_workload_id,
    actor.kind AS actor_kind,
    actor.instance_id AS actor_instance_id,
    actor.on_behalf_of AS actor_on_behalf_of,
    producer_instance, seq, prev_hash, attributes,
    body_task_declared.purpose AS purpose,
    ifNull(body_task_declared.requested_scopes, []) AS requested_scopes,
    body_task_declared.deadline AS deadline,
    coalesce(body_authz_decision.decision_id, body_credential_issued.decision_id,
             body_access.decision_id, body_delegation.decision_id) AS decision_id,
    body_authz_decision.policy_engine AS policy_engine,
    body_authz_decision.policy_id AS policy_id,
    body_authz_decision.policy_version AS policy_version,
    body_authz_decision.decision AS decision,
    coalesce(body_authz_decision.resource, body_access.resource) AS resource,
    coalesce(body_authz_decision.action, body_access.action) AS action,
    multiIf(body_authz_decision IS NOT NULL, body_authz_decision.data_scope,
            body_access IS NOT NULL, body_access.data_scope, []) AS data_scope,
    ifNull(body_authz_decision.reasons, []) AS reasons,
    ifNull(body_authz_decision.context, map()) AS context,
    coalesce(body_credential_issued.token_id, body_access.token_id,
             body_credential_revoked.token_id) AS token_id,
    body_credential_issued.token_subject AS token_subject,
    body_credential_issued.credential_kind AS credential_kind,
    body_credential_issued.audience AS audience,
    multiIf(body_credential_issued IS NOT NULL, body_credential_issued.scopes,
            body_delegation IS NOT NULL, body_delegation.scopes,
            body_approval IS NOT NULL, body_approval.scopes, []) AS scopes,
    body_credential_issued.issued_at AS issued_at,
    coalesce(body_credential_issued.expires_at, body_approval.expires_at,
             body_break_glass.expires_at) AS expires_at,
    body_credential_issued.parent_token_id AS parent_token_id,
    body_access.tool AS tool,
    coalesce(body_access.outcome, body_task_completed.outcome) AS outcome,
    coalesce(body_access.detail, body_task_completed.detail) AS detail,
    body_delegation.delegator AS delegator,
    body_delegation.delegatee AS delegatee,
    body_delegation.child_task_id AS child_task_id,
    coalesce(body_approval.approval_id, body_break_glass.approval_id) AS approval_id,
    body_approval.approver AS approver,
    body_approval.approves AS approves,
    coalesce(body_approval.reason, body_break_glass.reason,
             body_credential_revoked.reason) AS reason,
    body_break_glass.break_glass_id AS break_glass_id,
    body_break_glass.standing_access_unavailable AS standing_access_unavailable,
    body_credential_revoked.revoked_by AS revoked_by
FROM events_avro
-- ClickHouse does not check that a body was read to its end, so bytes that are not an
-- event could pass as one; an event_id that is not a UUID fails the insert instead, and
-- ingest isolates the record and dead-letters it.
WHERE throwIf(NOT match(event_id, '^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$'),
              'event_id is not a UUID') = 0;

-- Which tree a task belongs to, so `custody trace` finds a tree from any of its tasks
-- without scanning events (events is ordered by root_task_id, not task_id).
CREATE TABLE IF NOT EXISTS task_roots
(
    task_id String,
    tenant LowCardinality(String),
    root_task_id String,
    first_seen DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
-- Task ids are unique in practice, not by contract: a task id seen in two trees (or two
-- tenants) keeps a row for each, and trace asks which one is meant.
ORDER BY (task_id, tenant, root_task_id)
TTL toDateTime(first_seen) + INTERVAL {{retention_days}} DAY
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS task_roots_mv TO task_roots AS
SELECT
    arrayJoin(if(child_task_id IS NULL, [task_id], [task_id, assumeNotNull(child_task_id)]))
        AS task_id,
    tenant, root_task_id, event_time AS first_seen
FROM events;
