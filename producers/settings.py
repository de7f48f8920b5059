"""Configuration of every Custody process, in one place: environment variables
(``CUSTODY_*``) overridden by command-line flags.

Kafka security settings (SASL, TLS) are applied to every Kafka client the project makes
through :meth:`Settings.kafka_common`. Client settings that differ between a laptop and
production (group session timeouts) come from a *profile*: ``development`` uses short
timeouts so a consumer-group join on the local broker takes about 3 s instead of 23 s
(measured on the local Tansu); ``production`` keeps librdkafka's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import topics

KafkaProfile = Literal["development", "production"]

_PROFILES: dict[str, dict[str, Any]] = {
    "development": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    "production": {},
}


class Settings(BaseSettings):
    """All settings; each field is also the environment variable ``CUSTODY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CUSTODY_", extra="ignore", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_profile: KafkaProfile = "production"
    kafka_session_timeout_ms: int | None = Field(
        None, description="Overrides the profile's consumer-group session timeout."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = (
        Field(None, description="Derived from the SASL/TLS settings when unset.")
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: Path | None = None
    kafka_ssl_certificate_location: Path | None = None
    kafka_ssl_key_location: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None

    # URLs may carry credentials (user:password@host), so they are kept out of reprs.
    schema_registry_url: SecretStr | None = None
    clickhouse_url: SecretStr | None = Field(
        None,
        description="chdb://PATH or clickhouse://user:password@host:port/db; "
        "default: the embedded engine under the stack's home (chdb://.custody/chdb).",
    )
    # Least privilege (processors/storage/migrations.py): with a password set, `custody
    # migrate` keeps that user on a server with SQL access control; only its SHA-256 is sent.
    clickhouse_writer_user: str = Field(
        "custody_ingest", description="The ClickHouse user for ingest (role custody_writer)."
    )
    clickhouse_writer_password: SecretStr | None = None
    clickhouse_analyst_user: str = Field(
        "custody_reader",
        description="The ClickHouse user for query/serve (role custody_analyst).",
    )
    clickhouse_analyst_password: SecretStr | None = None
    tenant: str = "default"
    home: Path = Field(Path(".custody"), description="Local stack state and logs.")

    event_partitions: int = Field(6, ge=1, description="Partitions of custody.events.v1.")
    topic_replication: int = Field(1, ge=1)

    producer_buffer_messages: int = Field(
        100_000, ge=1, description="Bounded in-memory buffer of the SDK producer."
    )
    producer_buffer_timeout_seconds: float = Field(
        30.0, gt=0, description="How long publish() waits for buffer space before raising."
    )
    producer_delivery_timeout_ms: int = Field(
        30_000, ge=1000, description="How long an event may wait for the broker's ack."
    )

    grace_seconds: float = Field(
        300, ge=0, description="How long a missing piece of a custody tree is waited for."
    )
    allowed_lateness_seconds: float = Field(
        30, ge=0, description="How far behind the newest event time an event may arrive."
    )
    max_credential_ttl_seconds: float = Field(
        86_400, gt=0, description="Longest credential lifetime before LONG_LIVED_CREDENTIAL."
    )
    idle_advance: bool = Field(
        True, description="Advance an idle partition's watermark with the wall clock."
    )
    tree_retention_seconds: float = Field(
        86_400,
        gt=0,
        description="How long a custody tree is kept once the watermark has passed its last "
        "event and deadlines; then it is retired (processors/correlation/retention.py).",
    )
    chain_retention_seconds: float = Field(
        7 * 86_400,
        gt=0,
        description="How long a silent producer instance's chain is kept before it is retired.",
    )

    retention_days: int = Field(
        400,
        ge=1,
        # Event times are kept before 2100 (migration 0005); their TTL must stay before
        # 2106, where ClickHouse's DateTime ends.
        le=2000,
        description="ClickHouse TTL of stored events, state and alerts (days).",
    )
    ingest_batch_rows: int = Field(
        10_000, ge=1, description="ingest writes a batch once it holds this many records..."
    )
    ingest_batch_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="...or bytes...")
    ingest_batch_seconds: float = Field(
        1.0, gt=0, description="...or once its first record has waited this long."
    )
    ingest_group: str = Field(
        "custody-ingest", description="ingest's consumer group (a new one replays the topics)."
    )
    ingest_retry_max_seconds: float = Field(
        30.0, gt=0, description="Longest pause between retries while ClickHouse is down."
    )
    serve_host: str = Field("127.0.0.1", description="Where the query API listens.")
    serve_port: int = Field(8470, ge=0, le=65535)
    serve_hostnames: str = Field(
        "",
        description="Comma-separated host names, besides localhost and serve_host, that "
        "the API and explorer answer to (Host header check against DNS rebinding).",
    )

    # Prometheus metrics (HOST:PORT; port 0: the system's choice). On the local stack each
    # process gets a free port, shown by `custody status --json` under "metrics".
    correlator_metrics_address: str | None = Field(
        None,
        description="A correlator's /metrics; worker k of a local stack gets port + k - 1 "
        "(unset: 127.0.0.1:9464, and free ports on the local stack).",
    )
    ingest_metrics_address: str = Field("127.0.0.1:9470", description="ingest's /metrics.")
    serve_metrics_address: str = Field(
        "127.0.0.1:9471", description="serve's /metrics (ingest --serve: on ingest's)."
    )
    notify_metrics_address: str = Field("127.0.0.1:9472", description="notify's /metrics.")

    # URLs may carry credentials (user:password@host): kept out of reprs.
    alertmanager_url: SecretStr | None = Field(
        None,
        description="Alertmanager's base URL (http://host:9093); set, `custody up` runs notify.",
    )
    explorer_url: str | None = Field(
        None,
        description="The explorer's URL in notifications (default: the query API's address).",
    )
    runbook_url: str | None = Field(
        None,
        description="The alert reference linked from notifications, '#<alert type>' appended "
        "(default: the query API's /runbook page).",
    )
    notify_group: str = Field("custody-notify", description="notify's consumer group.")
    notify_batch_alerts: int = Field(
        100, ge=1, description="notify posts a batch once it holds this many alerts..."
    )
    notify_batch_seconds: float = Field(
        0.2, gt=0, description="...or once its first alert has waited this long."
    )
    notify_retry_max_seconds: float = Field(
        30.0, gt=0, description="Longest pause between retries while Alertmanager is away."
    )
    notify_timeout_seconds: float = Field(
        10.0, gt=0, description="How long one post to Alertmanager may take."
    )
    notify_resend_seconds: float = Field(
        60.0,
        gt=0,
        description="How often notify posts again the alerts of the resend window: "
        "Alertmanager keeps alerts in memory, so one restarted before it notified them "
        "learns them again (as Prometheus does with its own alerts).",
    )
    notify_resend_window_seconds: float = Field(
        900.0, ge=0, description="How long after its first post an alert is posted again."
    )
    alert_firing_seconds: float = Field(
        7 * 86_400,
        gt=0,
        description="How long an alert stays firing in Alertmanager after it is posted "
        "(Custody alerts are facts: none resolves by itself; docs/alerts.md).",
    )

    collect_address: str = Field(
        "127.0.0.1:8471", description="HOST:PORT of custody collect's HTTP service."
    )
    collect_vault_address: str | None = Field(
        None,
        description="HOST:PORT where custody collect takes Vault's socket audit device "
        "(unset: not listened on).",
    )
    collect_metrics_address: str = Field("127.0.0.1:9473", description="collect's /metrics.")
    collect_max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="The largest upload collect takes, compressed and uncompressed (413 above).",
    )
    collect_ack_timeout_seconds: float = Field(
        30.0, gt=0, description="How long an upload waits for Kafka's acks before a 503."
    )
    collect_mapping: Path | None = Field(
        None, description="YAML file overriding the OPA and Vault mapping defaults."
    )
    collect_tokens_file: Path | None = Field(
        None,
        description="Where the hashes of collect tokens are kept "
        "(default: <home>/collect-tokens.json).",
    )

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.kafka_sasl_mechanism and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError("kafka_sasl_mechanism needs kafka_sasl_username and _password")
        return self

    def security_protocol(self) -> str:
        if self.kafka_security_protocol:
            return self.kafka_security_protocol
        tls = self.kafka_ssl_ca_location or self.kafka_ssl_certificate_location
        if self.kafka_sasl_mechanism:
            return "SASL_SSL" if tls else "SASL_PLAINTEXT"
        return "SSL" if tls else "PLAINTEXT"

    def kafka_common(self) -> dict[str, Any]:
        """librdkafka settings shared by every client: bootstrap and security."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.security_protocol(),
        }
        if self.kafka_sasl_mechanism:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username
            # Set whenever the mechanism is (_sasl_complete).
            password = cast(SecretStr, self.kafka_sasl_password)
            config["sasl.password"] = password.get_secret_value()
        for key, path in (
            ("ssl.ca.location", self.kafka_ssl_ca_location),
            ("ssl.certificate.location", self.kafka_ssl_certificate_location),
            ("ssl.key.location", self.kafka_ssl_key_location),
        ):
            if path is not None:
                config[key] = str(path)
        if self.kafka_ssl_key_password is not None:
            config["ssl.key.password"] = self.kafka_ssl_key_password.get_secret_value()
        return config

    def kafka_producer(self) -> dict[str, Any]:
        """Settings of the SDK producer: idempotent, acks from all replicas, lz4, bounded."""
        return {
            **self.kafka_common(),
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": self.producer_buffer_messages,
            "message.timeout.ms": self.producer_delivery_timeout_ms,
        }

    def kafka_consumer(self, group_id: str) -> dict[str, Any]:
        """Settings of a consumer in ``group_id``: manual commits, from the earliest offset."""
        config = {
            **self.kafka_common(),
            **_PROFILES[self.kafka_profile],
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
        if self.kafka_session_timeout_ms is not None:
            config["session.timeout.ms"] = self.kafka_session_timeout_ms
            config["heartbeat.interval.ms"] = max(100, self.kafka_session_timeout_ms // 6)
        return config

    def clickhouse(self) -> str:
        """The ClickHouse URL in effect (it may hold a password: never log it)."""
        if self.clickhouse_url is not None:
            return self.clickhouse_url.get_secret_value()
        return f"chdb://{self.home / 'chdb'}"

    def kafka_admin(self) -> dict[str, Any]:
        return self.kafka_common()

    def event_topic_partitions(self) -> dict[str, int]:
        """Every contract topic with its partition count (all follow the event topic)."""
        return dict.fromkeys(topics.ALL, self.event_partitions)
