"""RFC 6962 §2.1 trees, checked against a literal transcription of the RFC's definitions."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from compliance import merkle


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def naive_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return sha(b"")
    if n == 1:
        return sha(b"\x00" + d[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return sha(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:]))


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return naive_path(m, d[:k]) + [naive_mth(d[k:])]
    return naive_path(m - k, d[k:]) + [naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return naive_subproof(m, d[:k], b) + [naive_mth(d[k:])]
    return naive_subproof(m - k, d[k:], False) + [naive_mth(d[:k])]


data_lists = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@given(data_lists)
def test_root_matches_the_rfc_definition_and_the_growing_frontier(d):
    leaves = [merkle.leaf_hash(x) for x in d]
    assert merkle.root(leaves) == naive_mth(d)
    edge = merkle.Frontier()
    for leaf in leaves:
        edge.append(leaf)
    assert edge.root() == naive_mth(d)


@given(data_lists, st.data())
def test_inclusion_proofs_match_the_rfc_and_verify(d, data):
    m = data.draw(st.integers(0, len(d) - 1))
    leaves = [merkle.leaf_hash(x) for x in d]
    proof = merkle.inclusion_proof(m, len(d), merkle.ListHasher(leaves))
    assert proof == naive_path(m, d)
    root = naive_mth(d)
    assert merkle.verify_inclusion(leaves[m], m, len(d), proof, root)
    assert not merkle.verify_inclusion(merkle.leaf_hash(b"other" + d[m]), m, len(d), proof, root)
    if len(d) > 1:
        assert not merkle.verify_inclusion(leaves[m], (m + 1) % len(d), len(d), proof, root) or d[m] == d[(m + 1) % len(d)]


@given(data_lists, st.data())
def test_consistency_proofs_match_the_rfc_and_verify(d, data):
    m = data.draw(st.integers(1, len(d)))
    leaves = [merkle.leaf_hash(x) for x in d]
    proof = merkle.consistency_proof(m, len(d), merkle.ListHasher(leaves))
    assert proof == ([] if m == len(d) else naive_subproof(m, d, True))
    assert merkle.verify_consistency(m, len(d), naive_mth(d[:m]), naive_mth(d), proof)
    if m < len(d):
        assert not merkle.verify_consistency(m, len(d), naive_mth(d[:m] + [b"x"]) if m > 1 else sha(b"z"),
                                             naive_mth(d), proof)


@settings(max_examples=50)
@given(data_lists)
def test_the_frontier_completes_exactly_the_perfect_subtrees(d):
    leaves = [merkle.leaf_hash(x) for x in d]
    hasher = merkle.ListHasher(leaves)
    edge = merkle.Frontier()
    seen = {}
    for leaf in leaves:
        for lvl, idx, h in edge.append(leaf):
            seen[(lvl, idx)] = h
    for (lvl, idx), h in seen.items():
        assert h == hasher.perfect(lvl, idx)
    expected = {(lvl, i) for lvl in range(1, 8) for i in range(len(d) >> lvl)}
    assert set(seen) == expected


def test_the_subtrees_a_proof_needs_are_logarithmic_in_number():
    needed = merkle.subtrees_needed(lambda mth: merkle.inclusion_proof(123_456, 1_000_000, mth))
    assert len(needed) <= 2 * 20


def test_leaf_and_node_hashes_are_domain_separated():
    assert merkle.leaf_hash(b"ab") == sha(b"\x00ab")
    assert merkle.node_hash(b"a", b"b") == sha(b"\x01ab")
    assert merkle.root([]) == sha(b"")
