-- ORPHANED_TOKEN: tokens issued for a task that was not declared, or under a decision_id
-- that has no ALLOW decision, within the grace period after the issuance.
-- The SQL twin of the streaming rule (processors/correlation/engine.py, _deadline_orphaned),
-- computed from the raw `events` table alone: directly, and through the view
-- token_issuances (migration 0006), the earliest issuance of each token.
--
-- Parameters
--   {grace_seconds:UInt32}        the correlator's grace period, in seconds.
--   {as_of:DateTime64(6, 'UTC')}  the event time the data is judged at, like the
--                                 correlator's watermark ('YYYY-MM-DD hh:mm:ss[.ffffff]',
--                                 UTC). A token is reported only once its deadline
--                                 (issuance event_time + grace) is at or before as_of.
--
-- Run it with clickhouse-client:
--   clickhouse-client --database custody --param_grace_seconds=60 \
--       --param_as_of='2026-11-29 10:00:00' --queries-file dashboards/queries/orphaned_tokens.sql
-- or with the CLI:
--   custody query @dashboards/queries/orphaned_tokens.sql --param grace_seconds=60 --param as_of='2026-11-29 10:00:00'
-- or through the query API of `custody serve`: POST /query with
--   {"sql": <this file>, "params": {"grace_seconds": 60, "as_of": "2026-11-29 10:00:00"}}
-- For a Grafana alert rule, as_of is now() less the correlator's allowed lateness (its
-- watermark).
--
-- Result: one row per alert, with the columns of the `alerts` table (without detected_at)
-- plus the deadline and which of the two conditions failed. alert_id is the streaming
-- alert's id, so the result can be matched against `alerts` row for row.
--
-- How it is judged (as the correlator does):
--   * one custody tree (tenant, root_task_id) at a time; each event_id once (FINAL);
--   * the token is its earliest CREDENTIAL_ISSUED in the tree, by (event_time, event_id);
--     its task and decision_id are that event's;
--   * deadline = the issuance's event_time + grace (event time, not the body's issued_at);
--   * "declared": the task's earliest TASK_DECLARED in the tree has event_time <= deadline;
--   * "allowed": the earliest AUTHZ_DECISION in the tree with that decision_id, by
--     (event_time, event_id), from any task of the tree, is an ALLOW with event_time <=
--     deadline. Only the earliest decision counts: a DENY followed by an ALLOW under the
--     same decision_id is not allowed;
--   * reported when not declared, or not allowed, or both;
--   * alert event_time = the issuance's event_time; evidence = the issuance, plus the
--     decision event when there is one and it is why the token is orphaned.
--
-- Differences from the streaming rule
--   * The correlator decides once, when its watermark passes the deadline, with the events
--     it has received by then; this query uses every stored event. They differ only when
--     an event arrives later than the allowed lateness: a declaration or decision stored
--     after the correlator decided is not seen by it (alert in `alerts`, none here).
--   * The correlator keys a tree by root_task_id alone (tenant taken from its first
--     event); this query by (tenant, root_task_id). Equal unless two tenants share a
--     root_task_id.
WITH
    declarations AS (
        -- Nullable, so an undeclared task reads NULL after the LEFT JOIN.
        SELECT tenant, root_task_id, task_id, toNullable(min(event_time)) AS declared_at
        FROM events FINAL
        WHERE event_type = 'TASK_DECLARED'
        GROUP BY tenant, root_task_id, task_id
    ),
    decisions AS (
        SELECT
            tenant, root_task_id, decision_id,
            toNullable(min(event_time)) AS decided_at,
            toNullable(argMin(event_id, (event_time, event_id))) AS decision_event_id,
            toNullable(argMin(decision, (event_time, event_id))) AS decision
        FROM events FINAL
        WHERE event_type = 'AUTHZ_DECISION'
        GROUP BY tenant, root_task_id, decision_id
    ),
    judged AS (
        SELECT
            t.tenant AS tenant, t.root_task_id AS root_task_id, t.task_id AS task_id,
            t.token_id AS token_id, t.token_subject AS token_subject,
            t.decision_id AS decision_id, t.issued_event_id AS issued_event_id,
            t.issued_event_time AS issued_event_time,
            addSeconds(t.issued_event_time, {grace_seconds:UInt32}) AS deadline,
            ifNull(d.declared_at <= deadline, false) AS declared_in_time,
            ifNull(x.decision = 'ALLOW' AND x.decided_at <= deadline, false)
                AS allowed_in_time,
            x.decision_event_id AS decision_event_id
        FROM token_issuances AS t
        LEFT JOIN declarations AS d USING (tenant, root_task_id, task_id)
        LEFT JOIN decisions AS x USING (tenant, root_task_id, decision_id)
    )
SELECT
    substring(lower(hex(SHA256(concat(
        'ORPHANED_TOKEN', char(31), tenant, char(31), root_task_id, char(31), token_id
    )))), 1, 32) AS alert_id,
    'ORPHANED_TOKEN' AS alert_type,
    'HIGH' AS severity,
    tenant,
    root_task_id,
    task_id,
    token_id,
    token_subject AS workload_id,
    issued_event_time AS event_time,
    arraySort(arrayFilter(
        id -> id != '',
        [issued_event_id, if(allowed_in_time, '', ifNull(decision_event_id, ''))]
    )) AS evidence_event_ids,
    arrayStringConcat(arrayFilter(reason -> reason != '', [
        if(declared_in_time, '',
           format('task {} was not declared within the grace period', task_id)),
        if(allowed_in_time, '',
           format('decision {} is not an ALLOW within the grace period', decision_id))
    ]), '; ') AS detail,
    deadline,
    declared_in_time,
    allowed_in_time
FROM judged
WHERE deadline <= {as_of:DateTime64(6, 'UTC')}
    AND NOT (declared_in_time AND allowed_in_time)
ORDER BY event_time, alert_id
