"""The pipeline roles (correlate, ingest, serve), the local stack and the custody CLI."""
