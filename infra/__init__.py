"""Deployment assets; the ClickHouse migrations ship with the installed package."""
