"""The collector's edges without a broker: upload bodies (gzip undone, bounded, broken
streams named) and collect tokens (shown once, only hashes kept, bound to tenant and
source)."""

from __future__ import annotations

import gzip
import json
import stat
import uuid
from pathlib import Path

import pytest

from processors.collect.records import EVENT_ID_NAMESPACE, Origin, event_id_for
from processors.collect.service import BodyError, bearer_token, decoded_body
from processors.collect.tokens import TokenError, TokenStore, issue_token, looks_like_token
from processors.collect.vault_socket import split_prefix

LIMIT = 64 * 1024


def test_a_gzip_body_is_inflated() -> None:
    body = json.dumps([{"decision_id": "d1"}]).encode()
    assert decoded_body(gzip.compress(body), "gzip", LIMIT) == body
    assert decoded_body(body, "", LIMIT) == body
    assert decoded_body(body, "identity", LIMIT) == body


@pytest.mark.parametrize(
    ("raw", "encoding", "status", "reason"),
    [
        (gzip.compress(b"[" + b" " * LIMIT + b"]"), "gzip", 413, "too_large"),
        (b" " * (LIMIT + 1), "", 413, "too_large"),
        (gzip.compress(b"[]")[:-6], "gzip", 400, "bad_gzip"),
        (b"plain text", "gzip", 400, "bad_gzip"),
        (gzip.compress(b"[]") + b"trailing", "gzip", 400, "bad_gzip"),
        (b"[]", "br", 415, "unsupported_encoding"),
    ],
)
def test_bodies_that_cannot_be_taken_are_named(
    raw: bytes, encoding: str, status: int, reason: str
) -> None:
    with pytest.raises(BodyError) as caught:
        decoded_body(raw, encoding, LIMIT)
    assert (caught.value.status, caught.value.reason) == (status, reason)


def test_a_token_is_returned_once_and_only_its_hash_kept(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = issue_token(path, "acme", "opa-prod")
    assert looks_like_token(token)
    kept = path.read_text()
    assert token not in kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store = TokenStore(path)
    assert store.origin_of(token) == Origin("acme", "opa-prod")
    assert store.origin_of(token[:-1] + ("x" if token[-1] != "x" else "y")) is None
    assert store.origin_of("") is None


def test_a_token_made_while_the_store_is_read_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    first = issue_token(path, "acme", "opa-prod")
    assert store.origin_of(first) == Origin("acme", "opa-prod")
    second = issue_token(path, "globex", "vault-prod")
    assert store.origin_of(second) == Origin("globex", "vault-prod")
    assert store.origin_of(first) == Origin("acme", "opa-prod")


@pytest.mark.parametrize(("tenant", "source"), [("", "opa"), ("acme", "a b"), ("acme", "../x")])
def test_names_a_token_cannot_bind_are_refused(tmp_path: Path, tenant: str, source: str) -> None:
    with pytest.raises(TokenError):
        issue_token(tmp_path / "tokens.json", tenant, source)


def test_the_bearer_scheme_is_read_case_insensitively() -> None:
    assert bearer_token("Bearer t") == "t"
    assert bearer_token("bearer  t ") == "t"
    assert bearer_token("Basic t") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token("") is None


def test_a_vault_line_splits_into_its_prefix_and_entry() -> None:
    assert split_prefix(b'cct_abc{"type":"request"}\n') == (b"cct_abc", b'{"type":"request"}\n')
    assert split_prefix(b'{"type":"request"}\n') == (b"", b'{"type":"request"}\n')
    assert split_prefix(b"no entry\n") == (b"no entry", b"")


@pytest.mark.parametrize("parts", [("opa", "d-1"), ("vault", "r-1", "ISSUED", "tok"), ("é", "")])
def test_derived_event_ids_are_the_uuid5_of_their_name(parts: tuple[str, ...]) -> None:
    origin = Origin("acme", "opa-prod")
    name = "\x1f".join((origin.tenant, origin.source, *parts))
    assert event_id_for(origin, *parts) == str(uuid.uuid5(EVENT_ID_NAMESPACE, name))
