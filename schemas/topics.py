"""Topic names of the contract. The ``v1`` suffix changes only with an incompatible contract."""

EVENTS = "custody.events.v1"
ALERTS = "custody.alerts.v1"
STATE = "custody.state.v1"
DLQ = "custody.dlq.v1"

ALL = (EVENTS, ALERTS, STATE, DLQ)


def value_subject(topic: str) -> str:
    """Schema Registry subject of a topic's values (TopicNameStrategy)."""
    return f"{topic}-value"
