"""Custody-context propagation across agent, tool and broker boundaries.

Like W3C ``traceparent``, the context is one compact string, carried in a
``custody-context`` header (HTTP, Kafka, gRPC metadata) or the ``CUSTODY_CONTEXT``
environment variable of a child process::

    1;<depth>;<root_task_id>;<task_id>;<parent_task_id or empty>

``1`` is the format version. Task ids are percent-encoded, so they may hold any character.
A delegation derives the child context with :meth:`CustodyContext.child`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

HEADER = "custody-context"
ENV_VAR = "CUSTODY_CONTEXT"
_VERSION = "1"
_MAX_LENGTH = 4096


class ContextFormatError(ValueError):
    """A custody-context string that cannot be parsed."""


def new_task_id() -> str:
    """A fresh, globally unique task id."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class CustodyContext:
    """Where a piece of work sits in its custody tree."""

    root_task_id: str
    task_id: str
    depth: int = 0
    parent_task_id: str | None = None

    def __post_init__(self) -> None:
        if not self.root_task_id or not self.task_id:
            raise ContextFormatError("root_task_id and task_id must not be empty")
        if self.depth < 0:
            raise ContextFormatError("depth must be >= 0")
        if (self.depth == 0) != (self.parent_task_id is None):
            raise ContextFormatError("parent_task_id is set exactly when depth > 0")
        if self.depth == 0 and self.task_id != self.root_task_id:
            raise ContextFormatError("at depth 0 task_id must equal root_task_id")

    @classmethod
    def new_root(cls, task_id: str | None = None) -> CustodyContext:
        """The context of a new root task."""
        root = task_id or new_task_id()
        return cls(root_task_id=root, task_id=root)

    def child(self, child_task_id: str | None = None) -> CustodyContext:
        """The context of a task delegated from this one (one level deeper)."""
        return CustodyContext(
            root_task_id=self.root_task_id,
            task_id=child_task_id or new_task_id(),
            depth=self.depth + 1,
            parent_task_id=self.task_id,
        )

    def format(self) -> str:
        """The compact string form."""
        parts = (self.root_task_id, self.task_id, self.parent_task_id or "")
        return ";".join([_VERSION, str(self.depth), *(quote(p, safe="") for p in parts)])

    __str__ = format

    @classmethod
    def parse(cls, text: str) -> CustodyContext:
        """Parse the compact string form; raises :class:`ContextFormatError`."""
        if len(text) > _MAX_LENGTH:
            raise ContextFormatError(f"custody-context longer than {_MAX_LENGTH} characters")
        parts = text.strip().split(";")
        if len(parts) != 5 or parts[0] != _VERSION:
            raise ContextFormatError(
                "expected '1;<depth>;<root_task_id>;<task_id>;<parent_task_id>'"
            )
        _, depth, root, task, parent = parts
        if not depth.isdigit():
            raise ContextFormatError("depth must be a non-negative integer")
        return cls(
            root_task_id=unquote(root),
            task_id=unquote(task),
            depth=int(depth),
            parent_task_id=unquote(parent) if parent else None,
        )

    def inject(self, carrier: MutableMapping[str, str]) -> None:
        """Write the context into headers or an environment mapping."""
        carrier[HEADER] = self.format()

    @classmethod
    def extract(cls, carrier: Mapping[str, str]) -> CustodyContext | None:
        """Read the context from headers (case-insensitive), or None when absent."""
        for key, value in carrier.items():
            if key.lower() == HEADER:
                return cls.parse(value)
        return None

    def to_environ(self, environ: MutableMapping[str, str]) -> None:
        """Set ``CUSTODY_CONTEXT`` for a child process."""
        environ[ENV_VAR] = self.format()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> CustodyContext | None:
        """The context a parent process handed down, or None."""
        value = environ.get(ENV_VAR)
        return cls.parse(value) if value else None
