"""The bytes the correlator keeps in its tables: keys and values, no faust.

A tree is stored under :func:`tree_key`, a producer instance's chain prefix under the
instance, each of its pending links under :func:`pending_key`, each chunk of retired keys
under :func:`retired_key`. Every value is
:func:`stored_form`: the partition the state belongs to, a newline, and the state's JSON
(compressed when long).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable

from processors.correlation.tree import TreeState

# A state's JSON longer than this is stored zlib-compressed. A tree's state grows with its
# tasks, tokens and scopes (a 1,000-level delegation chain is ~420 KB of JSON), and a
# changelog record over the Kafka client's 1 MB limit would fail to send and crash the
# worker on every restart; compressed, the same tree is a tenth of that.
_COMPRESS_OVER = 4096
# zlib's first byte at any level; a state's JSON starts with "{".
_ZLIB = b"\x78"


def tree_key(tenant: str, root_task_id: str) -> str:
    """The key of a custody tree in the worker and its table: a root task id is unique
    within its tenant only, and two tenants' trees must never share state."""
    return json.dumps([tenant, root_task_id], separators=(",", ":"))


def load_tree(
    load: Callable[[str], bytes | None], key: str, tenant: str, root_task_id: str
) -> TreeState | None:
    """A stored tree, by its key (``load`` returns a key's state JSON); a table written
    before trees were keyed by tenant holds it under the root task id alone, which counts
    only if the tenant matches."""
    stored = load(key)
    if stored:
        return TreeState.from_json(stored)
    legacy = load(root_task_id)
    state = TreeState.from_json(legacy) if legacy else None
    return state if state is not None and state.tenant == tenant else None


def pending_key(instance: str, seq: int) -> bytes:
    """The key of a producer instance's pending chain link ``seq``."""
    return f"{instance}\x1f{seq}".encode()


def retired_key(kind: str, partition: int, bucket: int, chunk: int) -> bytes:
    """The key of a stored chunk of retired keys (:mod:`processors.correlation.retention`)
    of ``kind`` (``tree`` or ``chain``) in ``partition``."""
    return f"{kind}\x1f{partition}\x1f{bucket}\x1f{chunk}".encode()


def stored_form(partition: int, state_json: bytes) -> bytes:
    """A table value: the partition it belongs to, a newline, the state's JSON (compressed
    when long). The partition is kept so recovery can index deadlines per partition
    without assuming which partitioner the producers used."""
    if len(state_json) > _COMPRESS_OVER:
        state_json = zlib.compress(state_json, 1)
    return b"%d\n%s" % (partition, state_json)


def stored_state(value: bytes) -> tuple[int, bytes]:
    """The partition and the state's JSON of a table value."""
    partition, _, state_json = value.partition(b"\n")
    if state_json[:1] == _ZLIB:
        state_json = zlib.decompress(state_json)
    return int(partition), state_json
