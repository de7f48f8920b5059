"""Configuration: environment, profiles and Kafka security settings."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from producers.settings import Settings


def test_defaults_follow_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("CUSTODY_")]:
        monkeypatch.delenv(name)
    settings = Settings()
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.kafka_common()["security.protocol"] == "PLAINTEXT"
    assert "session.timeout.ms" not in settings.kafka_consumer("g")


def test_environment_sets_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTODY_KAFKA_BOOTSTRAP", "kafka:9093")
    monkeypatch.setenv("CUSTODY_KAFKA_PROFILE", "development")
    monkeypatch.setenv("CUSTODY_TENANT", "acme")
    settings = Settings()
    consumer = settings.kafka_consumer("custody-correlate")
    assert consumer["bootstrap.servers"] == "kafka:9093"
    assert consumer["session.timeout.ms"] == 6000
    assert consumer["enable.auto.commit"] is False
    assert settings.tenant == "acme"
    override = Settings(kafka_session_timeout_ms=1500).kafka_consumer("g")
    assert override["session.timeout.ms"] == 1500


def test_sasl_and_tls_reach_every_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTODY_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("CUSTODY_KAFKA_SASL_USERNAME", "custody")
    monkeypatch.setenv("CUSTODY_KAFKA_SASL_PASSWORD", "from-the-vault")
    monkeypatch.setenv("CUSTODY_KAFKA_SSL_CA_LOCATION", "/etc/ssl/ca.pem")
    settings = Settings()
    for config in (
        settings.kafka_producer(),
        settings.kafka_consumer("g"),
        settings.kafka_admin(),
    ):
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.mechanism"] == "SCRAM-SHA-512"
        assert config["sasl.username"] == "custody"
        assert config["sasl.password"] == "from-the-vault"
        assert config["ssl.ca.location"] == "/etc/ssl/ca.pem"
    assert "from-the-vault" not in repr(settings)
    with_urls = Settings(
        schema_registry_url="https://sr:sr-pass@registry:8081",
        clickhouse_url="clickhouse://writer:ch-pass@ch:9000/custody",
    )
    assert "sr-pass" not in repr(with_urls)
    assert "ch-pass" not in repr(with_urls)


def test_producer_is_idempotent_and_bounded() -> None:
    config = Settings(producer_buffer_messages=500).kafka_producer()
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["queue.buffering.max.messages"] == 500


def test_incomplete_sasl_is_refused() -> None:
    with pytest.raises(ValidationError, match="kafka_sasl_username"):
        Settings(kafka_sasl_mechanism="PLAIN")
