"""Merkle hash trees exactly as RFC 6962 §2.1 defines them (Certificate Transparency).

- leaf hash ``H(0x00 || d)``, node hash ``H(0x01 || left || right)`` with SHA-256, so a
  leaf can never be passed off as an inner node (second pre-image resistance, §2.1);
- ``MTH(D[n])`` splits at ``k``, the largest power of two smaller than ``n``;
- ``PATH(m, D[n])`` (§2.1.1) proves leaf ``m`` is in a tree of size ``n``;
- ``PROOF(m, D[n])`` (§2.1.2) proves the tree of size ``m`` is a prefix of the one of size ``n``.

Generation is written once against a *range hasher* — a function giving ``MTH(D[a:b])``
for the ranges the RFC's recursion visits. Every such range is either a perfect,
aligned subtree (``b - a`` a power of two and ``a`` a multiple of it) or splits into one,
so a store that keeps the perfect subtrees (see ``compliance.audit``) answers any root or
proof with O(log n) look-ups. :func:`subtrees_needed` tells such a store which ones to fetch.
Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2, which verify the same proofs.

>>> leaves = [leaf_hash(bytes([i])) for i in range(5)]
>>> proof = inclusion_proof(3, 5, ListHasher(leaves))
>>> verify_inclusion(leaves[3], 3, 5, proof, root(leaves))
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

Hash = bytes
RangeHasher = Callable[[int, int], Hash]

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> Hash:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: Hash, right: Hash) -> Hash:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def is_perfect(start: int, end: int) -> bool:
    size = end - start
    return size > 0 and size & (size - 1) == 0 and start % size == 0


def perfect_level(start: int, end: int) -> tuple[int, int]:
    """``(level, index)`` of the perfect aligned subtree covering ``[start, end)``."""
    level = (end - start).bit_length() - 1
    return level, start >> level


def range_hash(start: int, end: int, perfect: Callable[[int, int], Hash]) -> Hash:
    """``MTH(D[start:end])`` from perfect subtree hashes ``perfect(level, index)``."""
    if is_perfect(start, end):
        return perfect(*perfect_level(start, end))
    k = split_point(end - start)
    return node_hash(range_hash(start, start + k, perfect), range_hash(start + k, end, perfect))


def inclusion_proof(index: int, size: int, mth: RangeHasher) -> list[Hash]:
    """``PATH(index, D[size])``, RFC 6962 §2.1.1, leaf-side first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    return _path(index, 0, size, mth)


def _path(m: int, start: int, end: int, mth: RangeHasher) -> list[Hash]:
    n = end - start
    if n == 1:
        return []
    k = split_point(n)
    if m < k:
        return _path(m, start, start + k, mth) + [mth(start + k, end)]
    return _path(m - k, start + k, end, mth) + [mth(start, start + k)]


def consistency_proof(old_size: int, new_size: int, mth: RangeHasher) -> list[Hash]:
    """``PROOF(old_size, D[new_size])``, RFC 6962 §2.1.2."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    return _subproof(old_size, 0, new_size, True, mth)


def _subproof(m: int, start: int, end: int, whole: bool, mth: RangeHasher) -> list[Hash]:
    n = end - start
    if m == n:
        return [] if whole else [mth(start, end)]
    k = split_point(n)
    if m <= k:
        return _subproof(m, start, start + k, whole, mth) + [mth(start + k, end)]
    return _subproof(m - k, start + k, end, False, mth) + [mth(start, start + k)]


def subtrees_needed(plan: Callable[[RangeHasher], object]) -> set[tuple[int, int]]:
    """The perfect subtrees ``(level, index)`` a computation reads, found by running it
    against placeholder hashes; the shape of the RFC recursion never depends on values."""
    needed: set[tuple[int, int]] = set()

    def record(level: int, index: int) -> Hash:
        needed.add((level, index))
        return EMPTY_ROOT

    plan(lambda a, b: range_hash(a, b, record))
    return needed


def verify_inclusion(
    leaf: Hash, index: int, size: int, proof: Sequence[Hash], root_hash: Hash
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` put ``leaf`` at ``index`` under ``root_hash``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def verify_consistency(
    old_size: int, new_size: int, old_root: Hash, new_root: Hash, proof: Sequence[Hash]
) -> bool:
    """RFC 9162 §2.1.4.2: is the tree ``old_root`` of ``old_size`` a prefix of ``new_root``?"""
    if old_size > new_size or old_size < 0:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is itself a node
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class ListHasher:
    """A range hasher over leaf hashes held in memory, with perfect subtrees memoised."""

    def __init__(self, leaves: Sequence[Hash]) -> None:
        self.leaves = leaves
        self._memo: dict[tuple[int, int], Hash] = {}

    def perfect(self, level: int, index: int) -> Hash:
        if level == 0:
            return self.leaves[index]
        found = self._memo.get((level, index))
        if found is None:
            found = node_hash(self.perfect(level - 1, 2 * index), self.perfect(level - 1, 2 * index + 1))
            self._memo[(level, index)] = found
        return found

    def __call__(self, start: int, end: int) -> Hash:
        return range_hash(start, end, self.perfect)


def root(leaves: Sequence[Hash]) -> Hash:
    """``MTH`` of leaf hashes (the empty tree's root is ``SHA-256("")``)."""
    return ListHasher(leaves)(0, len(leaves)) if leaves else EMPTY_ROOT


class Frontier:
    """The right edge of a growing tree: the perfect subtrees whose sizes are the set bits
    of ``size``, largest first. Appending is amortised O(1); ``root()`` is O(log n).
    ``append`` returns the inner nodes it completed, for a store to keep."""

    def __init__(self, size: int = 0, nodes: Sequence[tuple[int, Hash]] = ()) -> None:
        self.size = size
        self.nodes: list[tuple[int, Hash]] = list(nodes)  # (level, hash), left to right

    @staticmethod
    def positions(size: int) -> list[tuple[int, int]]:
        """``(level, index)`` of the frontier subtrees of a tree of ``size`` leaves."""
        out, start = [], 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                out.append((level, start >> level))
                start += 1 << level
        return out

    def append(self, leaf: Hash) -> list[tuple[int, int, Hash]]:
        completed: list[tuple[int, int, Hash]] = []
        level, h, index = 0, leaf, self.size
        while self.nodes and self.nodes[-1][0] == level:
            _, left = self.nodes.pop()
            h, level, index = node_hash(left, h), level + 1, index >> 1
            completed.append((level, index, h))
        self.nodes.append((level, h))
        self.size += 1
        return completed

    def root(self) -> Hash:
        if not self.nodes:
            return EMPTY_ROOT
        r = self.nodes[-1][1]
        for _, h in reversed(self.nodes[:-1]):
            r = node_hash(h, r)
        return r
