"""Renewals (schema v2's ``CREDENTIAL_RENEWED``): how a renewal moves a token's expiry.

A token's expiry is the latest of its issued ``expires_at`` and the ``expires_at`` of every
renewal of it: a renewal never shortens it. Of a token's renewals only the one with the
latest ``expires_at`` can matter, so a tree keeps that one (ties: the earliest by event
time, then event id, so any arrival order keeps the same one), also for a token whose
issuance has not arrived yet: the issuance takes it up when it comes.

A renewal is taken at its word, whenever it happened: a broker that renews a token vouches
that it was renewable. (Vault refuses to renew an expired token, so its renewals never
revive one; an access between a lapse and a later renewal is judged by the renewed expiry.)
"""

from __future__ import annotations

from processors.correlation.tree import AccessRec, RenewalRec, TokenRec, TreeState

# The separator of a deadline's compound key, as the engine joins it.
SEP = "\x1f"


def keep(state: TreeState, renewal: RenewalRec) -> bool:
    """Keep ``renewal`` if it sets its token's latest renewed expiry; True when that expiry
    moved later (a duplicate, an earlier or an equal expiry moves nothing)."""
    old = state.renewals.get(renewal.token_id)
    if old is None:
        state.renewals[renewal.token_id] = renewal
        return True
    if renewal.expires_us < old.expires_us:
        return False
    if renewal.expires_us == old.expires_us:
        if (renewal.us, renewal.event_id) < (old.us, old.event_id):
            renewal.moves = old.moves
            state.renewals[renewal.token_id] = renewal
        return False
    renewal.moves = old.moves + 1
    state.renewals[renewal.token_id] = renewal
    return True


def extend(state: TreeState, token: TokenRec) -> bool:
    """Move ``token``'s expiry to its kept renewal's when that is later; True when it moved."""
    renewal = state.renewals.get(token.token_id)
    if renewal is None or renewal.expires_us <= token.expires_us:
        return False
    token.expires_us = renewal.expires_us
    return True


def source(state: TreeState, token: TokenRec) -> RenewalRec | None:
    """The renewal ``token``'s expiry comes from, if a renewal set it."""
    renewal = state.renewals.get(token.token_id)
    return renewal if renewal is not None and renewal.expires_us == token.expires_us else None


def moves(state: TreeState, token_id: str) -> int:
    """How many times the token's renewed expiry moved later (0 without a renewal)."""
    renewal = state.renewals.get(token_id)
    return 0 if renewal is None else renewal.moves


def expired_use(state: TreeState, key: str) -> tuple[AccessRec, TokenRec, RenewalRec | None] | None:
    """The access of an ``EXPIRED_USE`` deadline (``token_id + SEP + access event id``), its
    token and the renewal its expiry comes from, if the access is after that expiry."""
    # Access ids are UUIDs: the separator can only be the token id's own.
    token_id, access_id = key.rsplit(SEP, 1)
    token = state.tokens[token_id]
    kept = state.accesses.get(token_id, ())
    access = next((a for a in kept if a.event_id == access_id), None)
    if access is None or access.us <= token.expires_us:
        return None
    return access, token, source(state, token)
