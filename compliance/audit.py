"""The append-only, tamper-evident audit log (GDPR art. 5(2), 30, 32).

Each entry is a leaf of an RFC 6962 Merkle tree: ``seq`` is its leaf index (from 0) and the
leaf data is the entry's canonical JSON (keys sorted, no spaces, UTF-8), *including* ``seq``
so that moving an entry changes its hash. Entries carry pseudonyms (``patient:<id>``, blind
indexes), never names, numbers or addresses: after erasure the log still verifies, and
nothing in it identifies the patient.

Appending is O(log n) database work: it reads the right edge of the tree (at most log2 n
stored subtree roots), writes the entry, the perfect subtrees it completes (amortised one)
and ``root_after`` (the root of the tree ending with this entry). Appends are serialised:
``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on PostgreSQL, held until
the caller commits — keep the transaction short after appending.

Tree heads are signed with Ed25519 (:mod:`compliance.signing`); proofs are RFC 6962
``PATH``/``PROOF``; :func:`compliance.audit_verify.verify` says what was changed and where.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sqlalchemy import Select, and_, func, or_, select, text
from sqlalchemy.orm import Session, sessionmaker

from adapter.db import insert_rows
from compliance import merkle
from compliance.errors import AuditError, AuditIntegrityError, PersonalDataInAudit
from compliance.models import AuditEntry, AuditNode, AuditTreeHead
from compliance.pseudonyms import FISCAL_CODE, is_pseudonym
from compliance.signing import AuditSigner

if TYPE_CHECKING:
    from compliance.audit_verify import VerifyReport

AuditAction = Literal[
    "received", "scheduled", "suppressed", "cancelled", "sent", "delivered", "failed",
    "replied", "consent_changed", "exported", "erased", "objected", "retention_purged",
    "audit_read", "audit_verified", "key_rotated", "auth_failed", "accessed", "hl7_sender_refused",
    "hl7_replayed",
]
ACTIONS: frozenset[str] = frozenset(AuditAction.__args__)  # type: ignore[attr-defined]
Outcome = Literal["success", "minor_failure", "serious_failure", "major_failure"]
OUTCOMES: frozenset[str] = frozenset(Outcome.__args__)  # type: ignore[attr-defined]
# The adapter acting on its own (a message received, a notice scheduled, a retention purge):
# "adapter", or "adapter:<job>". People act as "token:<id>:<role>" or "cli".
SYSTEM_ACTOR = "adapter"


def is_system_actor(actor: str) -> bool:
    """Whether an entry was made by the adapter itself, not at someone's request."""
    return actor == SYSTEM_ACTOR or actor.startswith(f"{SYSTEM_ACTOR}:")


_ADVISORY_LOCK = 0x61756469  # "audi"
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[A-Za-z]{2,}")
# A digit run inside a larger token (a UUID, "Appointment/123/_history/4") is not a phone.
_PHONE = re.compile(r"(?<![\w.:/-])\+?\d[\d ()./-]{6,}\d(?![\w:/-])")
_DATE_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_PERSONAL_KEYS = frozenset(
    {"name", "given_name", "family_name", "first_name", "last_name", "phone", "email", "address",
     "fiscal_code", "codice_fiscale", "body", "text", "birth_date", "mrn"}
)
# Keys whose values name a message or a sending system as that system wrote them: MSH-10
# (``780123456``, ``20240115143022``), MSH-3/MSH-4 (``ATHENANET^18802555``, an OID). Many
# senders number them, so the phone heuristic, which any run of eight digits trips, is not
# run on them; the e-mail and fiscal code checks are.
_SYSTEM_ID_KEYS = frozenset({"ref", "sender", "facility"})


@dataclass(frozen=True)
class AuditRecord:
    """An entry as read back: what happened, to whom (pseudonym), by whom, why, when."""

    seq: int
    at: datetime
    action: str
    outcome: str
    actor: str
    subject: str
    reason: str
    details: dict[str, Any]
    leaf_hash: bytes


@dataclass(frozen=True)
class AuditDraft:
    """An entry to append: what happened, to whom (a pseudonym, or ``""`` for none), by
    whom, why, when (timezone-aware)."""

    action: str
    actor: str
    subject_pseudonym: str
    at: datetime
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    outcome: str = "success"

    def check(self) -> None:
        """Refuse what must never reach a leaf (:class:`AuditError`, :class:`PersonalDataInAudit`)."""
        if self.action not in ACTIONS:
            raise AuditError(f"unknown audit action {self.action!r}")
        if self.outcome not in OUTCOMES:
            raise AuditError(f"unknown outcome {self.outcome!r}")
        if self.at.tzinfo is None:
            raise AuditError("audit time must be timezone-aware")
        check_no_personal_data(actor=self.actor, subject=self.subject_pseudonym, reason=self.reason,
                               details=self.details)


@dataclass(frozen=True)
class TreeHead:
    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    key_id: str
    signature: bytes


@dataclass(frozen=True)
class InclusionProof:
    leaf_index: int
    tree_size: int
    leaf_hash: bytes
    path: list[bytes]
    root_hash: bytes

    def verify(self) -> bool:
        return merkle.verify_inclusion(self.leaf_hash, self.leaf_index, self.tree_size, self.path, self.root_hash)


@dataclass(frozen=True)
class ConsistencyProof:
    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    path: list[bytes]

    def verify(self) -> bool:
        return merkle.verify_consistency(self.old_size, self.new_size, self.old_root, self.new_root, self.path)


# The canonical JSON encoder, made once: json.dumps with these options makes a new one on
# every call, which cost more than encoding an entry's few details.
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def canonical_details(details: Mapping[str, Any]) -> str:
    return _canonical(details)


@dataclass(slots=True)
class _NewEntry:
    """An ``audit_entry`` row being appended (a plain object: an ORM instance costs more
    to build than the insert of it)."""

    seq: int
    at: datetime
    action: str
    outcome: str
    actor: str
    subject: str
    reason: str
    details: str
    leaf_hash: bytes = b""
    root_after: bytes = b""


def _at_text(at: datetime) -> str:
    """An entry's time as its leaf data writes it."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def entry_bytes(row: AuditEntry | _NewEntry, *, seq: int | None = None, details: Any = None) -> bytes:
    """The leaf data of an entry: its canonical JSON (``seq`` may be overridden, to test
    whether an entry was moved; ``details``: the row's details already read from its JSON)."""
    return _canonical(
        {
            "seq": row.seq if seq is None else seq,
            "at": _at_text(row.at),
            "action": row.action,
            "outcome": row.outcome,
            "actor": row.actor,
            "subject": row.subject,
            "reason": row.reason,
            "details": json.loads(row.details) if details is None else details,
        },
    ).encode()


_SCALARS = (str, int, bool, type(None))  # JSON that reads back as it was written (float aside)
_text = json.encoder.encode_basestring  # a JSON string, as _canonical writes it


def _reads_back_the_same(details: Mapping[str, Any]) -> bool:
    """Flat details with text keys and text, integer, boolean or null values: their
    canonical JSON reads back as an equal dict (no tuple turns into a list, no key
    into text), so it need not be read back."""
    return all(type(key) is str and type(value) in _SCALARS for key, value in details.items())


def _new_entry_bytes(row: _NewEntry, at: str | None = None) -> bytes:
    """:func:`entry_bytes` of a new entry whose ``details`` JSON is canonical and reads
    back the same: the same bytes, spliced instead of encoded again (the keys in the
    sorted order ``json.dumps(sort_keys=True)`` gives them). ``at``: ``_at_text(row.at)``,
    when the caller has it."""
    return (
        f'{{"action":{_text(row.action)},"actor":{_text(row.actor)},'
        f'"at":"{at or _at_text(row.at)}",'
        f'"details":{row.details},"outcome":{_text(row.outcome)},"reason":{_text(row.reason)},'
        f'"seq":{int(row.seq)},"subject":{_text(row.subject)}}}'
    ).encode()


def check_no_personal_data(*, actor: str, subject: str, reason: str, details: Mapping[str, Any]) -> None:
    """A guard, not a proof: refuses pseudonym-less subjects, personal-looking keys and values
    that look like an e-mail address, a phone number or a fiscal code."""
    if not is_pseudonym(subject):
        raise PersonalDataInAudit(f"subject {subject[:3]!r}… is not a pseudonym (kind:id)")
    _check_strings(details, "details")
    _check_value("actor", actor)
    _check_value("reason", reason)


_NOT_TEXT = frozenset({int, bool, float, type(None)})


def _check_strings(value: Any, where: str) -> None:
    """Every key and text value in ``value``, depth first. The common entry is flat: its
    values are checked here, without a call each, and a value's place is only written
    out for one not known clean."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if str(key).lower() in _PERSONAL_KEYS:
                raise PersonalDataInAudit(f"{where}.{key}: personal field names are not allowed")
            if type(item) is str:
                if item not in _CLEAN:
                    _check_value(f"{where}.{key}", item, phones=str(key) not in _SYSTEM_ID_KEYS)
            elif type(item) not in _NOT_TEXT:
                _check_strings(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_strings(item, f"{where}[{i}]")
    elif isinstance(value, str):
        _check_value(where, value)


# Values already found clean (the same actors, sources, kinds and rule ids recur in every
# entry): looked up before the patterns are run. Only clean values are kept; bounded.
_CLEAN: set[str] = set()
_CLEAN_MAX = 4096


def _check_value(where: str, value: str, *, phones: bool = True) -> None:
    if value in _CLEAN:
        return
    if _EMAIL.search(value):
        raise PersonalDataInAudit(f"{where}: looks like an e-mail address")
    for match in _PHONE.finditer(value) if phones else ():
        digits = re.sub(r"\D", "", match.group())
        if len(digits) >= 8 and not _DATE_LIKE.match(match.group()):
            raise PersonalDataInAudit(f"{where}: looks like a phone number")
    if any(FISCAL_CODE.match(word) for word in re.findall(r"[A-Z0-9]{16}", value.upper())):
        raise PersonalDataInAudit(f"{where}: looks like a fiscal code")
    if not phones:
        return  # not remembered as clean: the same text under another key is checked whole
    if len(_CLEAN) >= _CLEAN_MAX:
        _CLEAN.clear()
    _CLEAN.add(value)


_LOCKED = "compliance.audit_locked_in"
_ENTRY_COLUMNS = [c.key for c in AuditEntry.__table__.columns]
_ENTRY_TABLE = AuditEntry.__table__
_NODE_TABLE = AuditNode.__table__
_LAST_ENTRY = select(AuditEntry.seq, AuditEntry.root_after).order_by(AuditEntry.seq.desc()).limit(1)


class AuditLog:
    """The audit log over the project's database; ``signer`` signs its tree heads."""

    def __init__(self, sessions: sessionmaker[Session], signer: AuditSigner,
                 *, retired_keys: Sequence[Ed25519PublicKey] = ()) -> None:
        self.sessions = sessions
        self.signer = signer
        self.trusted_keys = [signer.public_key, *retired_keys]  # heads signed by older keys
        self._edge: merkle.Frontier | None = None
        self._edge_root = merkle.EMPTY_ROOT
        self._edge_tx: object = None  # the transaction that last appended, holding the lock
        self._edge_lock = threading.Lock()

    # -- writing -------------------------------------------------------------------------

    def append(
        self,
        session: Session,
        *,
        action: str,
        actor: str,
        subject_pseudonym: str,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
        at: datetime,
        outcome: str = "success",
    ) -> AuditRecord:
        """Append one entry in the caller's transaction; it is part of the log when that
        transaction commits."""
        draft = AuditDraft(action=action, actor=actor, subject_pseudonym=subject_pseudonym, reason=reason,
                           details=details or {}, at=at, outcome=outcome)
        return self.append_many(session, [draft])[0]

    def append_many(self, session: Session, drafts: Sequence[AuditDraft]) -> list[AuditRecord]:
        """Append ``drafts`` in order, in the caller's transaction, as consecutive leaves:
        the same entries as that many :meth:`append` calls, hashed here and written with
        one multi-row insert (and one for the subtrees they complete). Every draft is
        checked before anything is written; one refused draft appends none."""
        for draft in drafts:
            draft.check()
        if not drafts:
            return []
        edge = self._right_edge(session)
        rows, nodes, records = [], [], []
        at_texts: dict[datetime, str] = {}  # the entries of a round share their time
        for draft in drafts:
            row = _NewEntry(
                seq=edge.size, at=draft.at.astimezone(UTC), action=draft.action, outcome=draft.outcome,
                actor=draft.actor, subject=draft.subject_pseudonym, reason=draft.reason,
                details=canonical_details(draft.details),
            )
            if _reads_back_the_same(draft.details):
                details = dict(draft.details)
                at = at_texts.get(row.at)
                if at is None:
                    at = at_texts[row.at] = _at_text(row.at)
                row.leaf_hash = merkle.leaf_hash(_new_entry_bytes(row, at))
            else:
                details = json.loads(row.details)  # as it reads back: hashed and returned as that
                row.leaf_hash = merkle.leaf_hash(entry_bytes(row, details=details))
            records.append(_record(row, details))
            nodes.extend(edge.append(row.leaf_hash))
            row.root_after = edge.root()
            rows.append(row)
        # Core inserts: the ORM unit of work would triple the cost of an append.
        insert_rows(session, _ENTRY_TABLE, [{c: getattr(row, c) for c in _ENTRY_COLUMNS} for row in rows])
        insert_rows(session, _NODE_TABLE, [{"level": lvl, "idx": idx, "hash": h} for lvl, idx, h in nodes])
        with self._edge_lock:
            self._edge, self._edge_root = edge, rows[-1].root_after
            self._edge_tx = _current_tx(session)
        return records

    def sign_tree_head(self, session: Session, at: datetime) -> TreeHead:
        """Sign the current tree. Before signing, the entries added since the last signed
        head are re-hashed from their content and the tree is rebuilt from that head's
        stored edge, so a head is never signed over tampered data (else
        :class:`AuditIntegrityError`). Returns the last head if nothing was appended."""
        self._serialise(session)
        size = self.size(session)
        last = session.scalars(select(AuditTreeHead).order_by(AuditTreeHead.tree_size.desc(),
                                                              AuditTreeHead.id.desc()).limit(1)).first()
        old_size = last.tree_size if last else 0
        if last and old_size == size:
            return _head(last)
        if old_size > size:
            raise AuditIntegrityError(f"the log has {size} entries but a head signed {old_size}")
        edge = self._load_edge(session, old_size)
        if last and edge.root() != last.root_hash:
            raise AuditIntegrityError(f"the stored tree no longer matches the head signed at size {old_size}")
        stored_root = edge.root()
        for row in session.scalars(select(AuditEntry).where(AuditEntry.seq >= old_size).order_by(AuditEntry.seq)):
            if row.seq != edge.size:
                raise AuditIntegrityError(f"entry {edge.size} is missing")
            leaf = merkle.leaf_hash(entry_bytes(row))
            if leaf != row.leaf_hash:
                raise AuditIntegrityError(f"entry {row.seq} does not match its hash")
            edge.append(leaf)
            stored_root = row.root_after
        if edge.root() != stored_root:
            raise AuditIntegrityError("the stored tree does not match the entries")
        timestamp_ms = int(at.timestamp() * 1000)
        head = AuditTreeHead(tree_size=size, root_hash=edge.root(), timestamp_ms=timestamp_ms,
                             key_id=self.signer.key_id,
                             signature=self.signer.sign(size, timestamp_ms, edge.root()))
        session.add(head)
        session.flush()
        return _head(head)

    # -- reading -------------------------------------------------------------------------

    def verify(self, session: Session) -> VerifyReport:
        """Check every entry, stored node and signed head; see :mod:`compliance.audit_verify`."""
        from compliance.audit_verify import verify

        return verify(session, self.trusted_keys)

    def export(self, session: Session, since: datetime | None, fmt: str = "jsonl") -> Iterator[str]:
        """JSONL or FHIR AuditEvent lines; see :mod:`compliance.audit_export`."""
        from compliance.audit_export import export

        return export(self, session, since, fmt)  # type: ignore[arg-type]

    def size(self, session: Session) -> int:
        last = session.scalar(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1))
        return 0 if last is None else last + 1

    def count(self, session: Session, *, since: datetime | None = None, subject: str | None = None) -> int:
        """How many entries :meth:`entries` selects with these filters (the log's size
        without any)."""
        if since is None and subject is None:
            return self.size(session)
        return session.scalar(_selecting(select(func.count()).select_from(AuditEntry), since, subject)) or 0

    def entries(self, session: Session, *, since: datetime | None = None,
                subject: str | None = None, offset: int = 0, limit: int | None = None) -> Iterable[AuditRecord]:
        """Entries oldest first, at or after ``since`` (UTC unless it carries an offset, as
        an officer types a date); ``offset`` and ``limit`` page in the database (a page
        deep in a long log does not read the entries before it)."""
        query = _selecting(select(AuditEntry).order_by(AuditEntry.seq), since, subject)
        if offset:
            query = query.offset(offset)
        if limit is not None:
            query = query.limit(limit)
        for row in session.scalars(query.execution_options(yield_per=1000)):
            yield _record(row)

    def tree_heads(self, session: Session) -> list[TreeHead]:
        return [_head(h) for h in session.scalars(select(AuditTreeHead).order_by(AuditTreeHead.tree_size))]

    def root(self, session: Session, tree_size: int) -> bytes:
        hasher = self._hasher(session, lambda mth: mth(0, tree_size) if tree_size else None)
        return hasher(0, tree_size) if tree_size else merkle.EMPTY_ROOT

    def inclusion_proof(self, seq: int, tree_size: int) -> InclusionProof:
        """RFC 6962 ``PATH(seq, D[tree_size])`` with the leaf and root it proves."""
        with self.sessions() as session, session.begin():
            self._check_size(session, tree_size)
            plan = lambda mth: (merkle.inclusion_proof(seq, tree_size, mth), mth(0, tree_size))  # noqa: E731
            hasher = self._hasher(session, plan, leaves=[seq])
            path, root = plan(hasher)
            return InclusionProof(seq, tree_size, hasher.perfect(0, seq), path, root)

    def consistency_proof(self, old_size: int, new_size: int) -> ConsistencyProof:
        """RFC 6962 ``PROOF(old_size, D[new_size])`` with both roots."""
        with self.sessions() as session, session.begin():
            self._check_size(session, new_size)
            plan = lambda mth: (  # noqa: E731
                merkle.consistency_proof(old_size, new_size, mth),
                mth(0, old_size) if old_size else merkle.EMPTY_ROOT,
                mth(0, new_size) if new_size else merkle.EMPTY_ROOT,
            )
            path, old_root, new_root = plan(self._hasher(session, plan))
            return ConsistencyProof(old_size, new_size, old_root, new_root, path)

    # -- internals -----------------------------------------------------------------------

    def _check_size(self, session: Session, tree_size: int) -> None:
        if tree_size > self.size(session):
            raise AuditError(f"the log has fewer than {tree_size} entries")

    def _serialise(self, session: Session) -> None:
        """Take the log's write lock for the rest of this transaction (once per transaction)."""
        tx = _current_tx(session)
        if tx is not None and session.info.get(_LOCKED) is tx:
            return
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
        session.info[_LOCKED] = tx

    def _right_edge(self, session: Session) -> merkle.Frontier:
        """The tree's right edge. Inside the transaction that appended last (which holds the
        lock) the cached edge is current; otherwise it is checked against the last entry."""
        self._serialise(session)
        with self._edge_lock:
            if self._edge is not None and self._edge_tx is _current_tx(session):
                return merkle.Frontier(self._edge.size, self._edge.nodes)
        last = session.connection().execute(_LAST_ENTRY).first()
        size, root = (0, merkle.EMPTY_ROOT) if last is None else (last.seq + 1, last.root_after)
        with self._edge_lock:
            cached = self._edge
            if cached is not None and cached.size == size and self._edge_root == root:
                return merkle.Frontier(cached.size, cached.nodes)
        return self._load_edge(session, size)

    def _load_edge(self, session: Session, size: int) -> merkle.Frontier:
        positions = merkle.Frontier.positions(size)
        found = self._fetch(session, set(positions))
        try:
            return merkle.Frontier(size, [(lvl, found[(lvl, idx)]) for lvl, idx in positions])
        except KeyError as exc:
            raise AuditIntegrityError(f"stored tree node {exc.args[0]} is missing") from None

    def _hasher(self, session: Session, plan: Any, leaves: Iterable[int] = ()) -> _StoredHasher:
        needed = merkle.subtrees_needed(plan) | {(0, i) for i in leaves}
        return _StoredHasher(self._fetch(session, needed))

    def _fetch(self, session: Session, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        found: dict[tuple[int, int], bytes] = {}
        leaf_ids = [idx for lvl, idx in wanted if lvl == 0]
        inner = [(lvl, idx) for lvl, idx in wanted if lvl > 0]
        if leaf_ids:
            for seq, h in session.execute(select(AuditEntry.seq, AuditEntry.leaf_hash).where(AuditEntry.seq.in_(leaf_ids))):
                found[(0, seq)] = h
        for chunk in range(0, len(inner), 200):
            part = inner[chunk : chunk + 200]
            cond = or_(*(and_(AuditNode.level == lvl, AuditNode.idx == idx) for lvl, idx in part))
            for lvl, idx, h in session.execute(select(AuditNode.level, AuditNode.idx, AuditNode.hash).where(cond)):
                found[(lvl, idx)] = h
        return found


class _StoredHasher:
    def __init__(self, nodes: dict[tuple[int, int], bytes]) -> None:
        self.nodes = nodes

    def perfect(self, level: int, index: int) -> bytes:
        try:
            return self.nodes[(level, index)]
        except KeyError:
            raise AuditIntegrityError(f"stored tree node {(level, index)} is missing") from None

    def __call__(self, start: int, end: int) -> bytes:
        return merkle.range_hash(start, end, self.perfect)


def _current_tx(session: Session) -> object:
    """The innermost transaction: a savepoint rolled back must not leave a stale edge."""
    return session.get_nested_transaction() or session.get_transaction()


def _record(row: AuditEntry | _NewEntry, details: dict[str, Any] | None = None) -> AuditRecord:
    """``details``: the row's details already read from its JSON."""
    return AuditRecord(row.seq, row.at, row.action, row.outcome, row.actor, row.subject, row.reason,
                       json.loads(row.details) if details is None else details, row.leaf_hash)


def _head(row: AuditTreeHead) -> TreeHead:
    return TreeHead(row.tree_size, row.root_hash, row.timestamp_ms, row.key_id, row.signature)


def _selecting(query: Select, since: datetime | None, subject: str | None) -> Select:
    """``query`` narrowed to the entries at or after ``since`` (UTC unless it carries an
    offset) about ``subject``."""
    if since is not None:
        query = query.where(AuditEntry.at >= (since if since.tzinfo else since.replace(tzinfo=UTC)))
    if subject is not None:
        query = query.where(AuditEntry.subject == subject)
    return query
