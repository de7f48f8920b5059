-- CREDENTIAL_RENEWED (schema v2 of custody_event): a renewal moves a token's expiry.
--
-- Stored: events_avro takes schema v2's body_credential_renewed (a v1 record has none:
-- ClickHouse reads the missing field as NULL), and events_avro_mv, recreated with it,
-- files a renewal's token_id and expires_at (the expiry after the renewal) in the shared
-- columns and its renewed_by in a new one. The view is dropped and created again
-- (a materialized view's query cannot be altered in place on every supported version):
-- `custody migrate` runs before ingest writes, so no insert falls between the two.
--
-- Judged: token_issuances keeps its columns, and its expires_at becomes the token's
-- expiry as the correlator holds it, the latest of the earliest issuance's expires_at and
-- the expires_at of every CREDENTIAL_RENEWED of the token in its tree (a renewal never
-- shortens it); issued_expires_at keeps the issuance's own, and renewal_event_id names the
-- renewal that set the expiry (null when none did; of renewals to the same expiry the
-- earliest by (event_time, event_id)). The SQL twins read expires_at from it.
ALTER TABLE events_avro ADD COLUMN IF NOT EXISTS body_credential_renewed Nullable(Tuple(
    token_id String, expires_at DateTime64(6, 'UTC'), renewed_by String));

ALTER TABLE events ADD COLUMN IF NOT EXISTS renewed_by Nullable(String) AFTER revoked_by;

DROP VIEW IF EXISTS events_avro_mv;

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
             body_credential_revoked.token_id, body_credential_renewed.token_id) AS token_id,
    body_credential_issued.token_subject AS token_subject,
    body_credential_issued.credential_kind AS credential_kind,
    body_credential_issued.audience AS audience,
    multiIf(body_credential_issued IS NOT NULL, body_credential_issued.scopes,
            body_delegation IS NOT NULL, body_delegation.scopes,
            body_approval IS NOT NULL, body_approval.scopes, []) AS scopes,
    body_credential_issued.issued_at AS issued_at,
    coalesce(body_credential_issued.expires_at, body_approval.expires_at,
             body_break_glass.expires_at, body_credential_renewed.expires_at) AS expires_at,
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
    body_credential_revoked.revoked_by AS revoked_by,
    body_credential_renewed.renewed_by AS renewed_by
FROM events_avro
-- ClickHouse does not check that a body was read to its end, so bytes that are not an
-- event could pass as one; an event_id that is not a UUID fails the insert instead, and
-- ingest isolates the record and dead-letters it.
WHERE throwIf(NOT match(event_id, '^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$'),
              'event_id is not a UUID') = 0;

CREATE OR REPLACE VIEW token_issuances AS
SELECT
    i.tenant AS tenant, i.root_task_id AS root_task_id, i.token_id AS token_id,
    i.task_id AS task_id, i.decision_id AS decision_id,
    i.issued_event_id AS issued_event_id, i.issued_event_time AS issued_event_time,
    i.token_subject AS token_subject, i.token_scopes AS token_scopes,
    if(r.renewed_until >= i.issued_expires_at, r.renewed_until, i.issued_expires_at)
        AS expires_at,
    i.issued_expires_at AS issued_expires_at,
    if(r.renewed_until >= i.issued_expires_at, r.renewal_event_id, NULL) AS renewal_event_id
FROM
(
    SELECT
        tenant, root_task_id, token_id,
        argMin(task_id, (event_time, event_id)) AS task_id,
        argMin(decision_id, (event_time, event_id)) AS decision_id,
        argMin(event_id, (event_time, event_id)) AS issued_event_id,
        min(event_time) AS issued_event_time,
        argMin(token_subject, (event_time, event_id)) AS token_subject,
        argMin(scopes, (event_time, event_id)) AS token_scopes,
        argMin(expires_at, (event_time, event_id)) AS issued_expires_at
    FROM events FINAL
    WHERE event_type = 'CREDENTIAL_ISSUED'
    GROUP BY tenant, root_task_id, token_id
) AS i
LEFT JOIN
(
    -- Nullable, so a token without a renewal reads NULL after the LEFT JOIN (and the
    -- comparisons above are NULL, i.e. false).
    SELECT
        tenant, root_task_id, token_id,
        toNullable(max(assumeNotNull(expires_at))) AS renewed_until,
        toNullable(argMin(
            event_id,
            (-toUnixTimestamp64Micro(assumeNotNull(expires_at)), event_time, event_id)
        )) AS renewal_event_id
    FROM events FINAL
    WHERE event_type = 'CREDENTIAL_RENEWED'
    GROUP BY tenant, root_task_id, token_id
) AS r USING (tenant, root_task_id, token_id);
