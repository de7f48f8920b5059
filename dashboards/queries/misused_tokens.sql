-- Misused tokens: the four alerts the correlator raises on an ACCESS event, one row per
-- (alert_type, access event):
--   TOKEN_USED_AFTER_REVOCATION  the access is after the token's revocation;
--   TOKEN_USED_AFTER_EXPIRY      the access is after the token's expiry (its expires_at,
--                                moved later by any CREDENTIAL_RENEWED of it);
--   SHARED_CREDENTIAL            the access's actor is neither the token's subject
--                                workload nor the instance it was issued to;
--   SCOPE_ESCALATION             the access touches data_scope outside the token's scopes
--                                (the access form only; the delegation form of this alert,
--                                a delegation granting scopes its task did not hold, is not
--                                computed here and has no token_id).
-- The SQL twin of processors/correlation/engine.py, _check_access_against_token and
-- _check_access_after_revocation, computed from the raw `events` table alone: directly,
-- and through the views token_issuances and token_revocations (migrations 0006 and 0008),
-- the earliest issuance, its expiry as renewed, and the earliest revocation of each token
-- that all the token twins judge by.
--
-- Parameters
--   {as_of:DateTime64(6, 'UTC')}  accesses with event_time at or before as_of
--                                 ('YYYY-MM-DD hh:mm:ss[.ffffff]', UTC).
--   {grace_seconds:UInt32}        the correlator's grace period, in seconds. Only
--                                 TOKEN_USED_AFTER_EXPIRY waits for it: a renewal may still
--                                 come, so an access after the known expiry is reported
--                                 once access event_time + grace is at or before as_of.
--                                 The other three hold between two facts, with no deadline.
--
-- Run it with clickhouse-client:
--   clickhouse-client --database custody --param_as_of='2026-11-29 10:00:00' \
--       --param_grace_seconds=60 --queries-file dashboards/queries/misused_tokens.sql
-- or with the CLI:
--   custody query @dashboards/queries/misused_tokens.sql --param as_of='2026-11-29 10:00:00' --param grace_seconds=60
-- or through the query API of `custody serve`: POST /query with
--   {"sql": <this file>, "params": {"as_of": "2026-11-29 10:00:00", "grace_seconds": 60}}
--
-- Result: one row per alert, with the columns of the `alerts` table (without detected_at)
-- plus the access event. alert_id is the streaming alert's id (its subject is the access
-- event), so the result can be matched against `alerts` row for row.
--
-- How it is judged (as the correlator does):
--   * one custody tree (tenant, root_task_id) at a time; each event_id once (FINAL);
--     an access joins the token and revocation of the same token_id in its tree;
--   * the token is its earliest CREDENTIAL_ISSUED in the tree, by (event_time, event_id):
--     its token_subject, scopes and expires_at; later issuances of the token_id do not
--     count. Without an issuance, only the revocation check applies;
--   * the revocation is the token's earliest CREDENTIAL_REVOKED in the tree, by
--     (event_time, event_id), whatever its reason; it needs no issuance;
--   * after revocation: access event_time > revocation event_time (strictly: an access at
--     the revocation's instant is not reported);
--   * after expiry: access event_time > expires_at (strictly), where expires_at is the
--     latest of the issuance's and of every renewal's in the tree (a renewal never
--     shortens it), judged once access event_time + grace <= as_of; the renewal that set
--     the expiry, if one did, is evidence too;
--   * shared: token_subject differs from both the access's actor_workload_id and its
--     actor_instance_id (a token issued to an instance id is not shared when that
--     instance uses it);
--   * scope escalation: some element of the access's data_scope is not in the token's
--     scopes (an empty data_scope never is);
--   * the access outcome does not matter (a DENIED access is still a use);
--   * task_id and workload_id are the access's; alert event_time = the access's
--     event_time; evidence = the access and the token's issuance, or for
--     TOKEN_USED_AFTER_REVOCATION the access and the revocation;
--   * the issuance is taken whatever its event time (also after as_of, or after the
--     access), as the correlator checks an access against any issuance it receives.
--
-- Differences from the streaming rule
--   * as_of bounds the access time: the correlator raises three of these alerts as soon
--     as both events have arrived, whatever its watermark, so at a given watermark it may
--     already have alerted on accesses up to the allowed lateness beyond it. With as_of
--     at or after the last access, this difference vanishes. TOKEN_USED_AFTER_EXPIRY is
--     decided at the watermark, as here.
--   * The correlator checks an access against the issuance and revocation it knows at the
--     time; if an earlier issuance or revocation of the same token_id arrives out of order
--     afterwards, it checks again, but an alert already raised stays. So with two
--     issuances of one token_id arriving latest first, it can hold an alert judged
--     against the later issuance that this query, judging against the earliest only,
--     does not report; and the evidence of TOKEN_USED_AFTER_REVOCATION can name a later
--     revocation than the earliest one named here.
--   * The correlator forgets accesses older than its watermark less the grace period, so
--     an issuance or revocation arriving later than that (beyond the allowed lateness)
--     is not checked against them there; this query still checks them.
--   * The correlator keys a tree by root_task_id alone (tenant taken from its first
--     event); this query by (tenant, root_task_id). Equal unless two tenants share a
--     root_task_id.
WITH
    accesses AS (
        SELECT
            tenant, root_task_id, task_id, token_id,
            event_id AS access_event_id,
            event_time AS accessed_at,
            actor_workload_id, actor_instance_id, data_scope
        FROM events FINAL
        WHERE event_type = 'ACCESS' AND event_time <= {as_of:DateTime64(6, 'UTC')}
    ),
    used AS (
        -- Each access whose token was issued in its tree, with that issuance.
        SELECT
            a.*, t.issued_event_id AS issued_event_id, t.token_subject AS token_subject,
            t.token_scopes AS token_scopes, t.expires_at AS expires_at,
            t.renewal_event_id AS renewal_event_id
        FROM accesses AS a
        INNER JOIN token_issuances AS t USING (tenant, root_task_id, token_id)
    ),
    findings AS (
        SELECT
            'TOKEN_USED_AFTER_REVOCATION' AS alert_type, 'CRITICAL' AS severity,
            a.tenant AS tenant, a.root_task_id AS root_task_id, a.task_id AS task_id,
            a.token_id AS token_id, a.actor_workload_id AS workload_id,
            a.accessed_at AS event_time, a.access_event_id AS access_event_id,
            [a.access_event_id, r.revocation_event_id] AS evidence,
            format('used {}s after revocation ({})',
                   toString(dateDiff('second', r.revoked_at, a.accessed_at)),
                   ifNull(r.revocation_reason, '')) AS detail
        FROM accesses AS a
        INNER JOIN token_revocations AS r USING (tenant, root_task_id, token_id)
        WHERE a.accessed_at > r.revoked_at

        UNION ALL

        -- The three checks of an access against its token's issuance, one row per check
        -- it fails: each rule is (alert type, whether the access breaks it, detail,
        -- evidence besides the access and the issuance).
        SELECT
            rule.1, 'HIGH',
            tenant, root_task_id, task_id, token_id, actor_workload_id, accessed_at,
            access_event_id, arrayConcat([access_event_id, issued_event_id], rule.4), rule.3
        FROM used
        ARRAY JOIN [
            ('TOKEN_USED_AFTER_EXPIRY',
             accessed_at > expires_at
                AND addSeconds(accessed_at, {grace_seconds:UInt32}) <= {as_of:DateTime64(6, 'UTC')},
             concat(format('used {}s after it expired',
                           toString(dateDiff('second', expires_at, accessed_at))),
                    if(renewal_event_id IS NULL, '', ' (as renewed)')),
             if(renewal_event_id IS NULL, [], [assumeNotNull(renewal_event_id)])),
            ('SHARED_CREDENTIAL',
             token_subject != actor_workload_id AND token_subject != actor_instance_id,
             format('issued to {}, used by {} ({})',
                    token_subject, actor_workload_id, actor_instance_id),
             []),
            ('SCOPE_ESCALATION',
             NOT hasAll(token_scopes, data_scope),
             format('access touched {} outside the token''s scopes',
                    arrayStringConcat(
                        arraySort(arrayDistinct(
                            arrayFilter(s -> NOT has(token_scopes, s), data_scope))),
                        ', ')),
             [])
        ] AS rule
        WHERE rule.2
    )
SELECT
    substring(lower(hex(SHA256(concat(
        alert_type, char(31), tenant, char(31), root_task_id, char(31), access_event_id
    )))), 1, 32) AS alert_id,
    alert_type,
    severity,
    tenant,
    root_task_id,
    task_id,
    token_id,
    workload_id,
    event_time,
    arraySort(arrayDistinct(evidence)) AS evidence_event_ids,
    detail,
    access_event_id
FROM findings
ORDER BY event_time, alert_type, alert_id
