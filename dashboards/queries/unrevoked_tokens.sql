-- UNREVOKED_TOKEN: tokens whose task completed and that were neither revoked nor expired
-- within the grace period after the completion.
-- The SQL twin of the streaming rule (processors/correlation/engine.py, _deadline_unrevoked),
-- computed from the raw `events` table alone: directly, and through the views
-- token_issuances and token_revocations (migrations 0006 and 0008), the earliest issuance
-- and revocation of each token.
--
-- Parameters
--   {grace_seconds:UInt32}        the correlator's grace period, in seconds.
--   {as_of:DateTime64(6, 'UTC')}  the event time the data is judged at, like the
--                                 correlator's watermark ('YYYY-MM-DD hh:mm:ss[.ffffff]',
--                                 UTC). A token is reported only once its deadline
--                                 (completion + grace) is at or before as_of.
--
-- Run it with clickhouse-client:
--   clickhouse-client --database custody --param_grace_seconds=60 \
--       --param_as_of='2026-11-29 10:00:00' --queries-file dashboards/queries/unrevoked_tokens.sql
-- or with the CLI:
--   custody query @dashboards/queries/unrevoked_tokens.sql --param grace_seconds=60 --param as_of='2026-11-29 10:00:00'
-- or through the query API of `custody serve`: POST /query with
--   {"sql": <this file>, "params": {"grace_seconds": 60, "as_of": "2026-11-29 10:00:00"}}
-- For a Grafana alert rule, as_of is now() less the correlator's allowed lateness (its
-- watermark).
--
-- Result: one row per alert, with the columns of the `alerts` table (without detected_at)
-- plus the deadline, the first revocation and the expiry. alert_id is the streaming
-- alert's id, so the result can be matched against `alerts` row for row.
--
-- How it is judged (as the correlator does):
--   * one custody tree (tenant, root_task_id) at a time; each event_id once (FINAL);
--   * the token is its earliest CREDENTIAL_ISSUED in the tree, by (event_time, event_id);
--     a later issuance of the same token_id does not count; its task is that event's task;
--   * the task's completion is its earliest TASK_COMPLETED, by (event_time, event_id);
--   * deadline = completion event_time + grace;
--   * not reported when the token's earliest CREDENTIAL_REVOKED in the tree has an
--     event_time <= deadline, or when the token's expiry <= deadline (both inclusive);
--     the expiry is its expires_at as renewed (token_issuances, migration 0008): the
--     latest of the issuance's and of every CREDENTIAL_RENEWED of it in the tree;
--     a revocation after the deadline still shows as evidence;
--   * alert event_time = the completion's event_time; evidence = the issuance, the
--     completion and the earliest revocation, if any.
--
-- Differences from the streaming rule
--   * The correlator decides once, when its watermark passes the deadline, with the events
--     it has received by then; this query uses every stored event. They differ only when
--     an event arrives later than the allowed lateness: a revocation stored after the
--     correlator decided is not seen by it (alert in `alerts`, none here); an earlier
--     issuance or completion stored late can move the deadline for this query.
--   * The correlator keys a tree by root_task_id alone (tenant taken from its first
--     event); this query by (tenant, root_task_id). Equal unless two tenants share a
--     root_task_id.
WITH
    completions AS (
        SELECT
            tenant, root_task_id, task_id,
            min(event_time) AS completed_at,
            argMin(event_id, (event_time, event_id)) AS completed_event_id
        FROM events FINAL
        WHERE event_type = 'TASK_COMPLETED'
        GROUP BY tenant, root_task_id, task_id
    ),
    revocations AS (
        -- Nullable, so a token without a revocation reads NULL after the LEFT JOIN.
        SELECT tenant, root_task_id, token_id, toNullable(revoked_at) AS revoked_at,
            toNullable(revocation_event_id) AS revocation_event_id
        FROM token_revocations
    ),
    judged AS (
        SELECT
            t.tenant AS tenant, t.root_task_id AS root_task_id, t.task_id AS task_id,
            t.token_id AS token_id, t.token_subject AS token_subject,
            t.issued_event_id AS issued_event_id, t.expires_at AS expires_at,
            c.completed_at AS completed_at, c.completed_event_id AS completed_event_id,
            addSeconds(c.completed_at, {grace_seconds:UInt32}) AS deadline,
            r.revoked_at AS revoked_at, r.revocation_event_id AS revocation_event_id
        FROM token_issuances AS t
        INNER JOIN completions AS c USING (tenant, root_task_id, task_id)
        LEFT JOIN revocations AS r USING (tenant, root_task_id, token_id)
    )
SELECT
    substring(lower(hex(SHA256(concat(
        'UNREVOKED_TOKEN', char(31), tenant, char(31), root_task_id, char(31), token_id
    )))), 1, 32) AS alert_id,
    'UNREVOKED_TOKEN' AS alert_type,
    'HIGH' AS severity,
    tenant,
    root_task_id,
    task_id,
    token_id,
    token_subject AS workload_id,
    completed_at AS event_time,
    arraySort(arrayDistinct(arrayFilter(
        id -> id != '', [issued_event_id, completed_event_id, ifNull(revocation_event_id, '')]
    ))) AS evidence_event_ids,
    format(
        'task {} completed; token neither revoked nor expired within {}s',
        task_id, toString({grace_seconds:UInt32})
    ) AS detail,
    deadline,
    revoked_at,
    expires_at
FROM judged
WHERE deadline <= {as_of:DateTime64(6, 'UTC')}
    AND (revoked_at IS NULL OR revoked_at > deadline)
    AND expires_at > deadline
ORDER BY event_time, alert_id
