-- Alerts from custody.alerts.v1. alert_id is deterministic, so a re-sent alert is the
-- same row; readers use FINAL.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id String,
    alert_type LowCardinality(String),
    severity LowCardinality(String),
    tenant LowCardinality(String),
    root_task_id String,
    task_id Nullable(String),
    token_id Nullable(String),
    workload_id Nullable(String),
    event_time DateTime64(6, 'UTC'),
    detected_at DateTime64(6, 'UTC'),
    evidence_event_ids Array(String),
    detail String,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, root_task_id, alert_id)
TTL toDateTime(event_time) + INTERVAL {{retention_days}} DAY
-- Small granules: a custody tree is a few dozen rows, read by key.
SETTINGS index_granularity = 1024;

CREATE TABLE IF NOT EXISTS alerts_avro
(
    alert_id String,
    alert_type String,
    severity String,
    tenant String,
    root_task_id String,
    task_id Nullable(String),
    token_id Nullable(String),
    workload_id Nullable(String),
    event_time DateTime64(6, 'UTC'),
    detected_at DateTime64(6, 'UTC'),
    evidence_event_ids Array(String),
    detail String
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS alerts_avro_mv TO alerts AS
SELECT
    alert_id, alert_type, severity, tenant, root_task_id, task_id, token_id, workload_id,
    event_time, detected_at, evidence_event_ids, detail
FROM alerts_avro;
