"""The SQL of the auditor's report, one statement per section, each bounded by the tenant
and the period: ``{tenant:String}``, ``{start:String}`` and ``{end:String}`` (ISO times,
the period is ``[start, end)``). The report carries these texts, so a reader sees exactly
what was counted; the reader applies ``FINAL`` (each event, state row and alert once).

What belongs to the period: events, alerts and break-glass by their event time,
credentials by their issuance, delegations by their time, identities by the events they
emitted or the credentials issued to them.
"""

from __future__ import annotations

_EVENTS = """events
    WHERE tenant = {tenant:String}
      AND event_time >= parseDateTime64BestEffort({start:String}, 6, 'UTC')
      AND event_time < parseDateTime64BestEffort({end:String}, 6, 'UTC')"""
_END = "parseDateTime64BestEffort({end:String}, 6, 'UTC')"

COUNTS = f"""
SELECT
    count() AS events,
    uniqExact(root_task_id) AS trees,
    countIf(event_type = 'TASK_DECLARED') AS tasks,
    countIf(event_type = 'AUTHZ_DECISION') AS decisions,
    countIf(event_type = 'CREDENTIAL_ISSUED') AS credentials,
    countIf(event_type = 'ACCESS') AS accesses,
    countIf(event_type = 'ACCESS' AND decision_id IS NOT NULL) AS accesses_naming_a_decision,
    countIf(event_type = 'DELEGATION') AS delegations,
    countIf(event_type = 'APPROVAL') AS approvals,
    countIf(event_type = 'BREAK_GLASS') AS break_glass,
    countIf(event_type = 'CREDENTIAL_REVOKED' AND reason = 'ROTATED') AS rotations,
    uniqExact(actor_workload_id) AS acting_identities,
    uniqExact(producer_instance) AS producer_instances
FROM {_EVENTS}"""  # noqa: S608 (constant fragments; every value is a bound parameter)

ALERTS = """
SELECT alert_id, alert_type, severity, root_task_id, task_id, token_id, workload_id,
       event_time, evidence_event_ids, detail
FROM alerts
WHERE tenant = {tenant:String}
  AND event_time >= parseDateTime64BestEffort({start:String}, 6, 'UTC')
  AND event_time < parseDateTime64BestEffort({end:String}, 6, 'UTC')
ORDER BY event_time, alert_id"""

# A credential's lifetime: until its revocation if it came first, else until its expiry.
# "Revoked within the grace": at the latest grace seconds after its task completed.
CREDENTIALS = f"""
SELECT
    count() AS issued,
    countIf(c.state = 'REVOKED') AS revoked,
    countIf(c.state = 'REVOKED' AND t.completed_at IS NOT NULL
            AND c.revoked_at <= t.completed_at + toIntervalSecond({{grace:UInt32}}))
        AS revoked_within_grace,
    countIf(t.completed_at IS NOT NULL) AS of_completed_tasks,
    quantileExact(0.5)(lifetime) AS median_lifetime_seconds,
    max(lifetime) AS max_lifetime_seconds,
    countIf(lifetime > {{max_ttl:UInt32}}) AS long_lived,
    countIf(c.state = 'ACTIVE' AND c.expires_at > {_END}) AS live_at_end
FROM
(
    SELECT tenant, root_task_id, task_id, state, revoked_at, expires_at,
           dateDiff('second', issued_at,
                    if(revoked_at IS NOT NULL AND revoked_at < expires_at,
                       assumeNotNull(revoked_at), expires_at)) AS lifetime
    FROM credentials
    WHERE tenant = {{tenant:String}}
      AND issued_at >= parseDateTime64BestEffort({{start:String}}, 6, 'UTC')
      AND issued_at < {_END}
) AS c
LEFT JOIN (SELECT root_task_id, task_id, completed_at FROM tasks WHERE tenant = {{tenant:String}})
    AS t ON c.root_task_id = t.root_task_id AND c.task_id = t.task_id"""  # noqa: S608

# Each workload identity: what it did (events it emitted) and what it held (credentials
# issued to it), side by side.
INVENTORY = f"""
SELECT
    workload_id,
    anyIf(kind, kind != '') AS kind,
    arraySort(groupUniqArrayArray(humans)) AS humans,
    min(first_seen) AS first_seen,
    max(last_seen) AS last_seen,
    sum(credentials) AS credentials,
    max(longest_lifetime) AS longest_lifetime_seconds,
    sum(live) AS live_at_end,
    sum(never_revoked) AS never_revoked,
    arraySort(groupUniqArrayArray(granted)) AS scopes_granted,
    arraySort(groupUniqArrayArray(used)) AS scopes_used,
    sum(actions) AS actions
FROM
(
    SELECT actor_workload_id AS workload_id, any(actor_kind) AS kind,
           groupUniqArrayIf(assumeNotNull(actor_on_behalf_of), actor_on_behalf_of IS NOT NULL)
               AS humans,
           min(event_time) AS first_seen, max(event_time) AS last_seen,
           0 AS credentials, 0 AS longest_lifetime, 0 AS live, 0 AS never_revoked,
           CAST([], 'Array(String)') AS granted,
           groupUniqArrayArrayIf(data_scope, event_type = 'ACCESS') AS used,
           countIf(event_type = 'ACCESS') AS actions
    FROM {_EVENTS}
    GROUP BY actor_workload_id
    UNION ALL
    SELECT token_subject, '', CAST([], 'Array(String)'),
           min(issued_at), max(issued_at),
           count(),
           max(dateDiff('second', issued_at,
                        if(revoked_at IS NOT NULL AND revoked_at < expires_at,
                           assumeNotNull(revoked_at), expires_at))),
           countIf(state = 'ACTIVE' AND expires_at > {_END}),
           countIf(state != 'REVOKED'),
           groupUniqArrayArray(scopes), CAST([], 'Array(String)'), 0
    FROM credentials
    WHERE tenant = {{tenant:String}}
      AND issued_at >= parseDateTime64BestEffort({{start:String}}, 6, 'UTC')
      AND issued_at < {_END}
    GROUP BY token_subject
)
GROUP BY workload_id
ORDER BY workload_id"""  # noqa: S608

# The event type in PREWHERE: the few break-glass and approval events are picked before
# the rest of the tenant's events are read (and collapsed by FINAL); a replayed event is
# the same row, so filtering first keeps each event once all the same.
BREAK_GLASS = f"""
SELECT b.break_glass_id AS break_glass_id, b.root_task_id AS root_task_id,
       b.task_id AS task_id, b.actor_workload_id AS workload_id,
       b.actor_on_behalf_of AS on_behalf_of, b.event_time AS event_time,
       b.reason AS reason, b.standing_access_unavailable AS standing_access_unavailable,
       b.approval_id AS approval_id, a.approver AS approver, b.expires_at AS expires_at
FROM
(
    SELECT break_glass_id, root_task_id, task_id, actor_workload_id, actor_on_behalf_of,
           event_time, reason, standing_access_unavailable, approval_id, expires_at
    FROM events PREWHERE event_type = 'BREAK_GLASS'
    WHERE tenant = {{tenant:String}}
      AND event_time >= parseDateTime64BestEffort({{start:String}}, 6, 'UTC')
      AND event_time < {_END}
) AS b
LEFT JOIN
(
    SELECT root_task_id, approval_id, any(approver) AS approver
    FROM events PREWHERE event_type = 'APPROVAL'
    WHERE tenant = {{tenant:String}}
    GROUP BY root_task_id, approval_id
) AS a ON b.root_task_id = a.root_task_id AND b.approval_id = a.approval_id
ORDER BY b.event_time, b.break_glass_id"""  # noqa: S608

_DELEGATIONS = """
(
    SELECT d.root_task_id AS root_task_id, d.child_task_id AS child_task_id,
           d.delegator AS delegator, d.delegatee AS delegatee, d.scopes AS scopes,
           d.decision_id AS decision_id,
           -- The delegatee's task depth; NULL when no task row names it (never declared).
           if(t.task_id = '', NULL, t.depth) AS depth
    FROM
    (
        SELECT * FROM delegations
        WHERE tenant = {tenant:String}
          AND delegated_at >= parseDateTime64BestEffort({start:String}, 6, 'UTC')
          AND delegated_at < parseDateTime64BestEffort({end:String}, 6, 'UTC')
    ) AS d
    LEFT JOIN (SELECT root_task_id, task_id, depth FROM tasks WHERE tenant = {tenant:String})
        AS t ON d.root_task_id = t.root_task_id AND d.child_task_id = t.task_id
)"""

# How deep delegation went and how much it handed on: counts by depth of the delegatee's
# task, and the delegations that granted the most scopes.
DELEGATIONS = f"""
SELECT depth, count() AS delegations, countIf(decision_id != '') AS with_decision,
       max(length(scopes)) AS widest
FROM {_DELEGATIONS}
GROUP BY depth
ORDER BY depth NULLS LAST"""  # noqa: S608

WIDEST_DELEGATIONS = f"""
SELECT root_task_id, child_task_id, delegator, delegatee, scopes, depth
FROM {_DELEGATIONS}
ORDER BY length(scopes) DESC, root_task_id, child_task_id
LIMIT 10"""  # noqa: S608

# Each producer instance's part of the period: its events are numbered seq = 1, 2, ... and
# each names the hash of the one before; the ends of the run and its count commit to it.
CHAINS = f"""
SELECT producer_instance,
       count() AS events,
       min(seq) AS first_seq,
       max(seq) AS last_seq,
       uniqExact(seq) AS distinct_seqs,
       argMin(ifNull(prev_hash, ''), seq) AS first_prev_hash,
       argMax(ifNull(prev_hash, ''), seq) AS last_prev_hash,
       argMax(event_id, seq) AS last_event_id
FROM {_EVENTS}
GROUP BY producer_instance
ORDER BY producer_instance"""  # noqa: S608

SECTIONS = {
    "counts": COUNTS,
    "alerts": ALERTS,
    "credentials": CREDENTIALS,
    "inventory": INVENTORY,
    "break_glass": BREAK_GLASS,
    "delegations": DELEGATIONS,
    "widest_delegations": WIDEST_DELEGATIONS,
    "chains": CHAINS,
}
