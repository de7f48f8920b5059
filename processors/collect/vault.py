"""HashiCorp Vault (and OpenBao) audit log → contract events: a pure state machine.

Vault's audit devices (file, socket, syslog) write one JSON object per line: a ``request``
entry when a request arrives and a ``response`` entry when it is answered, both carrying
the request (joined here by ``request.id``). Sensitive strings are HMAC'd
(``hmac-sha256:<hex>``): client tokens, request and response data values, and accessors
unless ``hmac_accessor=false``. A credential is named by its accessor as logged, a lease by
its lease id (never HMAC'd).

:class:`VaultAuditMapper` maps each request once, when its response arrives:

- a login or token creation (``response.auth``) → ``AUTHZ_DECISION`` (Vault's own, ALLOW)
  + ``CREDENTIAL_ISSUED``; a dynamic secret (``response.secret.lease_id``) → the ACL's
  ``AUTHZ_DECISION`` + ``CREDENTIAL_ISSUED`` of the lease;
- ``auth/token/revoke*``, ``sys/leases/revoke*`` → ``CREDENTIAL_REVOKED``, and the
  revocations Vault performs without an audit entry (the child tokens and leases of a
  revoked token, hashicorp/vault#4156) inferred from the ledger;
- ``auth/token/renew*``, ``sys/leases/renew`` → ``CREDENTIAL_RENEWED`` (contract v2);
- any other request made with a token → the ACL's ``AUTHZ_DECISION`` + ``ACCESS``.

No client token and no secret data value is ever copied into an event: with ``log_raw``
they are logged unhashed (Vault's ``hvs.`` tokens pass the secret screen unnoticed), so
only accessors, lease ids, paths, policies, metadata and error text are read, and every
event still goes through the secret screen (:func:`records.build_event`).

It does no I/O: a transport feeds it entries and publishes what it returns.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from processors.collect import records
from processors.collect import vault_ledger as paths
from processors.collect.records import Outcome, Rejection, Skipped
from processors.collect.vault_ledger import (
    DEFAULT_CAPACITY,
    LeaseRecord,
    Placement,
    TokenRecord,
    VaultLedger,
)
from schemas.models import Envelope

INFERRED_ATTRIBUTE = "custody.inferred"
"""Attribute on a revocation Vault performed without auditing it: ``revoked with parent <id>``."""
REQUEST_ID_ATTRIBUTE = "vault.request_id"
"""Attribute naming the Vault request an event came from."""

NON_EXPIRING = timedelta(days=365 * 100)
"""The lifetime given to a token Vault issued without a TTL (root tokens, ``period=0``
orphans): far enough that ``LONG_LIVED_CREDENTIAL`` judges it, as it should."""
DEFAULT_MAX_PENDING = 10_000
"""Requests awaiting their response before the oldest is mapped as unanswered: each held
as its decoded entry (a few KB), so tens of MB at the bound. Vault answers a request within
its request timeout, so only a lost response line stays pending for long."""


class VaultMapping(BaseModel):
    """Which Vault credentials are agent credentials, and how their events are named.

    A credential counts when it matches every list that is set (``None`` = any). Requests
    made with a credential that does not count are skipped and counted, never published.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    auth_methods: list[str] | None = Field(
        default=None,
        description="Auth method types whose tokens count (the login mount's type, e.g. "
        "approle, kubernetes, jwt; token for auth/token/create). None: all.",
    )
    roles: list[str] | None = Field(
        default=None,
        description="Roles whose tokens count (metadata role_name or role, or the "
        "auth/token/create/<role> path). None: any role, or none.",
    )
    policies: list[str] | None = Field(
        default=None,
        description="Policies of which a token must hold at least one to count. None: any.",
    )
    metadata_prefix: str = Field(
        default="custody_",
        description="Token metadata key prefix of the custody context: <prefix>task_id, "
        "root_task_id, parent_task_id, depth, purpose (or <prefix>context, the compact form).",
    )
    broker_workload_id: str | None = Field(
        default=None,
        description="Workload id of the broker actor on issuance, revocation, renewal and "
        "decision events. None: vault://<source>.",
    )
    default_lease_ttl_seconds: int = Field(
        default=2_764_800,
        gt=0,
        description="Lifetime of a dynamic secret or lease renewal whose duration the log "
        "does not carry (Vault audits a lease's id, not its TTL): Vault's default 768h; set "
        "it to your secret roles' default_ttl.",
    )
    max_pending_requests: int = Field(
        default=DEFAULT_MAX_PENDING,
        gt=0,
        description="Request entries kept awaiting their response; past it the oldest is "
        "mapped as an access whose response was not seen.",
    )
    ledger_capacity: int = Field(
        default=DEFAULT_CAPACITY,
        gt=0,
        description="Tokens, leases and mapped request ids remembered (each, least recently "
        "seen forgotten first) for context, renewal, revocation and duplicate lines.",
    )

    def covers(self, method: str | None, role: str | None, policies: list[str]) -> bool:
        """True when a credential of this auth method, role and policies counts."""
        if self.auth_methods is not None and method not in self.auth_methods:
            return False
        if self.roles is not None and role not in self.roles:
            return False
        return self.policies is None or any(p in self.policies for p in policies)


class VaultAuditMapper:
    """Vault audit entries in, contract events out; see the module docstring.

    ``feed`` takes one decoded audit line; ``drain`` maps the requests still awaiting their
    response (the end of an import). Memory is bounded by ``max_pending_requests`` pending
    requests and ``ledger_capacity`` tokens, leases and mapped request ids. ``counts`` says
    what came of the entries, by outcome and reason.
    """

    def __init__(self, origin: records.Origin, mapping: VaultMapping) -> None:
        self.origin = origin
        self.mapping = mapping
        self.ledger = VaultLedger(mapping.ledger_capacity)
        self.counts: Counter[str] = Counter()
        self._pending: OrderedDict[str, tuple[Mapping[str, Any], datetime]] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._broker = {
            "workload_id": mapping.broker_workload_id or f"vault://{origin.source}",
            "kind": "BROKER",
            "instance_id": origin.source,
        }

    @property
    def pending(self) -> int:
        """Requests awaiting their response."""
        return len(self._pending)

    def feed(self, entry: Mapping[str, Any]) -> list[Outcome]:
        """Map one audit entry: ``[]`` for a request entry awaiting its response, the
        request's outcome for a response entry (plus any request pushed out of the pending
        bound)."""
        self.counts["entries"] += 1
        parsed = paths.parse_entry(entry)
        if isinstance(parsed, Rejection):
            return self._counted([parsed])
        kind, request_id, time = parsed
        if request_id in self._done or (kind == "request" and request_id in self._pending):
            return self._counted([Skipped("vault_duplicate_entry")])
        if kind == "request":
            self._pending[request_id] = (entry, time)
            evicted: list[Outcome] = []
            while len(self._pending) > self.mapping.max_pending_requests:
                old_id, (old, old_time) = self._pending.popitem(last=False)
                evicted.append(self._finish(old_id, old, old_time, answered=False))
            return self._counted(evicted)
        self._pending.pop(request_id, None)
        return self._counted([self._finish(request_id, entry, time, answered=True)])

    def drain(self) -> list[Outcome]:
        """Map every request whose response never came, as an access that was not seen to
        complete (``FAILURE``), oldest first."""
        outcomes = [
            self._finish(request_id, entry, time, answered=False)
            for request_id, (entry, time) in self._pending.items()
        ]
        self._pending.clear()
        return self._counted(outcomes)

    # ---- dispatch --------------------------------------------------------------------

    def _counted(self, outcomes: list[Outcome]) -> list[Outcome]:
        return records.counted(self.counts, outcomes)

    def _finish(
        self, request_id: str, entry: Mapping[str, Any], time: datetime, *, answered: bool
    ) -> Outcome:
        self._done[request_id] = None
        while len(self._done) > self.mapping.ledger_capacity:
            self._done.popitem(last=False)
        if not answered:
            self.counts["unanswered"] += 1
        return _Entry(self, request_id, entry, time, answered).map()


class _Entry:
    """One request (and its response, when answered) being mapped."""

    def __init__(
        self,
        mapper: VaultAuditMapper,
        request_id: str,
        entry: Mapping[str, Any],
        time: datetime,
        answered: bool,
    ) -> None:
        self.m = mapper
        self.request_id = request_id
        self.time = time
        self.answered = answered
        self.request: Mapping[str, Any] = entry["request"]
        self.auth = paths.mapping_of(entry.get("auth"))
        self.response = paths.mapping_of(entry.get("response")) if answered else {}
        self.error = paths.text(entry.get("error"), 8192)
        self.path = paths.text(self.request.get("path")) or ""
        self.operation = paths.text(self.request.get("operation")) or "unknown"
        self.data = paths.mapping_of(self.request.get("data"))
        self.requester = paths.text(self.auth.get("accessor")) or paths.text(
            self.request.get("client_token_accessor")
        )

    def map(self) -> Outcome:
        """The outcome of this request."""
        succeeded = self.answered and self.error is None
        if succeeded and paths.is_renewal(self.path):
            return self._renewal()
        if succeeded and paths.is_revocation(self.path):
            return self._revocation()
        issued = paths.mapping_of(self.response.get("auth"))
        if issued.get("token_type") == "batch" or self.auth.get("token_type") == "batch":
            # A batch token has no accessor, and its value (HMAC'd, or raw with log_raw) is
            # never copied into an event: it cannot be named.
            return Skipped("vault_batch_token")
        if succeeded and paths.text(issued.get("accessor")):
            return self._token_issued(issued)
        lease_id = paths.text(paths.mapping_of(self.response.get("secret")).get("lease_id"))
        if succeeded and lease_id:
            return self._lease_issued(lease_id)
        return self._access()

    # ---- the requester ---------------------------------------------------------------

    def _holder(self) -> tuple[str, TokenRecord] | Outcome:
        """The requesting token and its record (first seen here if issued before the log
        began: its tree then comes from this entry's metadata)."""
        if self.requester is None:
            return Skipped("vault_unauthenticated")
        record = self.m.ledger.token(self.requester)
        if record is None:
            placement = self._placement(self.auth.get("metadata"), self.requester)
            if isinstance(placement, Rejection):
                return placement
            # Without its login entry the auth method is read off the display name, which
            # Vault builds as <mount>-<name> (approle, kubernetes-ns-sa, token-...).
            display = paths.text(self.auth.get("display_name")) or ""
            record = TokenRecord(
                placement=placement,
                agent=self.m.mapping.covers(
                    display.split("-", 1)[0] or None,
                    paths.role_of(self.auth.get("metadata")),
                    paths.policies_of(self.auth),
                ),
                subject=paths.subject_of(self.auth, self.requester),
            )
            self.m.ledger.add_token(self.requester, record, None, None)
        return self.requester, record

    def _placement(self, metadata: Any, accessor: str) -> Placement | Rejection:
        """The custody context the token metadata names, else the token's synthetic task."""
        found = paths.placement_from(paths.mapping_of(metadata), self.m.mapping.metadata_prefix)
        if isinstance(found, Rejection):
            return found
        if found is not None:
            return found
        task = records.synthetic_task_id(self.m.origin, "vault-token", accessor)
        return Placement(task, task, None, 0, synthetic=True)

    # ---- issuance --------------------------------------------------------------------

    def _token_issued(self, issued: Mapping[str, Any]) -> Outcome:
        accessor = str(paths.text(issued.get("accessor")))
        created = self.path.startswith("auth/token/create")
        creator = self.m.ledger.token(self.requester) if created and self.requester else None
        # An orphan has no parent in Vault's token tree: its creator's revocation leaves it.
        orphan = self.path == "auth/token/create-orphan" or self.data.get("no_parent") is True
        parent = self.requester if created and not orphan else None
        own = self._placement(issued.get("metadata"), accessor)
        if isinstance(own, Rejection):
            return own
        # A token created without a context of its own works for its creator's task.
        placement = creator.placement if creator is not None and own.synthetic else own
        method = "token" if created else paths.auth_method(self.path, self.request)
        role = paths.token_role(self.path) if created else paths.role_of(issued.get("metadata"))
        scopes = paths.policies_of(issued)
        record = TokenRecord(
            placement=placement,
            agent=self.m.mapping.covers(method, role, scopes),
            subject=paths.subject_of(issued, accessor),
        )
        self.m.ledger.add_token(
            accessor,
            record,
            paths.text(issued.get("client_token")),
            parent,
        )
        if not record.agent:
            return Skipped("vault_not_agent_credential")
        policy_id = f"auth/{paths.mount_of(self.path)}/role/{role}" if role else self.path
        decision = self._decision(placement, policy_id, ",".join(scopes) or "none", scopes, [])
        body = {
            "token_id": accessor,
            "token_subject": record.subject,
            "credential_kind": "OTHER",
            "audience": "vault",
            "scopes": scopes,
            "issued_at": self.time,
            "expires_at": self.time + _ttl(issued.get("token_ttl", issued.get("lease_duration"))),
            "decision_id": decision["body"]["decision_id"],
            "parent_token_id": parent,
        }
        purpose = paths.mapping_of(issued.get("metadata")).get(
            f"{self.m.mapping.metadata_prefix}purpose"
        )
        extra = {"custody.purpose": paths.text(purpose, 8192)} if paths.text(purpose) else {}
        issue = self._event(
            "CREDENTIAL_ISSUED", accessor, placement, self.m._broker, body, extra=extra
        )
        return self._mapped([decision, issue])

    def _lease_issued(self, lease_id: str) -> Outcome:
        holder = self._holder()
        if not isinstance(holder, tuple):
            return holder
        accessor, record = holder
        self.m.ledger.add_lease(lease_id, LeaseRecord(record.placement, accessor, record.agent))
        if not record.agent:
            return Skipped("vault_not_agent_credential")
        decision = self._acl_decision(record.placement, allowed=True)
        secret = paths.mapping_of(self.response.get("secret"))
        seconds = secret.get("lease_duration")
        body = {
            "token_id": lease_id,
            "token_subject": record.subject,
            "credential_kind": paths.lease_kind(self.path, self.request),
            "audience": f"vault:{paths.mount_of(self.path)}",
            "scopes": paths.policies_of(self.auth),
            "issued_at": self.time,
            "expires_at": self.time + self._lease_ttl(seconds),
            "decision_id": decision["body"]["decision_id"],
            "parent_token_id": accessor,
        }
        issue = self._event("CREDENTIAL_ISSUED", lease_id, record.placement, self.m._broker, body)
        return self._mapped([decision, issue])

    # ---- access ----------------------------------------------------------------------

    def _access(self) -> Outcome:
        holder = self._holder()
        if not isinstance(holder, tuple):
            return holder
        accessor, record = holder
        if not record.agent:
            return Skipped("vault_not_agent_credential")
        results = paths.mapping_of(self.auth.get("policy_results"))
        denied = (self.error is not None and "permission denied" in self.error.lower()) or (
            results.get("allowed") is False
        )
        decision = self._acl_decision(record.placement, allowed=not denied)
        if denied:
            outcome, detail = "DENIED", self.error or "permission denied"
        elif self.error is not None:
            outcome, detail = "FAILURE", self.error
        elif not self.answered:
            outcome, detail = "FAILURE", "the Vault response to this request was not seen"
        else:
            outcome, detail = "SUCCESS", None
        body = {
            "token_id": accessor,
            "tool": "vault",
            "resource": self.path or "/",
            "action": self.operation,
            "data_scope": decision["body"]["data_scope"],
            "decision_id": decision["body"]["decision_id"],
            "outcome": outcome,
            "detail": detail,
        }
        actor = {
            "workload_id": record.subject,
            "kind": "AGENT",
            "instance_id": paths.text(self.request.get("remote_address")) or self.m.origin.source,
        }
        return self._mapped(
            [decision, self._event("ACCESS", accessor, record.placement, actor, body)]
        )

    def _acl_decision(self, placement: Placement, *, allowed: bool) -> dict[str, Any]:
        """Vault's ACL verdict on this request: the policies that granted it are its scope
        (Vault 1.13+ logs them in ``auth.policy_results``), so an access using a policy its
        token was not issued with shows as a scope escalation."""
        granting = paths.mapping_of(self.auth.get("policy_results")).get("granting_policies")
        scope = sorted(
            {
                name
                for policy in (granting if isinstance(granting, list) else [])
                if (name := paths.text(paths.mapping_of(policy).get("name")))
            }
        )
        reasons = [] if allowed else [self.error or "permission denied"]
        version = ",".join(paths.policies_of(self.auth)) or "none"
        return self._decision(placement, "acl", version, scope, reasons, allowed=allowed)

    def _decision(
        self,
        placement: Placement,
        policy_id: str,
        version: str,
        scope: list[str],
        reasons: list[str],
        *,
        allowed: bool = True,
    ) -> dict[str, Any]:
        # The decision's id is its event's: one derived id fewer per request.
        decision_id = self._event_id("AUTHZ_DECISION", "acl")
        body = {
            "decision_id": decision_id,
            "policy_engine": "vault",
            "policy_id": policy_id,
            "policy_version": version[:512],
            "decision": "ALLOW" if allowed else "DENY",
            "resource": self.path or "/",
            "action": self.operation,
            "data_scope": scope,
            "reasons": reasons,
            "context": {"mount_type": paths.text(self.request.get("mount_type")) or ""},
        }
        return self._event("AUTHZ_DECISION", "acl", placement, self.m._broker, body, decision_id)

    # ---- revocation and renewal ------------------------------------------------------

    def _revocation(self) -> Outcome:
        """``CREDENTIAL_REVOKED`` (MANUAL, by the requester) for each credential the request
        names, and for each of a revoked token's child tokens and leases still live: Vault
        revokes those with their parent without auditing it (hashicorp/vault#4156), so they
        are inferred from the ledger, ``revoked_by`` ``vault`` and :data:`INFERRED_ATTRIBUTE`
        naming the revoked ancestor. ``revoke-orphan`` leaves the children live, as Vault
        does."""
        holder = self._holder()
        if not isinstance(holder, tuple):
            return holder
        accessor, record = holder
        ledger = self.m.ledger
        targets = paths.revoked(self.path, self.data, accessor, ledger)
        events: list[dict[str, Any]] = []
        for token_id in targets:
            target = ledger.token(token_id) or ledger.lease(token_id)
            placement = target.placement if target is not None else record.placement
            if target.agent if target is not None else record.agent:
                body = {"token_id": token_id, "reason": "MANUAL", "revoked_by": record.subject}
                events.append(
                    self._event("CREDENTIAL_REVOKED", token_id, placement, self.m._broker, body)
                )
            ledger.mark_revoked(token_id)
            if self.path == "auth/token/revoke-orphan":
                continue
            # A token outside the mapping may still have agent credentials under it.
            for child, child_placement, agent in ledger.revoke_tree(token_id):
                if agent:
                    events.append(self._inferred_revocation(child, child_placement, token_id))
        if not events:
            return Skipped(
                "vault_not_agent_credential" if targets else "vault_revocation_target_unknown"
            )
        return self._mapped(events)

    def _inferred_revocation(
        self, token_id: str, placement: Placement, parent: str
    ) -> dict[str, Any]:
        """A revocation Vault performed with ``parent``'s and did not audit (vault#4156)."""
        body = {"token_id": token_id, "reason": "MANUAL", "revoked_by": "vault"}
        extra = {INFERRED_ATTRIBUTE: f"revoked with parent {parent}"}
        return self._event(
            "CREDENTIAL_REVOKED", token_id, placement, self.m._broker, body, extra=extra
        )

    def _renewal(self) -> Outcome:
        holder = self._holder()
        if not isinstance(holder, tuple):
            return holder
        accessor, record = holder
        renewed = paths.mapping_of(self.response.get("auth"))
        if self.path.startswith("auth/token/"):
            token_id = paths.text(renewed.get("accessor")) or (
                accessor if self.path == "auth/token/renew-self" else None
            )
            ttl = _ttl(renewed.get("token_ttl", renewed.get("lease_duration")))
        else:
            secret = paths.mapping_of(self.response.get("secret"))
            token_id = paths.text(secret.get("lease_id")) or paths.lease_in_path(self.path)
            ttl = self._lease_ttl(secret.get("lease_duration", self.data.get("increment")))
        if token_id is None:
            return Skipped("vault_renewal_target_unknown")
        target = self.m.ledger.token(token_id) or self.m.ledger.lease(token_id)
        placement = target.placement if target is not None else record.placement
        if not (target.agent if target is not None else record.agent):
            return Skipped("vault_not_agent_credential")
        body = {"token_id": token_id, "expires_at": self.time + ttl, "renewed_by": record.subject}
        return self._mapped(
            [self._event("CREDENTIAL_RENEWED", token_id, placement, self.m._broker, body)]
        )

    def _lease_ttl(self, seconds: Any) -> timedelta:
        if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
            return timedelta(seconds=seconds)
        return timedelta(seconds=self.m.mapping.default_lease_ttl_seconds)

    # ---- events ----------------------------------------------------------------------

    def _event(
        self,
        event_type: str,
        subject: str,
        placement: Placement,
        actor: Mapping[str, str],
        body: dict[str, Any],
        event_id: str | None = None,
        extra: Mapping[str, str | None] | None = None,
    ) -> dict[str, Any]:
        attributes = {
            records.SOURCE_ATTRIBUTE: self.m.origin.source,
            REQUEST_ID_ATTRIBUTE: self.request_id,
        }
        if placement.synthetic:
            attributes[records.SYNTHETIC_ATTRIBUTE] = "true"
        for key, value in (extra or {}).items():
            if value is not None:
                attributes[key] = value
        event = {
            "event_id": event_id or self._event_id(event_type, subject),
            "event_type": event_type,
            "event_time": self.time,
            "tenant": self.m.origin.tenant,
            "producer": self.m.origin.source,
            "root_task_id": placement.root_task_id,
            "task_id": placement.task_id,
            "depth": placement.depth,
            "actor": dict(actor),
            "attributes": attributes,
            # Absent fields take their null default: fewer values for the screen to walk.
            "body": {key: value for key, value in body.items() if value is not None},
        }
        if placement.parent_task_id is not None:
            event["parent_task_id"] = placement.parent_task_id
        return event

    def _event_id(self, event_type: str, subject: str) -> str:
        """The id of this request's ``event_type`` event about ``subject``: the same on
        every replay of the log."""
        return records.event_id_for(self.m.origin, "vault", self.request_id, event_type, subject)

    def _mapped(self, events: list[dict[str, Any]]) -> Outcome:
        built: list[Envelope] = []
        for data in events:
            event = records.build_event(data, "vault_contract_violation")
            if isinstance(event, Rejection):
                return event
            built.append(event)
        return records.Mapped(tuple(built))


def _ttl(seconds: Any) -> timedelta:
    """A token's lifetime; 0 or absent is a token that never expires (:data:`NON_EXPIRING`)."""
    if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
        return timedelta(seconds=seconds)
    return NON_EXPIRING
