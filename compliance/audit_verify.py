"""Checking the whole audit log: what was changed, and where.

Every entry is re-hashed from its content (stored leaf hashes are not trusted), the tree is
rebuilt from those hashes, and compared with what was stored and what was signed:

============== ===========================================================================
kind           meaning (``seq`` is where)
============== ===========================================================================
missing        no entry with this sequence number: a row was deleted
deleted        entries from here on were renumbered down by one: the one before was deleted
inserted       entries after this one were renumbered up by one: this one was inserted
reordered      this entry was hashed at another position (``detail`` says which): moved
modified       the content differs from what was hashed (the stored hash is intact)
hash_altered   the stored hash differs while the content still fits the tree: hash edited
rewritten      content and its hash agree, but the tree after it does not: content changed
               and its hash recomputed (or an entry inserted with a forged hash)
node_altered   a stored inner node differs from the rebuilt one
head_signature a signed tree head's signature does not verify
head_root      a signed head does not match the rebuilt tree; ``seq`` is the first entry it
               covers beyond the previous good head (the change is in that range)
truncated      a signed head covers more entries than the log holds
============== ===========================================================================

An attacker who rewrites an entry *and* every hash and node after it is caught only by a
signed head (``head_root``), which bounds the change to the entries added between two heads;
entries after the newest head are reported as ``unsigned_tail``. Sign heads often.
Cost: one pass over the entries, O(n) hashing, memory for the inner nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from compliance import merkle
from compliance.audit import entry_bytes
from compliance.models import AuditEntry, AuditNode, AuditTreeHead
from compliance.signing import public_key_id, verify_tree_head

MAX_MISMATCHES_ANALYSED = 500


@dataclass(frozen=True)
class Problem:
    """``seq`` is where; for ``head_root`` the change lies somewhere in ``seq..last_seq``."""

    kind: str
    seq: int | None
    detail: str
    last_seq: int | None = None


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    entries: int
    heads_checked: int
    signed_size: int  # entries covered by the newest good signed head
    problems: list[Problem] = field(default_factory=list)

    @property
    def first_bad_seq(self) -> int | None:
        exact = [p.seq for p in self.problems if p.seq is not None and p.last_seq is None]
        ranges = [p.seq for p in self.problems if p.seq is not None and p.last_seq is not None]
        return min(exact) if exact else min(ranges) if ranges else None

    @property
    def unsigned_tail(self) -> int:
        return max(0, self.entries - self.signed_size)


def verify(session: Session, public_keys: Sequence[Ed25519PublicKey]) -> VerifyReport:
    keys = {public_key_id(k): k for k in public_keys}
    heads = list(session.scalars(select(AuditTreeHead).order_by(AuditTreeHead.tree_size, AuditTreeHead.id)))
    stored_nodes = {(lvl, idx): h for lvl, idx, h in session.execute(select(AuditNode.level, AuditNode.idx, AuditNode.hash))}
    problems: list[Problem] = []
    mismatched: list[tuple[AuditEntry, bool]] = []
    roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT}
    head_sizes = {h.tree_size for h in heads}
    truth = merkle.Frontier()  # from content alone: what signed heads are checked against
    edge = merkle.Frontier()  # follows stored hashes past a bad entry, to locate the next one
    tree_broken = False
    expected = 0
    for row in session.scalars(select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=2000)):
        if row.seq != expected:
            problems.append(Problem("missing", expected, f"entries {expected}..{row.seq - 1} are missing"))
            tree_broken, expected = True, row.seq
        expected += 1
        leaf = merkle.leaf_hash(entry_bytes(row))
        truth.append(leaf)
        if truth.size in head_sizes:
            roots[truth.size] = truth.root()
        if leaf != row.leaf_hash:
            trial = merkle.Frontier(edge.size, edge.nodes)
            trial.append(leaf)
            hash_only = trial.root() == row.root_after
            edge.append(leaf if hash_only else row.leaf_hash)
            if len(mismatched) < MAX_MISMATCHES_ANALYSED:
                mismatched.append((row, hash_only))
            continue
        completed = edge.append(leaf)
        if tree_broken:
            continue
        for lvl, idx, h in completed:
            if stored_nodes.get((lvl, idx)) != h:
                problems.append(Problem("node_altered", idx << lvl,
                                        f"stored node level {lvl} index {idx} (entries {idx << lvl}.."
                                        f"{((idx + 1) << lvl) - 1}) differs from the entries",
                                        last_seq=((idx + 1) << lvl) - 1))
                tree_broken = True
        if not tree_broken and edge.root() != row.root_after:
            problems.append(Problem("rewritten", row.seq, "entry and its hash agree but the tree after it does not"))
            tree_broken = True
    size = expected
    problems += _classify(mismatched)
    signed_size, checked = 0, 0
    for head in heads:
        checked += 1
        key = keys.get(head.key_id)
        if key is None or not verify_tree_head(key, head.tree_size, head.timestamp_ms, head.root_hash, head.signature):
            problems.append(Problem("head_signature", None, f"tree head at size {head.tree_size}: bad signature"))
            continue
        if head.tree_size > size:
            problems.append(Problem("truncated", size, f"a head signed {head.tree_size} entries, the log has {size}"))
        elif roots.get(head.tree_size) != head.root_hash:
            problems.append(Problem("head_root", signed_size,
                                    f"tree head at size {head.tree_size} does not match entries "
                                    f"{signed_size}..{head.tree_size - 1}", head.tree_size - 1))
        else:
            signed_size = head.tree_size
    problems.sort(key=lambda p: (p.seq is None, p.last_seq is not None, p.seq or 0))
    return VerifyReport(not problems, size, checked, signed_size, problems)


def _classify(mismatched: list[tuple[AuditEntry, bool]]) -> list[Problem]:
    """Name what happened to entries whose content no longer gives their stored hash."""
    problems: list[Problem] = []
    seqs = [row.seq for row, _ in mismatched]
    shift: dict[int, int] = {}
    for row, _ in mismatched:
        for offset in (-1, 1):
            if merkle.leaf_hash(entry_bytes(row, seq=row.seq + offset)) == row.leaf_hash:
                shift[row.seq] = offset
                break
    for row, hash_only in mismatched:
        offset = shift.get(row.seq)
        if offset == -1 and shift.get(row.seq - 1) != -1:
            problems.append(Problem("inserted", row.seq - 1,
                                    f"entries from {row.seq} on were renumbered up by one"))
        elif offset == 1 and shift.get(row.seq - 1) != 1:
            problems.append(Problem("deleted", row.seq,
                                    f"entries from {row.seq} on were renumbered down by one"))
        elif offset is not None:
            continue
        else:
            moved = next((s for s in seqs if s != row.seq and
                          merkle.leaf_hash(entry_bytes(row, seq=s)) == row.leaf_hash), None)
            if moved is not None:
                problems.append(Problem("reordered", row.seq, f"this entry was written as entry {moved}"))
            elif hash_only:
                problems.append(Problem("hash_altered", row.seq, "the stored hash was changed; content intact"))
            else:
                problems.append(Problem("modified", row.seq, "content differs from what was hashed"))
    return problems
