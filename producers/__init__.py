"""The Custody publishing SDK: producer, custody-context propagation, event builders and
helpers for agents, policy engines and credential brokers."""

from producers.context import CustodyContext
from producers.events import Source
from producers.producer import (
    BackpressureTimeout,
    CustodyProducer,
    DeliveryError,
    DeliveryReport,
    PublishError,
    Stamp,
)
from producers.roles import AgentRecorder, CredentialBrokerRecorder, PolicyEngineRecorder
from producers.settings import Settings

__all__ = [
    "AgentRecorder",
    "BackpressureTimeout",
    "CredentialBrokerRecorder",
    "CustodyContext",
    "CustodyProducer",
    "DeliveryError",
    "DeliveryReport",
    "PolicyEngineRecorder",
    "PublishError",
    "Settings",
    "Source",
    "Stamp",
]
