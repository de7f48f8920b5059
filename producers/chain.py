"""The per-producer-instance hash chain: ``seq`` numbers events from 1 and ``prev_hash`` is
the SHA-256 (lowercase hex) of the previous event's Avro binary body. A gap in ``seq`` or a
``prev_hash`` that does not match shows missing or altered evidence.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def body_hash(body: bytes) -> str:
    """The chain hash of an encoded event body (the bytes after the wire header)."""
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class Link:
    """The chain fields the next event must carry."""

    seq: int
    prev_hash: str | None


class HashChain:
    """The chain state of one producer instance.

    Not locked itself: the caller holds one lock across :meth:`next_link`, encoding,
    handing the event to Kafka and :meth:`advance`, so that an event refused before it
    was accepted leaves no hole in the chain.
    """

    def __init__(self, last_seq: int = 0, last_hash: str | None = None) -> None:
        self._last_seq = last_seq
        self._last_hash = last_hash

    def next_link(self) -> Link:
        return Link(self._last_seq + 1, self._last_hash)

    def advance(self, seq: int, body: bytes) -> None:
        """Record that the event numbered ``seq`` with this encoded body was accepted."""
        self._last_seq = seq
        self._last_hash = body_hash(body)

    @property
    def last_seq(self) -> int:
        return self._last_seq
