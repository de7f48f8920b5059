"""What the Vault adapter remembers between audit entries (each token and lease it saw),
and how it reads an entry (its type, request id and time; the credentials a path revokes
or renews; a token's holder, policies and custody context).

Vault's audit log names a credential in every entry, but says where it came from only once
(its issuance) and never says what went with it: revoking a token revokes its child tokens
and leases without an audit entry of their own (hashicorp/vault#4156). The ledger keeps,
per token accessor, its place in a custody tree, whether it counts as an agent credential,
its children and its leases, so a later access, renewal or revocation lands in the token's
tree and a parent's revocation can name every descendant.

Memory is bounded: at most ``capacity`` tokens and ``capacity`` leases, the least recently
seen forgotten first. A forgotten token is treated as one issued before the log began
(its tree is taken again from the entry that names it; its descendants are no longer known).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from processors.collect.records import Rejection, text_of
from producers.context import ContextFormatError, CustodyContext

_K = TypeVar("_K")
_V = TypeVar("_V")


def text(value: Any, limit: int = 512) -> str | None:
    """:func:`records.text_of`, with a string (nearly every audit field) checked first: the
    general path's abstract Mapping check costs more than the rest of reading a field."""
    if type(value) is str:
        return value[:limit] or None
    return text_of(value, limit)


def mapping_of(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    # The type check first: an entry decoded from JSON holds dicts, and the abstract
    # Mapping check costs several times more.
    return value if type(value) is dict or isinstance(value, Mapping) else {}


DEFAULT_CAPACITY = 100_000
"""Tokens (and, separately, leases and client-token HMACs) the ledger remembers: about
110 MB when all three are full."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a credential's events go in a custody tree."""

    root_task_id: str
    task_id: str
    parent_task_id: str | None
    depth: int
    synthetic: bool


@dataclass(slots=True)
class TokenRecord:
    """One Vault token, by accessor (as the log spells it, HMAC'd or plain)."""

    placement: Placement
    agent: bool
    subject: str
    children: list[str] = field(default_factory=list)
    leases: list[str] = field(default_factory=list)
    revoked: bool = False


@dataclass(slots=True)
class LeaseRecord:
    """One dynamic-secret lease, by lease id, and the token that read it."""

    placement: Placement
    parent: str | None
    agent: bool
    revoked: bool = False


class VaultLedger:
    """Tokens, leases and the client-token HMAC of each accessor, bounded by ``capacity``."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._tokens: OrderedDict[str, TokenRecord] = OrderedDict()
        self._leases: OrderedDict[str, LeaseRecord] = OrderedDict()
        # auth/token/revoke names the token itself (HMAC'd), never its accessor.
        self._accessor_of: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens) + len(self._leases)

    def token(self, accessor: str) -> TokenRecord | None:
        """The token's record, or None when it was never seen (or forgotten)."""
        record = self._tokens.get(accessor)
        if record is not None:
            self._tokens.move_to_end(accessor)
        return record

    def lease(self, lease_id: str) -> LeaseRecord | None:
        """The lease's record, or None."""
        record = self._leases.get(lease_id)
        if record is not None:
            self._leases.move_to_end(lease_id)
        return record

    def add_token(
        self, accessor: str, record: TokenRecord, client_token: str | None, parent: str | None
    ) -> None:
        """Remember a token, its client-token HMAC and its place under ``parent``."""
        _put(self._tokens, accessor, record, self.capacity)
        if client_token:
            _put(self._accessor_of, client_token, accessor, self.capacity)
        parent_record = self._tokens.get(parent) if parent else None
        if parent_record is not None and accessor not in parent_record.children:
            parent_record.children.append(accessor)

    def add_lease(self, lease_id: str, record: LeaseRecord) -> None:
        """Remember a lease under the token that read it."""
        _put(self._leases, lease_id, record, self.capacity)
        parent_record = self._tokens.get(record.parent) if record.parent else None
        if parent_record is not None and lease_id not in parent_record.leases:
            parent_record.leases.append(lease_id)

    def accessor_of(self, client_token: str) -> str | None:
        """The accessor of a token named by its client-token HMAC, when its issuance was seen."""
        return self._accessor_of.get(client_token)

    def leases_under(self, prefix: str) -> list[str]:
        """Every remembered, unrevoked lease whose id starts with ``prefix``, sorted."""
        return sorted(
            lease_id
            for lease_id, record in self._leases.items()
            if lease_id.startswith(prefix) and not record.revoked
        )

    def revoke_tree(self, accessor: str) -> list[tuple[str, Placement, bool]]:
        """Mark a token revoked and return its unrevoked descendants (child tokens, depth
        first, then the leases of each) as ``(token_id, placement, agent)``, in a stable
        order, each marked revoked so a second revocation names none of them again."""
        found: list[tuple[str, Placement, bool]] = []
        stack = [accessor]
        seen = {accessor}
        while stack:
            record = self._tokens.get(stack.pop())
            if record is None:
                continue
            record.revoked = True
            for lease_id in record.leases:
                lease = self._leases.get(lease_id)
                if lease is not None and not lease.revoked:
                    lease.revoked = True
                    found.append((lease_id, lease.placement, lease.agent))
            for child in reversed(record.children):
                child_record = self._tokens.get(child)
                if child in seen or child_record is None:
                    continue
                seen.add(child)
                if not child_record.revoked:
                    found.append((child, child_record.placement, child_record.agent))
                stack.append(child)
        return found

    def mark_revoked(self, token_id: str) -> None:
        """Mark one token or lease revoked, leaving its descendants as they are."""
        record = self._tokens.get(token_id)
        if record is not None:
            record.revoked = True
        lease = self._leases.get(token_id)
        if lease is not None:
            lease.revoked = True


def _put(store: OrderedDict[_K, _V], key: _K, value: _V, capacity: int) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > capacity:
        store.popitem(last=False)


# ---- reading an entry ------------------------------------------------------------------


def parse_entry(entry: Any) -> tuple[str, str, datetime] | Rejection:
    """``(type, request id, time)`` of an audit entry, or why it cannot be mapped (naming
    the field, never its value)."""
    if type(entry) is not dict and not isinstance(entry, Mapping):
        return Rejection("vault_malformed_entry", "the audit entry is not a JSON object")
    kind = entry.get("type")
    if kind not in ("request", "response"):
        return Rejection("vault_entry_type_unknown", "type: must be request or response")
    request = entry.get("request")
    if type(request) is not dict and not isinstance(request, Mapping):
        return Rejection("vault_malformed_entry", "request: missing or not an object")
    request_id = text(request.get("id"))
    if request_id is None:
        return Rejection("vault_request_id_missing", "request.id: missing or empty")
    if kind == "response" and not isinstance(entry.get("response", {}), Mapping):
        return Rejection("vault_malformed_entry", "response: not an object")
    time = _time(entry.get("time"))
    if time is None:
        return Rejection(
            "vault_timestamp_invalid", "time: missing or not an RFC 3339 time with a zone"
        )
    return kind, request_id, time


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) < 20:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


# ---- what a request names ----------------------------------------------------------------

_TOKEN_RENEWALS = ("auth/token/renew", "auth/token/renew-self", "auth/token/renew-accessor")
_TOKEN_REVOCATIONS = (
    "auth/token/revoke",
    "auth/token/revoke-self",
    "auth/token/revoke-accessor",
    "auth/token/revoke-orphan",
)
_PREFIX_REVOCATIONS = (
    "sys/leases/revoke-prefix/",
    "sys/leases/revoke-force/",
    "sys/revoke-prefix/",
    "sys/revoke-force/",
)
# Paths that name one lease after the endpoint (the lease id itself is never HMAC'd there).
_LEASE_PATHS = ("sys/leases/revoke/", "sys/revoke/", "sys/leases/renew/", "sys/renew/")
_CLOUD_MOUNTS = frozenset({"aws", "gcp", "azure"})


def is_renewal(path: str) -> bool:
    """A token or lease renewal endpoint."""
    return path in _TOKEN_RENEWALS or path.startswith(("sys/leases/renew", "sys/renew"))


def is_revocation(path: str) -> bool:
    """A token or lease revocation endpoint."""
    return path in _TOKEN_REVOCATIONS or path.startswith(("sys/leases/revoke", "sys/revoke"))


def mount_of(path: str) -> str:
    """The mount a path is under: ``approle`` for ``auth/approle/login``, ``database`` for
    ``database/creds/readonly``."""
    parts = path.split("/", 2)
    return parts[1] if parts[0] == "auth" and len(parts) > 1 else parts[0]


def auth_method(path: str, request: Mapping[str, Any]) -> str:
    """The auth method type of a login: the mount's type as logged, else its path."""
    return text(request.get("mount_type")) or mount_of(path)


def token_role(path: str) -> str | None:
    """The token role of ``auth/token/create/<role>``, else None."""
    if not path.startswith("auth/token/create/"):
        return None
    return path.removeprefix("auth/token/create/") or None


def lease_kind(path: str, request: Mapping[str, Any]) -> str:
    """The credential kind of a dynamic secret, by its mount's type: database credentials,
    cloud sessions (aws, gcp, azure), else OTHER (never guessed further)."""
    kind = text(request.get("mount_type")) or mount_of(path)
    if kind == "database":
        return "DB_CREDENTIAL"
    return "CLOUD_SESSION" if kind in _CLOUD_MOUNTS else "OTHER"


def lease_in_path(path: str) -> str | None:
    """The lease id of ``sys/leases/revoke/<id>`` and its siblings, else None."""
    for prefix in _LEASE_PATHS:
        if path.startswith(prefix):
            return path[len(prefix) :] or None
    return None


def revoked(path: str, data: Mapping[str, Any], requester: str, ledger: VaultLedger) -> list[str]:
    """The tokens (accessors) and leases a successful revocation request names.

    ``auth/token/revoke`` and ``revoke-orphan`` name the token by its HMAC'd value: it is
    found through the client-token HMAC its issuance logged, else not at all. A lease
    revoked through the request body is named by its HMAC (Vault HMACs request data) unless
    ``lease_id`` is exempted with ``audit_non_hmac_request_keys``; through the path it is
    named plainly. A prefix revocation names every remembered lease under the prefix.
    """
    if path == "auth/token/revoke-self":
        return [requester]
    if path == "auth/token/revoke-accessor":
        accessor = text(data.get("accessor"))
        return [accessor] if accessor else []
    if path in ("auth/token/revoke", "auth/token/revoke-orphan"):
        token = text(data.get("token"))
        found = ledger.accessor_of(token) if token else None
        return [found] if found else []
    for prefix in _PREFIX_REVOCATIONS:
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            return ledger.leases_under(rest) if rest else []
    lease = lease_in_path(path) or text(data.get("lease_id"))
    return [lease] if lease else []


# ---- who holds a token, and for which task ---------------------------------------------


def policies_of(auth: Mapping[str, Any]) -> list[str]:
    """A token's policies, sorted: ``policies`` (token and identity policies together)."""
    listed = auth.get("policies")
    if not isinstance(listed, list):
        listed = auth.get("token_policies")
    return sorted(
        {p for p in listed if isinstance(p, str) and p} if isinstance(listed, list) else set()
    )


def subject_of(auth: Mapping[str, Any], accessor: str) -> str:
    """Who holds a token: its identity entity, else its display name, else its accessor."""
    entity = text(auth.get("entity_id"), 480)
    if entity:
        return f"vault-entity://{entity}"
    return f"vault-token://{text(auth.get('display_name'), 480) or accessor[:480]}"


def role_of(metadata: Any) -> str | None:
    meta = mapping_of(metadata)
    return text(meta.get("role_name")) or text(meta.get("role"))


def placement_from(metadata: Mapping[str, Any], prefix: str) -> Placement | Rejection | None:
    """The custody context in token metadata (``<prefix>context`` in the compact form, or
    ``<prefix>task_id`` and its siblings), None when absent."""
    compact = text(metadata.get(f"{prefix}context"), 4096)
    try:
        if compact is not None:
            ctx = CustodyContext.parse(compact)
        else:
            task = text(metadata.get(f"{prefix}task_id"))
            if task is None:
                return None
            parent = text(metadata.get(f"{prefix}parent_task_id"))
            depth = text(metadata.get(f"{prefix}depth"))
            ctx = CustodyContext(
                root_task_id=text(metadata.get(f"{prefix}root_task_id")) or task,
                task_id=task,
                depth=int(depth) if depth and depth.isdigit() else int(parent is not None),
                parent_task_id=parent,
            )
    except ContextFormatError as exc:
        return Rejection("vault_context_invalid", f"token metadata {prefix}*: {exc}")
    return Placement(ctx.root_task_id, ctx.task_id, ctx.parent_task_id, ctx.depth, False)
