-- The facts of a token that the SQL twins of the correlator's token alerts
-- (dashboards/queries/*_tokens.sql) judge it by, as the correlator does: in each custody
-- tree (tenant, root_task_id), each event_id once (FINAL), a token's earliest
-- CREDENTIAL_ISSUED and its earliest CREDENTIAL_REVOKED, by (event_time, event_id).
-- Plain views: computed from `events` when read, with the reader's grants and row policies.

-- The earliest issuance of each token: later issuances of the token_id do not count.
CREATE VIEW IF NOT EXISTS token_issuances AS
SELECT
    tenant, root_task_id, token_id,
    argMin(task_id, (event_time, event_id)) AS task_id,
    argMin(decision_id, (event_time, event_id)) AS decision_id,
    argMin(event_id, (event_time, event_id)) AS issued_event_id,
    min(event_time) AS issued_event_time,
    argMin(token_subject, (event_time, event_id)) AS token_subject,
    argMin(scopes, (event_time, event_id)) AS token_scopes,
    argMin(expires_at, (event_time, event_id)) AS expires_at
FROM events FINAL
WHERE event_type = 'CREDENTIAL_ISSUED'
GROUP BY tenant, root_task_id, token_id;

-- The earliest revocation of each token, whatever its reason; it needs no issuance.
CREATE VIEW IF NOT EXISTS token_revocations AS
SELECT
    tenant, root_task_id, token_id,
    min(event_time) AS revoked_at,
    argMin(event_id, (event_time, event_id)) AS revocation_event_id,
    argMin(reason, (event_time, event_id)) AS revocation_reason
FROM events FINAL
WHERE event_type = 'CREDENTIAL_REVOKED'
GROUP BY tenant, root_task_id, token_id;
