"""The Custody publishing SDK: producer, custody-context propagation, event builders and
helpers for agents, policy engines and credential brokers, blocking or asyncio.

It needs only what publishing needs (``pip install custody``); the pipeline's processors,
the local stack and the ``custody`` command come with extras.
"""

from producers.aio import (
    AsyncAgentRecorder,
    AsyncCredentialBrokerRecorder,
    AsyncCustodyProducer,
    AsyncPolicyEngineRecorder,
)
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
from producers.scopes import (
    AsyncElevation,
    AsyncRotation,
    AsyncTaskScope,
    Elevation,
    Rotation,
    ScopeError,
    TaskScope,
)
from producers.settings import Settings

__all__ = [
    "AgentRecorder",
    "AsyncAgentRecorder",
    "AsyncCredentialBrokerRecorder",
    "AsyncCustodyProducer",
    "AsyncElevation",
    "AsyncPolicyEngineRecorder",
    "AsyncRotation",
    "AsyncTaskScope",
    "BackpressureTimeout",
    "CredentialBrokerRecorder",
    "CustodyContext",
    "CustodyProducer",
    "DeliveryError",
    "DeliveryReport",
    "Elevation",
    "PolicyEngineRecorder",
    "PublishError",
    "Rotation",
    "ScopeError",
    "Settings",
    "Source",
    "Stamp",
    "TaskScope",
]
