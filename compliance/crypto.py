"""Envelope encryption of personal data (GDPR art. 32) with AES-256-GCM.

Each subject (``"patient:<internal id>"`` or ``"system"``) has its own 256-bit data key,
created on first use and stored only wrapped by a master key (``data_key`` table).
Destroying a subject's data key (crypto-shredding, art. 17) makes every blob sealed for it
unreadable for good, wherever copies of the blob went (backups, exports of rows).

Blob layout (all integers big-endian)::

    version (1 byte, 0x01) | data key id (8 bytes) | nonce (12 bytes) | ciphertext + tag (16)

The version and key id are authenticated with the caller's ``aad``, so a blob cannot be
re-labelled to another key or context. Wrapped data keys carry the master key id::

    version (1 byte, 0x01) | len(key id) (1 byte) | key id (utf-8) | nonce (12) | wrapped key + tag

Unwrapped keys are cached in memory for ``cache_ttl_s`` seconds. A subject's cached key is
used only while the count of destroyed keys (``data_key_destructions``, read once per
transaction) is what it was when the key was read: a key destroyed by another process is not
used by this one in any transaction that begins after the destruction committed. Keys created
inside a transaction join the shared cache only when that transaction commits.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import bindparam, event, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, sessionmaker

from adapter.db import insert_rows
from compliance.errors import ConfigError, CryptoError, KeyDestroyed, TamperedCiphertext, UnknownKey
from compliance.models import DataKey, DataKeyDestructions
from compliance.pseudonyms import normalise

BLOB_VERSION = 1
_HEADER = struct.Struct(">BQ")
NONCE_BYTES = 12
KEY_BYTES = 32
SYSTEM_SUBJECT = "system"
INDEX_KEY_SUBJECT = "system:blind-index"


@runtime_checkable
class MasterKeyProvider(Protocol):
    """Wraps and unwraps data keys. A KMS provider implements the same two calls."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, data_key: bytes, *, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes: ...


class LocalMasterKey:
    """A 256-bit master key held in this process (from the environment or a file)."""

    def __init__(self, secret: bytes, key_id: str | None = None) -> None:
        if len(secret) != KEY_BYTES:
            raise ConfigError(f"master key must be {KEY_BYTES} bytes, got {len(secret)}")
        self._aead = AESGCM(secret)
        self._secret = secret
        self._key_id = key_id or hashlib.sha256(b"adapter master key id\x00" + secret).hexdigest()[:16]

    @property
    def key_id(self) -> str:
        return self._key_id

    @classmethod
    def from_base64(cls, value: str, *, key_id: str | None = None) -> LocalMasterKey:
        """From ``ADAPTER_MASTER_KEY``: standard base64 of 32 random bytes."""
        try:
            secret = base64.b64decode(value.strip(), validate=True)
        except ValueError as exc:
            raise ConfigError("ADAPTER_MASTER_KEY: not valid base64") from exc
        return cls(secret, key_id)

    @classmethod
    def from_file(cls, path: Path, *, key_id: str | None = None) -> LocalMasterKey:
        """From ``ADAPTER_MASTER_KEY_FILE``; the file is created (mode 0600) on first use."""
        return cls.from_base64(_read_or_create_secret(path, lambda: secrets.token_bytes(KEY_BYTES)), key_id=key_id)

    @staticmethod
    def generate() -> str:
        """A new master key, base64, for ``ADAPTER_MASTER_KEY``."""
        return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()

    def derive(self, label: str) -> bytes:
        """A 256-bit key for ``label`` (HKDF-SHA256, RFC 5869), independent of the wrap key."""
        return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=label.encode()).derive(self._secret)

    def wrap(self, data_key: bytes, *, context: bytes) -> bytes:
        kid = self._key_id.encode()
        nonce = os.urandom(NONCE_BYTES)
        header = bytes([BLOB_VERSION, len(kid)]) + kid
        return header + nonce + self._aead.encrypt(nonce, data_key, header + context)

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        kid_len = wrapped[1]
        header = wrapped[: 2 + kid_len]
        if wrapped[0] != BLOB_VERSION or header[2:].decode() != self._key_id:
            raise UnknownKey(f"wrapped by master key {wrapped_key_id(wrapped)!r}, not {self._key_id!r}")
        nonce = wrapped[2 + kid_len : 2 + kid_len + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, wrapped[2 + kid_len + NONCE_BYTES :], header + context)
        except InvalidTag as exc:
            raise TamperedCiphertext("a wrapped data key failed authentication") from exc


def wrapped_key_id(wrapped: bytes) -> str:
    """The master key id a wrapped data key names."""
    return wrapped[2 : 2 + wrapped[1]].decode(errors="replace")


def write_secret_file(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Put ``data`` in ``path``, readable by its owner only (0600), so that a reader
    (another process) sees no file or the whole of it, never a part, and never a file
    others may read. ``exclusive``: only when there is no file yet (``FileExistsError``
    otherwise), for the first of several processes creating one key."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(staged, path)  # fails when path exists: the other process's file stays
        else:
            os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def _read_or_create_secret(path: Path, make: Callable[[], bytes]) -> str:
    path = Path(path)
    if not path.exists():
        try:
            write_secret_file(path, base64.b64encode(make()) + b"\n", exclusive=True)
        except FileExistsError:
            pass  # made meanwhile by another process: read theirs
    return path.read_text().strip()


def master_key_from_settings(master_key: str | None, master_key_file: Path | None) -> LocalMasterKey:
    """The master key named by settings (``master_key`` wins over ``master_key_file``)."""
    if master_key:
        return LocalMasterKey.from_base64(master_key)
    if master_key_file:
        return LocalMasterKey.from_file(master_key_file)
    raise ConfigError("settings: set ADAPTER_MASTER_KEY or ADAPTER_MASTER_KEY_FILE")


@dataclass
class _CachedKey:
    key_id: int
    aead: AESGCM
    loaded: float
    subject: str
    # The count of destroyed keys seen no later than this key was read: usable while it still is.
    destructions: int


@dataclass(frozen=True)
class RotationReport:
    rewrapped: int
    already_current: int
    destroyed_skipped: int


class Vault:
    """Seals personal data per subject; looks values up by blind index.

    ``master`` wraps new keys; ``previous`` master keys are still accepted for unwrapping,
    which is what lets :meth:`rotate` run while the adapter serves (see there).
    ``find_master(key_id)``, when given, is asked for a master key met in a wrapped key
    that this vault does not know: another process rotated, and rewrapped rows under a
    key this one has not read yet (from then on this vault also wraps with it, when
    ``find_master`` says it is the current one). ``current_master()``, when given, is
    asked before new keys are wrapped: the master key in force now, wherever this vault
    stands (a key wrapped under a retired master would be lost with that master's file).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        master: MasterKeyProvider,
        index_key: bytes,
        *,
        previous: Sequence[MasterKeyProvider] = (),
        cache_ttl_s: float = 60.0,
        normalisers: Mapping[str, Callable[[str], str]] | None = None,
        find_master: Callable[[str], tuple[MasterKeyProvider, bool] | None] | None = None,
        current_master: Callable[[], MasterKeyProvider | None] | None = None,
    ) -> None:
        if len(index_key) < KEY_BYTES:
            raise ConfigError("blind index key must be at least 32 bytes")
        self.sessions = sessions
        self.master = master
        # The master every live data key was last rewrapped under by this vault (the one it
        # opened with, or its last ``rotate``): wrapping new keys with a newer master (taken
        # from ``find_master`` or ``current_master``) does not rewrap the others.
        self.rewrapped_under = master.key_id
        self._masters = {m.key_id: m for m in (*previous, master)}
        self._index_key = index_key
        self._index_keys: dict[str, bytes] = {}
        self._ttl = cache_ttl_s
        self._normalisers = dict(normalisers or {})
        self._by_subject: dict[str, _CachedKey] = {}
        self._by_id: dict[int, _CachedKey] = {}
        self._seen_destructions = -1  # the latest count of destroyed keys read by this vault
        self._lock = threading.Lock()
        self._find_master = find_master
        self._current_master = current_master

    @classmethod
    def open(
        cls, sessions: sessionmaker[Session], master: MasterKeyProvider, **kwargs: object
    ) -> Vault:
        """A vault whose blind-index key is itself a data key (subject ``system:blind-index``)
        wrapped by the master: created once, unchanged by rotation, so indexes stay valid."""
        bootstrap = cls(sessions, master, b"\x00" * KEY_BYTES, **kwargs)  # type: ignore[arg-type]
        try:
            with sessions() as session, session.begin():
                index_key = bootstrap._raw_key_for(session, INDEX_KEY_SUBJECT)
        except UnknownKey as exc:  # a lost or swapped key file: every patient's data is out of reach
            raise ConfigError(
                f"this database's keys are wrapped by master key {exc.key_id}, not by the one configured "
                f"({master.key_id}) nor any retired key: restore that key's file (ADAPTER_MASTER_KEY_FILE, "
                "or var/master.key by default) or point ADAPTER_DATABASE_URL at this key's database"
            ) from exc
        return cls(sessions, master, index_key, **kwargs)  # type: ignore[arg-type]

    # -- sealing -------------------------------------------------------------------------

    def encrypt(self, session: Session, subject: str, plaintext: bytes, *, aad: bytes = b"") -> bytes:
        return _seal(self._key_for_subject(session, subject), plaintext, aad)

    def encrypt_if_cached(self, subject: str, plaintext: bytes, *, aad: bytes = b"") -> bytes | None:
        """:meth:`encrypt` without a session while ``subject``'s key is in the cache (the
        ACK path seals every message with the system key); ``None`` when it is not, and
        the caller seals in a transaction instead."""
        cached = self._fresh(self._by_subject.get(subject))
        if cached is None or not _never_destroyed(subject):  # without a session, nothing says it lives
            return None
        return _seal(cached, plaintext, aad)

    def decrypt(self, session: Session, blob: bytes, *, aad: bytes = b"") -> bytes:
        if len(blob) < _HEADER.size + NONCE_BYTES + 16 or blob[0] != BLOB_VERSION:
            raise CryptoError("not a vault blob (bad length or version)")
        _, key_id = _HEADER.unpack_from(blob)
        cached = self._key_by_id(session, key_id)
        nonce = blob[_HEADER.size : _HEADER.size + NONCE_BYTES]
        try:
            return cached.aead.decrypt(nonce, blob[_HEADER.size + NONCE_BYTES :], blob[: _HEADER.size] + aad)
        except InvalidTag as exc:
            raise TamperedCiphertext("blob failed authentication (altered, or wrong aad)") from exc

    def encrypt_str(self, session: Session, subject: str, text: str, *, aad: bytes = b"") -> bytes:
        return self.encrypt(session, subject, text.encode(), aad=aad)

    def decrypt_str(self, session: Session, blob: bytes, *, aad: bytes = b"") -> str:
        return self.decrypt(session, blob, aad=aad).decode()

    def create_keys(self, session: Session, subjects: Sequence[str]) -> None:
        """Give subjects nobody has used yet (new patients) their data keys without looking
        for them first: one multi-row insert. Should a subject have a key after all, or have
        been destroyed, that row stands and is used as :meth:`encrypt` would."""
        self._create(session, subjects)

    def load_keys(self, session: Session, subjects: Sequence[str]) -> None:
        """Read the keys of ``subjects`` that the cache cannot give with one query, for
        the sealing about to be done in this session (kept as :meth:`encrypt` keeps the
        key it reads). Subjects without a live key are left to :meth:`encrypt`."""
        wanted = [subject for subject in subjects if self._usable(session, self._by_subject.get(subject)) is None
                  and subject not in _pending(session)]
        if not wanted:
            return
        destructions = self._destructions(session)  # before the rows
        for row in session.execute(_KEYS_OF, {"subjects": wanted}):
            if row.wrapped is not None:
                self._remember(row, destructions)

    def key_rows_for_new(self, session: Session, subjects: Sequence[str]) -> list[dict[str, Any]]:
        """Keys for subjects that cannot have one yet (ids this server has just
        assigned), made without touching the database: usable in ``session`` at once,
        their ``data_key`` rows returned for the caller to insert with the rest of
        its transaction (so a FHIR Bundle takes SQLite's write lock only for its
        inserts). A subject that had a key after all fails that insert."""
        made = self._make(subjects)
        for subject, (cached, _) in made.items():
            self._stage(session, subject, cached)
        return [row for _, row in made.values()]

    # -- blind indexes -------------------------------------------------------------------

    def blind_index(self, kind: str, value: str) -> str:
        """HMAC-SHA256 of the normalised value, keyed per ``kind`` (so the same string as a
        phone and as an identifier gives unrelated indexes); hex. Normalisation: see
        :mod:`compliance.pseudonyms`, or the ``normalisers`` given to the vault."""
        norm = self._normalisers.get(kind)
        text = norm(value) if norm else normalise(kind, value)
        key = self._index_keys.get(kind)
        if key is None:
            key = HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=b"blind index:" + kind.encode()).derive(
                self._index_key
            )
            self._index_keys[kind] = key
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()

    # -- key lifecycle -------------------------------------------------------------------

    def destroy(self, session: Session, subject: str, *, at: datetime | None = None, reusable: bool = False) -> bool:
        """Crypto-shred ``subject``: its wrapped key is erased; blobs sealed for it raise
        :class:`KeyDestroyed` from now on and no new key is ever made for it, unless
        ``reusable`` (a name somebody else gives, such as an EHR's Patient id, which comes
        back when the EHR sends that patient again): then the destroyed key keeps its id
        under another name, and the next use of ``subject`` makes a new key. Returns whether
        a live key existed. On SQLite, ``secure_delete`` is turned on for this connection so
        the old page is zeroed; PostgreSQL frees the old row version at the next VACUUM, and
        backups keep it until they expire — plan retention of backups accordingly."""
        if subject.startswith(SYSTEM_SUBJECT):
            raise CryptoError(f"refusing to destroy the system key {subject!r}")
        if session.get_bind().dialect.name == "sqlite":
            session.connection().exec_driver_sql("PRAGMA secure_delete=ON")
        row = session.scalars(select(DataKey).where(DataKey.subject == subject)).one_or_none()
        now = at or datetime.now(UTC)
        with self._lock:
            cached = self._by_subject.pop(subject, None)
            if cached:
                self._by_id.pop(cached.key_id, None)
        _count_destruction(session)
        if row is None:
            if not reusable:
                session.add(DataKey(id=_new_key_id(), subject=subject, master_key_id=None, wrapped=None,
                                    created_at=now, destroyed_at=now))
            return False
        alive = row.wrapped is not None
        self._by_id.pop(row.id, None)
        row.wrapped, row.master_key_id = None, None
        row.destroyed_at = row.destroyed_at or now
        if reusable:
            row.subject = f"destroyed:{row.id}"
        session.flush()
        return alive

    def rotate(self, session: Session, new_master: MasterKeyProvider, *, batch: int = 500) -> RotationReport:
        """Rewrap every live data key under ``new_master``; data blobs are untouched.

        Without downtime: (1) give every process the new key as ``master`` and the old one in
        ``previous`` (or the old as master and the new in ``previous``) — both unwrap;
        (2) run ``rotate``; rows are rewrapped in place, each readable before and after;
        (3) drop the old key once no row names it (``count_wrapped_by``). This vault
        switches to wrapping with ``new_master`` immediately."""
        self._wrap_with(new_master)
        self.rewrapped_under = new_master.key_id
        report = {"rewrapped": 0, "already_current": 0, "destroyed_skipped": 0}
        now = datetime.now(UTC)
        last_id = -1
        while True:
            rows = session.scalars(
                select(DataKey).where(DataKey.id > last_id).order_by(DataKey.id).limit(batch)
            ).all()
            if not rows:
                break
            for row in rows:
                last_id = row.id
                if row.wrapped is None:
                    report["destroyed_skipped"] += 1
                elif row.master_key_id == new_master.key_id:
                    report["already_current"] += 1
                else:
                    raw = self._unwrap(row)
                    row.wrapped = new_master.wrap(raw, context=_wrap_context(row.subject, row.id))
                    row.master_key_id, row.rotated_at = new_master.key_id, now
                    report["rewrapped"] += 1
            session.flush()
        return RotationReport(**report)

    def count_wrapped_by(self, session: Session, master_key_id: str) -> int:
        return len(session.scalars(select(DataKey.id).where(DataKey.master_key_id == master_key_id)).all())

    # -- internals -----------------------------------------------------------------------

    def _fresh(self, cached: _CachedKey | None) -> _CachedKey | None:
        if cached is not None and time.monotonic() - cached.loaded < self._ttl:
            return cached
        return None

    def _usable(self, session: Session, cached: _CachedKey | None) -> _CachedKey | None:
        """``cached`` if it may be used in this session's transaction: fresh, and no key
        destroyed since it was read (the system keys never are)."""
        cached = self._fresh(cached)
        if cached is None or _never_destroyed(cached.subject):
            return cached
        return cached if cached.destructions == self._destructions(session) else None

    def _destructions(self, session: Session) -> int:
        """The count of destroyed keys, read once per transaction (a primary-key look-up)."""
        seen = session.info.get(_DESTRUCTIONS)
        if seen is not None and seen[0] is session.get_transaction():
            return seen[1]
        count = session.connection().execute(_READ_DESTRUCTIONS).scalar() or 0
        session.info[_DESTRUCTIONS] = (session.get_transaction(), count)
        with self._lock:
            self._seen_destructions = max(self._seen_destructions, count)
        return count

    def _key_for_subject(self, session: Session, subject: str) -> _CachedKey:
        cached = self._usable(session, self._by_subject.get(subject)) or _pending(session).get(subject)
        if cached is not None:
            return cached
        destructions = -1 if _never_destroyed(subject) else self._destructions(session)  # before the row
        row = session.execute(_KEY_OF, {"subject": subject}).one_or_none()
        if row is None:
            return self._create(session, [subject])[subject]
        return self._remember(row, destructions)

    def _key_by_id(self, session: Session, key_id: int) -> _CachedKey:
        cached = self._usable(session, self._by_id.get(key_id))
        if cached is None:
            cached = next((c for c in _pending(session).values() if c.key_id == key_id), None)
        if cached is not None:
            return cached
        destructions = self._destructions(session)  # before the row: it may be destroyed meanwhile
        row = session.get(DataKey, key_id)
        if row is None:
            raise UnknownKey(f"no data key {key_id}")
        return self._remember(row, destructions)

    def _raw_key_for(self, session: Session, subject: str) -> bytes:
        row = session.scalars(select(DataKey).where(DataKey.subject == subject)).one_or_none()
        if row is None:
            self._create(session, [subject])
            row = session.scalars(select(DataKey).where(DataKey.subject == subject)).one()
        return self._unwrap(row)

    def _unwrap(self, row: DataKey | Row[Any]) -> bytes:
        if row.wrapped is None:
            raise KeyDestroyed(f"the data key of {row.subject!r} was destroyed")
        master = self._masters.get(wrapped_key_id(row.wrapped)) or self._learn(wrapped_key_id(row.wrapped))
        if master is None:
            raise UnknownKey(f"data key {row.id} is wrapped by unknown master {wrapped_key_id(row.wrapped)!r}",
                             key_id=wrapped_key_id(row.wrapped))
        return master.unwrap(row.wrapped, context=_wrap_context(row.subject, row.id))

    def _learn(self, key_id: str) -> MasterKeyProvider | None:
        """The master ``key_id`` from ``find_master``, kept for unwrapping; wrapping
        with it from now on if it is the current one."""
        found = self._find_master(key_id) if self._find_master else None
        if found is None:
            return None
        master, current = found
        self._masters[master.key_id] = master
        if current:
            self._wrap_with(master)
        return master

    def _wrap_with(self, master: MasterKeyProvider) -> None:
        """Wrap new data keys with ``master`` from now on (and unwrap with it)."""
        self._masters[master.key_id] = master
        self.master = master

    def _remember(self, row: DataKey | Row[Any], destructions: int) -> _CachedKey:
        """Cache ``row``'s key, usable while ``destructions`` (read before the row) holds."""
        cached = _CachedKey(row.id, AESGCM(self._unwrap(row)), time.monotonic(), row.subject, destructions)
        with self._lock:
            self._by_subject[row.subject] = cached
            self._by_id[row.id] = cached
        return cached

    def _create(self, session: Session, subjects: Sequence[str]) -> dict[str, _CachedKey]:
        made = self._make(subjects)
        if not made:
            return {}
        # One statement, no savepoint: a key another transaction created first (or a
        # destroyed subject's tombstone) wins, and is read back instead.
        created = {subject for (subject,) in insert_rows(
            session, DataKey.__table__, [row for _, row in made.values()], returning=("subject",), on_conflict_do_nothing=True)}
        out = {}
        for subject, (cached, _) in made.items():
            if subject in created:
                out[subject] = cached
                self._stage(session, subject, cached)
            else:
                destructions = -1 if _never_destroyed(subject) else self._destructions(session)
                out[subject] = self._remember(session.execute(_KEY_OF, {"subject": subject}).one(), destructions)
        return out

    def _make(self, subjects: Sequence[str]) -> dict[str, tuple[_CachedKey, dict[str, Any]]]:
        """A new key per subject, as its cache entry and its wrapped ``data_key`` row."""
        made = {}
        latest = self._current_master() if self._current_master else None
        if latest is not None and latest.key_id != self.master.key_id:
            self._wrap_with(latest)  # rotated by another process
        # A new key can only be destroyed after it is made, which moves the count past any seen.
        destructions = self._seen_destructions
        for subject in subjects:
            raw, key_id = AESGCM.generate_key(bit_length=256), _new_key_id()
            made[subject] = (_CachedKey(key_id, AESGCM(raw), time.monotonic(), subject, destructions),
                             {"id": key_id, "subject": subject, "master_key_id": self.master.key_id,
                              "wrapped": self.master.wrap(raw, context=_wrap_context(subject, key_id)),
                              "created_at": datetime.now(UTC)})
        return made

    def _stage(self, session: Session, subject: str, cached: _CachedKey) -> None:
        pending = _pending(session)
        if not pending:
            def publish(sess: Session) -> None:
                with self._lock:
                    for subj, c in sess.info.pop(_PENDING, {}).items():
                        self._by_subject[subj], self._by_id[c.key_id] = c, c

            def discard(sess: Session, *_: object) -> None:
                sess.info.pop(_PENDING, None)

            event.listen(session, "after_commit", publish, once=True)
            event.listen(session, "after_rollback", discard, once=True)
        pending[subject] = cached


_PENDING = "compliance.pending_keys"
_DESTRUCTIONS = "compliance.destructions"  # session.info: (transaction, count of destroyed keys)
# Built once (Core): read at the start of most transactions, where building it cost more than running it.
_READ_DESTRUCTIONS = select(DataKeyDestructions.__table__.c.count).where(DataKeyDestructions.__table__.c.id == 1)
# A subject's key as _unwrap and _remember read it: built once, and no ORM object made per key.
_KEY_OF = select(DataKey.id, DataKey.subject, DataKey.wrapped).where(DataKey.subject == bindparam("subject"))
_KEYS_OF = select(DataKey.id, DataKey.subject, DataKey.wrapped).where(
    DataKey.subject.in_(bindparam("subjects", expanding=True)))


def _never_destroyed(subject: str) -> bool:
    return subject.startswith(SYSTEM_SUBJECT)


def _count_destruction(session: Session) -> None:
    """One more destroyed key, for every process's cache (the row is made if missing)."""
    table = DataKeyDestructions.__table__
    if not session.execute(update(table).where(table.c.id == 1).values(count=table.c.count + 1)).rowcount:
        session.execute(table.insert().values(id=1, count=1))


def _seal(cached: _CachedKey, plaintext: bytes, aad: bytes) -> bytes:
    header = _HEADER.pack(BLOB_VERSION, cached.key_id)
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + cached.aead.encrypt(nonce, plaintext, header + aad)


def _pending(session: Session) -> dict[str, _CachedKey]:
    return session.info.setdefault(_PENDING, {})


def _new_key_id() -> int:
    return secrets.randbits(62) + 1


def _wrap_context(subject: str, key_id: int) -> bytes:
    return f"data key {key_id} for {subject}".encode()


class VaultCodec:
    """Seals and opens blobs for callers that hold no session: each call is its own short
    transaction. Same blob format as :class:`Vault`."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def encrypt(self, plaintext: bytes, *, subject: str = SYSTEM_SUBJECT, aad: bytes = b"") -> bytes:
        with self.vault.sessions() as session, session.begin():
            return self.vault.encrypt(session, subject, plaintext, aad=aad)

    def decrypt(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        with self.vault.sessions() as session, session.begin():
            return self.vault.decrypt(session, blob, aad=aad)
