-- Event times ClickHouse can keep. DateTime64 holds ticks far beyond 2106, but the TTL
-- expression (toDateTime, 32 bits) overflows there: such a row was computed as expired
-- at once and vanished at the next merge, though ingest had stored it. A time outside
-- [1970-01-02, 2100-01-01) is refused at insert instead (VIOLATED_CONSTRAINT, a data
-- error): ingest isolates the record and dead-letters it. 2100 leaves room for the
-- retention (CUSTODY_RETENTION_DAYS is at most 2000) before 2106.
ALTER TABLE events ADD CONSTRAINT IF NOT EXISTS event_time_storable CHECK
    event_time >= toDateTime64('1970-01-02 00:00:00', 6, 'UTC')
    AND event_time < toDateTime64('2100-01-01 00:00:00', 6, 'UTC');

ALTER TABLE alerts ADD CONSTRAINT IF NOT EXISTS event_time_storable CHECK
    event_time >= toDateTime64('1970-01-02 00:00:00', 6, 'UTC')
    AND event_time < toDateTime64('2100-01-01 00:00:00', 6, 'UTC');
