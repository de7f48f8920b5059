"""The hash chain of one producer instance."""

from __future__ import annotations

import hashlib

from producers.chain import HashChain, body_hash


def test_chain_numbers_from_one_and_links_to_the_previous_body() -> None:
    chain = HashChain()
    first = chain.next_link()
    assert (first.seq, first.prev_hash) == (1, None)
    chain.advance(first.seq, b"body-1")
    second = chain.next_link()
    assert second.seq == 2
    assert second.prev_hash == hashlib.sha256(b"body-1").hexdigest() == body_hash(b"body-1")
    assert len(second.prev_hash) == 64
    assert second.prev_hash == second.prev_hash.lower()


def test_a_link_not_advanced_is_handed_out_again() -> None:
    chain = HashChain()
    chain.advance(chain.next_link().seq, b"a")
    refused = chain.next_link()
    assert chain.next_link() == refused
    chain.advance(refused.seq, b"b")
    assert chain.next_link().seq == 3
    assert chain.last_seq == 2
