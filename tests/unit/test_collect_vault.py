"""The Vault audit adapter on Vault's own entry shapes (tests/data/vault): each sample's
events field by field, the request/response join, the ledger's inferred revocations, the
scope filter, custody context, replays, malformed entries and the pending bound."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest

from processors.collect import records
from processors.collect.records import Outcome, Rejection, Skipped
from processors.collect.vault import (
    INFERRED_ATTRIBUTE,
    NON_EXPIRING,
    VaultAuditMapper,
    VaultMapping,
)
from processors.collect.vault_ledger import LeaseRecord, Placement, VaultLedger
from schemas.models import Envelope
from tests.support import REPO

ORIGIN = records.Origin("acme-prod", "vault-prod")
DATA = REPO / "tests" / "data" / "vault"
SESSION = ("login_approle", "token_create_child", "dynamic_secret")

# A secret-shaped value, assembled at run time so none sits in the repository.
JWT = "eyJ" + "hbGciOiJIUzI1NiJ9" + ".eyJ" + "zdWIiOiJhZ2VudCJ9" + ".c2lnbmF0dXJlX2J5dGVz"
RAW_VAULT_TOKEN = "hvs." + "CAESIB" + "x" * 20


def load(name: str) -> list[dict[str, Any]]:
    """The entries of one sample file."""
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


def responses(name: str) -> list[dict[str, Any]]:
    return [entry for entry in load(name) if entry["type"] == "response"]


def run(*names: str, mapping: VaultMapping | None = None) -> tuple[VaultAuditMapper, list[Outcome]]:
    mapper = VaultAuditMapper(ORIGIN, mapping or VaultMapping())
    return mapper, feed(mapper, (entry for name in names for entry in load(name)))


def feed(mapper: VaultAuditMapper, entries: Iterable[Mapping[str, Any]]) -> list[Outcome]:
    return [outcome for entry in entries for outcome in mapper.feed(entry)]


def events(outcomes: Iterable[Outcome]) -> list[Envelope]:
    return [event for o in outcomes if isinstance(o, records.Mapped) for event in o.events]


def of_type(outcomes: Iterable[Outcome], event_type: str) -> list[Envelope]:
    return [e for e in events(outcomes) if e.event_type == event_type]


def body(event: Envelope) -> Any:
    return getattr(event, "body")  # noqa: B009 - every concrete event has one


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_login_is_an_issuance_accounted_for_by_vault_s_decision() -> None:
    _, outcomes = run("login_approle")
    response = responses("login_approle")[0]
    auth = response["response"]["auth"]
    meta = auth["metadata"]
    decision, issued = events(outcomes)
    assert decision.event_type == "AUTHZ_DECISION"
    assert body(decision).policy_engine == "vault"
    assert body(decision).policy_id == f"auth/approle/role/{meta['role_name']}"
    assert body(decision).decision == "ALLOW"
    assert issued.event_type == "CREDENTIAL_ISSUED"
    assert body(issued).token_id == auth["accessor"]
    assert body(issued).token_subject == f"vault-entity://{auth['entity_id']}"
    assert body(issued).credential_kind == "OTHER"
    assert body(issued).audience == "vault"
    assert body(issued).scopes == sorted(auth["policies"])
    assert body(issued).issued_at == at(response["time"])
    assert body(issued).expires_at == at(response["time"]) + timedelta(seconds=auth["token_ttl"])
    assert body(issued).decision_id == body(decision).decision_id
    assert body(issued).parent_token_id is None
    for event in (decision, issued):
        assert event.event_time == at(response["time"])
        assert (event.tenant, event.producer) == (ORIGIN.tenant, ORIGIN.source)
        assert (event.task_id, event.root_task_id) == (meta["custody_task_id"],) * 2
        assert event.depth == 0
        assert event.actor.kind == "BROKER"
        assert event.actor.workload_id == f"vault://{ORIGIN.source}"
        assert event.attributes["custody.source"] == ORIGIN.source
        assert records.SYNTHETIC_ATTRIBUTE not in event.attributes
    assert issued.attributes["custody.purpose"] == meta["custody_purpose"]


def test_a_request_waits_for_its_response_joined_by_request_id() -> None:
    mapper = VaultAuditMapper(ORIGIN, VaultMapping())
    request, response = load("login_approle")
    assert mapper.feed(request) == []
    assert mapper.pending == 1
    (outcome,) = mapper.feed(response)
    assert isinstance(outcome, records.Mapped)
    assert mapper.pending == 0
    assert all(e.attributes["vault.request_id"] == request["request"]["id"] for e in outcome.events)
    # The same request answered twice (a duplicated line) is mapped once.
    assert mapper.feed(response) == [Skipped("vault_duplicate_entry")]


def test_child_tokens_name_their_parent_and_take_their_own_or_their_parent_s_task() -> None:
    _, outcomes = run("login_approle", "token_create_child")
    planner = responses("login_approle")[0]["response"]["auth"]
    research, helper = (e["response"]["auth"] for e in responses("token_create_child"))
    issued = {body(e).token_id: e for e in of_type(outcomes, "CREDENTIAL_ISSUED")}
    child = issued[research["accessor"]]
    assert body(child).parent_token_id == planner["accessor"]
    assert body(child).expires_at - body(child).issued_at == timedelta(seconds=900)
    assert child.task_id == research["metadata"]["custody_task_id"]
    assert child.root_task_id == research["metadata"]["custody_root_task_id"]
    assert child.parent_task_id == research["metadata"]["custody_parent_task_id"]
    assert child.depth == int(research["metadata"]["custody_depth"])
    # Without a context of its own the child token works for its creator's task.
    assert body(issued[helper["accessor"]]).parent_token_id == planner["accessor"]
    assert issued[helper["accessor"]].task_id == planner["metadata"]["custody_task_id"]


def test_dynamic_secrets_are_leases_under_the_token_that_read_them() -> None:
    mapping = VaultMapping(default_lease_ttl_seconds=1800)
    _, outcomes = run(*SESSION, mapping=mapping)
    planner = responses("login_approle")[0]["response"]["auth"]
    research = responses("token_create_child")[0]["response"]["auth"]
    db, aws = responses("dynamic_secret")
    issued = {body(e).token_id: e for e in of_type(outcomes, "CREDENTIAL_ISSUED")}
    lease = issued[db["response"]["secret"]["lease_id"]]
    assert body(lease).credential_kind == "DB_CREDENTIAL"
    assert body(lease).parent_token_id == planner["accessor"]
    assert body(lease).token_subject == f"vault-entity://{planner['entity_id']}"
    assert body(lease).expires_at == at(db["time"]) + timedelta(seconds=1800)
    assert lease.task_id == planner["metadata"]["custody_task_id"]
    cloud = issued[aws["response"]["secret"]["lease_id"]]
    assert body(cloud).credential_kind == "CLOUD_SESSION"
    assert body(cloud).parent_token_id == research["accessor"]
    assert cloud.task_id == research["metadata"]["custody_task_id"]
    decisions = {body(e).decision_id: e for e in of_type(outcomes, "AUTHZ_DECISION")}
    assert body(decisions[body(lease).decision_id]).resource == db["request"]["path"]
    assert body(decisions[body(lease).decision_id]).decision == "ALLOW"


def test_a_kv_read_is_an_access_under_vault_s_acl_decision() -> None:
    _, outcomes = run("login_approle", "token_create_child", "kv_read")
    response = responses("kv_read")[0]
    (access,) = of_type(outcomes, "ACCESS")
    decision = next(
        e
        for e in of_type(outcomes, "AUTHZ_DECISION")
        if body(e).resource == "secret/data/app/config"
    )
    granting = [p["name"] for p in response["auth"]["policy_results"]["granting_policies"]]
    assert body(decision).policy_id == "acl"
    assert body(decision).policy_version == ",".join(sorted(response["auth"]["policies"]))
    assert body(decision).decision == "ALLOW"
    assert body(decision).data_scope == granting
    assert body(access).token_id == response["auth"]["accessor"]
    assert body(access).tool == "vault"
    assert body(access).resource == response["request"]["path"]
    assert body(access).action == response["request"]["operation"]
    assert body(access).data_scope == granting
    assert body(access).decision_id == body(decision).decision_id
    assert body(access).outcome == "SUCCESS"
    assert body(access).detail is None
    assert access.actor.kind == "AGENT"
    assert access.actor.workload_id == f"vault-entity://{response['auth']['entity_id']}"
    assert access.actor.instance_id == response["request"]["remote_address"]
    assert access.task_id == response["auth"]["metadata"]["custody_task_id"]
    # The response's HMAC'd data never reaches an event.
    assert response["response"]["data"]["data"]["api_url"] not in json.dumps(
        [e.model_dump(mode="json") for e in events(outcomes)]
    )


def test_permission_denied_is_a_deny_and_a_denied_access_another_error_a_failure() -> None:
    _, outcomes = run("login_approle", "token_create_child", "errors")
    denied, failed = responses("errors")
    accesses = {body(e).resource: e for e in of_type(outcomes, "ACCESS")}
    decisions = {body(e).decision_id: e for e in of_type(outcomes, "AUTHZ_DECISION")}
    refused = accesses[denied["request"]["path"]]
    assert body(refused).outcome == "DENIED"
    assert body(refused).detail == denied["error"]
    assert body(decisions[body(refused).decision_id]).decision == "DENY"
    assert body(decisions[body(refused).decision_id]).reasons == [denied["error"]]
    broken = accesses[failed["request"]["path"]]
    assert body(broken).outcome == "FAILURE"
    assert body(broken).detail == failed["error"]
    assert body(decisions[body(broken).decision_id]).decision == "ALLOW"


def test_renewals_move_the_expiry_of_the_token_and_of_the_lease() -> None:
    _, outcomes = run(*SESSION, "renew")
    token_renewal, lease_renewal = responses("renew")
    planner = responses("login_approle")[0]["response"]["auth"]
    renewed = {body(e).token_id: e for e in of_type(outcomes, "CREDENTIAL_RENEWED")}
    token = renewed[planner["accessor"]]
    ttl = token_renewal["response"]["auth"]["token_ttl"]
    assert body(token).expires_at == at(token_renewal["time"]) + timedelta(seconds=ttl)
    assert body(token).renewed_by == f"vault-entity://{planner['entity_id']}"
    assert token.task_id == planner["metadata"]["custody_task_id"]
    lease = renewed[lease_renewal["response"]["secret"]["lease_id"]]
    # Vault audits the lease's id but not its new TTL: the requested increment stands in.
    increment = lease_renewal["request"]["data"]["increment"]
    assert body(lease).expires_at == at(lease_renewal["time"]) + timedelta(seconds=increment)
    assert token.actor.kind == "BROKER"


def revoked(outcomes: Iterable[Outcome]) -> dict[str, Envelope]:
    return {body(e).token_id: e for e in of_type(outcomes, "CREDENTIAL_REVOKED")}


def test_revoking_a_parent_token_infers_the_unaudited_revocation_of_its_descendants() -> None:
    _, outcomes = run(*SESSION, "revoke_parent")
    planner = responses("login_approle")[0]["response"]["auth"]
    research, helper = (e["response"]["auth"] for e in responses("token_create_child"))
    leases = [e["response"]["secret"]["lease_id"] for e in responses("dynamic_secret")]
    admin = responses("revoke_parent")[0]["auth"]
    found = revoked(outcomes)
    assert set(found) == {planner["accessor"], research["accessor"], helper["accessor"], *leases}
    parent = found.pop(planner["accessor"])
    assert body(parent).reason == "MANUAL"
    assert body(parent).revoked_by == f"vault-entity://{admin['entity_id']}"
    assert INFERRED_ATTRIBUTE not in parent.attributes
    for event in found.values():
        assert body(event).revoked_by == "vault"
        assert event.attributes[INFERRED_ATTRIBUTE] == f"revoked with parent {planner['accessor']}"
    assert found[research["accessor"]].task_id == research["metadata"]["custody_task_id"]
    assert found[leases[1]].task_id == research["metadata"]["custody_task_id"]
    assert found[helper["accessor"]].task_id == planner["metadata"]["custody_task_id"]


def test_revoke_orphan_revokes_the_token_alone() -> None:
    _, outcomes = run(*SESSION, "revoke_orphan")
    planner = responses("login_approle")[0]["response"]["auth"]
    assert set(revoked(outcomes)) == {planner["accessor"]}


def test_a_token_revoked_by_its_hmac_is_found_only_through_its_logged_issuance() -> None:
    _, outcomes = run("revoke_parent")
    assert outcomes == [Skipped("vault_revocation_target_unknown")]


def test_revoke_accessor_self_lease_and_prefix() -> None:
    mapper, outcomes = run(*SESSION, "revoke_accessor")
    research = responses("token_create_child")[0]["response"]["auth"]
    planner = responses("login_approle")[0]["response"]["auth"]
    db_lease, aws_lease = (e["response"]["secret"]["lease_id"] for e in responses("dynamic_secret"))
    found = revoked(outcomes)
    assert set(found) == {research["accessor"], aws_lease}
    assert body(found[research["accessor"]]).revoked_by == f"vault-entity://{planner['entity_id']}"
    assert found[aws_lease].attributes[INFERRED_ATTRIBUTE].endswith(research["accessor"])
    helper = responses("token_create_child")[1]["response"]["auth"]
    assert set(revoked(feed(mapper, load("revoke_self")))) == {helper["accessor"]}
    by_path, by_prefix = (feed(mapper, load("leases_revoke")[i : i + 2]) for i in (0, 2))
    assert set(revoked(by_path)) == {db_lease}
    # The prefix names only the AWS lease, which went with its parent token already.
    assert by_prefix == [Skipped("vault_revocation_target_unknown")]


def test_a_prefix_revocation_names_every_known_lease_under_it() -> None:
    _, outcomes = run(*SESSION, "leases_revoke")
    aws_lease = responses("dynamic_secret")[1]["response"]["secret"]["lease_id"]
    admin = responses("leases_revoke")[1]["auth"]
    prefixed = [e for e in of_type(outcomes, "CREDENTIAL_REVOKED") if body(e).token_id == aws_lease]
    assert [body(e).revoked_by for e in prefixed] == [f"vault-entity://{admin['entity_id']}"]


@pytest.mark.parametrize(
    ("mapping", "kept"),
    [
        (VaultMapping(auth_methods=["kubernetes"]), set()),
        (VaultMapping(roles=["agent-planner"]), {"planner"}),
        (VaultMapping(policies=["kv-read"]), {"research"}),
    ],
)
def test_credentials_outside_the_mapping_are_skipped_and_counted(
    mapping: VaultMapping, kept: set[str]
) -> None:
    mapper, outcomes = run(*SESSION, "kv_read", mapping=mapping)
    planner = responses("login_approle")[0]["response"]["auth"]["accessor"]
    research = responses("token_create_child")[0]["response"]["auth"]["accessor"]
    names = {planner: "planner", research: "research"}
    holders = set()
    for event in of_type(outcomes, "CREDENTIAL_ISSUED"):
        token_id = body(event).token_id
        # A lease counts as its parent token's.
        holder = token_id if token_id.startswith("hmac-sha256:") else body(event).parent_token_id
        holders.add(names.get(holder, "other"))
    holders |= {names.get(body(e).token_id, "other") for e in of_type(outcomes, "ACCESS")}
    assert holders == kept
    skipped = [o for o in outcomes if isinstance(o, Skipped)]
    assert skipped
    assert {o.reason for o in skipped} == {"vault_not_agent_credential"}
    assert mapper.counts["skipped.vault_not_agent_credential"] == len(skipped)
    assert mapper.counts["mapped"] + len(skipped) == len(outcomes)


def without_context(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stripped = copy.deepcopy(entries)
    for entry in stripped:
        for auth in (entry.get("auth"), entry.get("response", {}).get("auth")):
            if auth:
                auth.pop("metadata", None)
    return stripped


def test_a_token_without_custody_context_gets_one_deterministic_synthetic_task() -> None:
    entries = without_context(load("login_approle") + load("dynamic_secret")[:2])
    accessor = responses("login_approle")[0]["response"]["auth"]["accessor"]
    task = records.synthetic_task_id(ORIGIN, "vault-token", accessor)
    first, second = (
        events(feed(VaultAuditMapper(ORIGIN, VaultMapping()), entries)) for _ in range(2)
    )
    assert len(first) == 4
    assert {(e.task_id, e.root_task_id, e.depth) for e in first} == {(task, task, 0)}
    assert all(e.attributes[records.SYNTHETIC_ATTRIBUTE] == "true" for e in first)
    assert [e.model_dump() for e in first] == [e.model_dump() for e in second]


def test_a_replay_gives_identical_event_ids() -> None:
    names = (*SESSION, "kv_read", "errors", "renew", "revoke_accessor", "revoke_parent")
    first, second = (events(run(*names)[1]) for _ in range(2))
    ids = [e.event_id for e in first]
    assert ids == [e.event_id for e in second]
    assert len(set(ids)) == len(ids) > 20


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        (lambda e: ["not", "an", "object"], "vault_malformed_entry", "JSON object"),
        (lambda e: {**e, "type": "audit"}, "vault_entry_type_unknown", "type"),
        (lambda e: {k: v for k, v in e.items() if k != "type"}, "vault_entry_type_unknown", "type"),
        (lambda e: {**e, "request": "r"}, "vault_malformed_entry", "request"),
        (lambda e: {**e, "request": {"path": "x"}}, "vault_request_id_missing", "request.id"),
        (lambda e: {k: v for k, v in e.items() if k != "time"}, "vault_timestamp_invalid", "time"),
        (lambda e: {**e, "time": "2026-11-29T09:00:00"}, "vault_timestamp_invalid", "time"),
        (lambda e: {**e, "time": "yesterday at noon"}, "vault_timestamp_invalid", "time"),
        (lambda e: {**e, "response": [1]}, "vault_malformed_entry", "response"),
    ],
)
def test_malformed_entries_are_rejected_naming_the_field(
    change: Any, reason: str, field: str
) -> None:
    mapper = VaultAuditMapper(ORIGIN, VaultMapping())
    (outcome,) = mapper.feed(change(responses("kv_read")[0]))
    assert isinstance(outcome, Rejection)
    assert outcome.reason == reason
    assert field in outcome.detail
    assert "yesterday" not in outcome.detail
    assert mapper.counts[f"rejected.{reason}"] == 1


def test_an_invalid_custody_context_in_token_metadata_is_rejected() -> None:
    (request, response) = copy.deepcopy(load("login_approle"))
    response["response"]["auth"]["metadata"]["custody_parent_task_id"] = "task-elsewhere"
    response["response"]["auth"]["metadata"]["custody_depth"] = "0"
    mapper = VaultAuditMapper(ORIGIN, VaultMapping())
    (outcome,) = feed(mapper, [request, response])
    assert isinstance(outcome, Rejection)
    assert outcome.reason == "vault_context_invalid"
    assert "task-elsewhere" not in outcome.detail


def test_pending_requests_are_bounded_and_drained_as_unseen_failures() -> None:
    mapper = VaultAuditMapper(ORIGIN, VaultMapping(max_pending_requests=2))
    feed(mapper, load("login_approle") + load("token_create_child"))
    request = load("kv_read")[0]
    copies = [copy.deepcopy(request) for _ in range(3)]
    for index, entry in enumerate(copies):
        entry["request"]["id"] = f"pending-{index}"
    assert mapper.feed(copies[0]) == mapper.feed(copies[1]) == []
    (pushed_out,) = mapper.feed(copies[2])
    assert mapper.pending == 2
    assert isinstance(pushed_out, records.Mapped)
    access = next(e for e in pushed_out.events if e.event_type == "ACCESS")
    assert body(access).outcome == "FAILURE"
    assert body(access).detail == "the Vault response to this request was not seen"
    assert access.attributes["vault.request_id"] == "pending-0"
    drained = mapper.drain()
    assert [
        o.events[0].attributes["vault.request_id"] for o in drained if isinstance(o, records.Mapped)
    ] == [
        "pending-1",
        "pending-2",
    ]
    assert mapper.pending == 0
    assert mapper.counts["unanswered"] == 3
    late = {**copy.deepcopy(responses("kv_read")[0]), "request": copies[0]["request"]}
    assert mapper.feed(late) == [Skipped("vault_duplicate_entry")]


def test_requests_without_a_token_are_skipped_as_unauthenticated() -> None:
    mapper, outcomes = run("unauthenticated")
    assert outcomes == [Skipped("vault_unauthenticated")]
    assert mapper.counts["skipped.vault_unauthenticated"] == 1


def test_raw_logged_values_never_pass_and_a_secret_is_redacted_and_named() -> None:
    # log_raw=true: the client token is logged as is, and an error may echo raw input.
    entries = copy.deepcopy(load("login_approle") + load("kv_read"))
    for entry in entries:
        for auth in (entry.get("auth"), entry.get("response", {}).get("auth")):
            if auth and "client_token" in auth:
                auth["client_token"] = RAW_VAULT_TOKEN
        entry["request"]["client_token"] = JWT
    entries[-1]["error"] = f"backend rejected bearer {JWT}"
    outcomes = feed(VaultAuditMapper(ORIGIN, VaultMapping()), entries)
    dumped = json.dumps([e.model_dump(mode="json") for e in events(outcomes)])
    assert JWT not in dumped
    assert RAW_VAULT_TOKEN not in dumped
    (access,) = of_type(outcomes, "ACCESS")
    assert body(access).outcome == "FAILURE"
    assert "[REDACTED]" in body(access).detail
    assert access.attributes[records.REDACTED_ATTRIBUTE] == "body.detail:jwt"


def test_a_token_without_a_ttl_never_expires_so_it_is_judged_long_lived() -> None:
    request, response = copy.deepcopy(load("login_approle"))
    del response["response"]["auth"]["token_ttl"]
    outcomes = feed(VaultAuditMapper(ORIGIN, VaultMapping()), [request, response])
    (issued,) = of_type(outcomes, "CREDENTIAL_ISSUED")
    assert body(issued).expires_at - body(issued).issued_at == NON_EXPIRING


def test_the_ledger_forgets_the_least_recently_seen_past_its_capacity() -> None:
    ledger = VaultLedger(capacity=2)
    place = Placement("t", "t", None, 0, synthetic=False)
    for lease in ("a", "b", "c"):
        ledger.add_lease(lease, LeaseRecord(place, None, agent=True))
    assert ledger.lease("a") is None
    assert ledger.leases_under("") == ["b", "c"]
    assert len(ledger) == 2


def test_batch_tokens_have_no_accessor_and_are_skipped_by_name() -> None:
    request, response = copy.deepcopy(load("kv_read"))
    for entry in (request, response):
        del entry["auth"]["accessor"]
        del entry["request"]["client_token_accessor"]
        entry["auth"]["token_type"] = "batch"
    mapper = VaultAuditMapper(ORIGIN, VaultMapping())
    assert feed(mapper, [request, response]) == [Skipped("vault_batch_token")]


def test_permission_denied_is_read_from_the_error_when_vault_logs_no_policy_results() -> None:
    # Vault before 1.13 logs no auth.policy_results: the error alone says the ACL refused.
    denied = copy.deepcopy(load("errors")[:2])
    for entry in denied:
        del entry["auth"]["policy_results"]
    mapper = VaultAuditMapper(ORIGIN, VaultMapping())
    outcomes = feed(mapper, load("login_approle") + load("token_create_child") + denied)
    (access,) = of_type(outcomes, "ACCESS")
    assert body(access).outcome == "DENIED"
    assert body(access).data_scope == []
    decision = next(
        e
        for e in of_type(outcomes, "AUTHZ_DECISION")
        if e.attributes["vault.request_id"] == denied[0]["request"]["id"]
    )
    assert body(decision).decision == "DENY"


def test_an_orphan_token_has_no_parent_and_outlives_its_creator_s_revocation() -> None:
    entries = load("login_approle") + copy.deepcopy(load("token_create_child"))
    for entry in entries[4:]:
        entry["request"]["path"] = "auth/token/create-orphan"
    mapper = VaultAuditMapper(ORIGIN, VaultMapping())
    outcomes = feed(mapper, entries)
    helper = responses("token_create_child")[1]["response"]["auth"]
    planner = responses("login_approle")[0]["response"]["auth"]
    (orphan,) = (
        e for e in of_type(outcomes, "CREDENTIAL_ISSUED") if body(e).token_id == helper["accessor"]
    )
    assert body(orphan).parent_token_id is None
    assert orphan.task_id == planner["metadata"]["custody_task_id"]
    assert helper["accessor"] not in revoked(feed(mapper, load("revoke_parent")))


def test_agent_tokens_under_a_token_outside_the_mapping_are_still_revoked_with_it() -> None:
    # Only the child tokens count; revoking the (uncounted) planner token takes them along.
    _, outcomes = run(*SESSION, "revoke_parent", mapping=VaultMapping(auth_methods=["token"]))
    planner = responses("login_approle")[0]["response"]["auth"]["accessor"]
    research, helper = (e["response"]["auth"]["accessor"] for e in responses("token_create_child"))
    aws_lease = responses("dynamic_secret")[1]["response"]["secret"]["lease_id"]
    found = revoked(outcomes)
    assert set(found) == {research, helper, aws_lease}
    assert all(body(e).revoked_by == "vault" for e in found.values())
    assert found[research].attributes[INFERRED_ATTRIBUTE] == f"revoked with parent {planner}"
