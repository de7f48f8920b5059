"""ClickHouse storage: targets, backends, migrations and the ingest sink's writers."""
