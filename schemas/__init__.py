"""The Custody event contract: Avro schemas (the source of truth), pydantic models that
mirror them, and the Avro codec."""
