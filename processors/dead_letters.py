"""What every stage attaches to a record it sends to ``custody.dlq.v1``.

The record keeps its original key and bytes, but for secret-looking values (masked) and
what is too big for a record (cut); the headers say why (a
:class:`~schemas.codec.DecodeError` reason code, or the sink's), which stage gave up on it
and where it came from, so it can be inspected and replayed.
"""

from __future__ import annotations

import hashlib

from schemas.secrets import mask_secrets

Headers = list[tuple[str, bytes]]

# The largest original value a dead letter carries whole. Kafka clients refuse records
# over ~1 MB by default (aiokafka's max_request_size, librdkafka's message.max.bytes);
# a bigger record that the broker accepted anyway must not make the dead letter itself
# fail, which would crash the worker on that record at every restart.
MAX_DLQ_VALUE = 900_000


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


def dlq_key(key: bytes | None) -> bytes | None:
    """The key a dead letter carries: the original, secret-looking matches masked."""
    return mask_secrets(key)[0]


def dlq_value(value: bytes | None) -> tuple[bytes | None, Headers]:
    """The value a dead letter can carry, and headers saying how it differs from the
    original: the original bytes, with every secret-looking match overwritten by ``*`` of
    the same length (``custody-dlq-redacted``: the kinds; no secret may reach a topic
    Custody writes, and whoever replays the dead letter sees where one was), cut to their
    first :data:`MAX_DLQ_VALUE` bytes when larger, with the original's size
    (``custody-dlq-truncated``) and SHA-256 (``custody-dlq-original-sha256``, of the
    masked bytes: a hash of a short secret could be brute-forced)."""
    value, kinds = mask_secrets(value)
    headers: Headers = [("custody-dlq-redacted", ",".join(kinds).encode())] if kinds else []
    if value is None or len(value) <= MAX_DLQ_VALUE:
        return value, headers
    return value[:MAX_DLQ_VALUE], [
        *headers,
        ("custody-dlq-truncated", str(len(value)).encode()),
        ("custody-dlq-original-sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
