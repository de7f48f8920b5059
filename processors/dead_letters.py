"""What every stage attaches to a record it sends to ``custody.dlq.v1``.

The record keeps its original key and bytes; the headers say why (a
:class:`~schemas.codec.DecodeError` reason code, or the sink's), which stage gave up on it
and where it came from, so it can be inspected and replayed.
"""

from __future__ import annotations

Headers = list[tuple[str, bytes]]


def dlq_headers(
    reason: str, detail: str, stage: str, topic: str, partition: int, offset: int
) -> Headers:
    """Headers of a dead letter; ``detail`` is cut to 1,000 bytes."""
    return [
        ("custody-dlq-reason", reason.encode()),
        ("custody-dlq-detail", detail.encode()[:1000]),
        ("custody-dlq-stage", stage.encode()),
        ("custody-source-topic", topic.encode()),
        ("custody-source-partition", str(partition).encode()),
        ("custody-source-offset", str(offset).encode()),
    ]
