"""Versioned ClickHouse migrations, applied in order by ``custody migrate``."""
