"""Storage of resource versions. Resource JSON holds personal data, so it is
stored only through the :class:`RecordCodec`; identifiers only as a blind index."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Row, Table, delete, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from adapter.db import LARGEST_INTEGER, hold_until_commit
from fhir.models import FhirIdentifier, FhirResource

# Core statements on the tables: a Bundle writes hundreds of rows, and the ORM's
# unit of work costs more than the rows themselves.
_RESOURCE = FhirResource.__table__
_IDENTIFIER = FhirIdentifier.__table__
_VERSION_COLUMNS = (_RESOURCE.c.resource_type, _RESOURCE.c.resource_id, _RESOURCE.c.version_id,
                    _RESOURCE.c.last_updated, _RESOURCE.c.source_version,
                    _RESOURCE.c.source_last_updated, _RESOURCE.c.content, _RESOURCE.c.deleted)


class RecordCodec(Protocol):
    """Encryption of stored records, owned by ``compliance/``. ``subject`` is
    ``"patient:<logical id>"`` for patient-linked resources, else ``"system"``
    (so erasing a patient's key makes their resources unreadable). ``session`` is the
    caller's: a first key for a new subject is created in the same transaction."""

    def encrypt(self, plaintext: bytes, *, subject: str, session: Session) -> bytes: ...

    def new_subjects(self, subjects: list[str], *, session: Session) -> None:
        """Keys for subjects nobody has used yet (patients a Bundle creates under
        ids it has just assigned), made together before their records are sealed;
        their rows may be staged (:func:`stage`) with the Bundle's other rows."""

    def decrypt(self, blob: bytes, *, session: Session) -> bytes: ...


@dataclass(frozen=True)
class StoredVersion:
    resource_type: str
    resource_id: str
    version_id: int
    last_updated: datetime
    resource: dict[str, Any]
    source_version: str | None = None
    source_last_updated: datetime | None = None
    deleted: bool = False  # a deletion (R4 §3.1.0.7): ``resource`` is only type, id and meta

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def ref(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


def subject_for(patient_id: str | None) -> str:
    return f"patient:{patient_id}" if patient_id else "system"


# -- staged inserts ----------------------------------------------------------------
_STAGED = "fhir.store.staged"


@contextmanager
def staged_inserts(session: Session) -> Iterator[None]:
    """Within, :func:`stage` keeps rows and inserts them together, one multi-row
    insert per table: before the next statement of this module (so reads see
    them) and at the end. For an all-or-nothing unit only (a transaction
    Bundle): a savepoint rolled back inside would not take staged rows with it."""
    session.info[_STAGED] = {}
    try:
        yield
        insert_staged(session)
    finally:
        session.info.pop(_STAGED, None)


def stage(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` now, or with the other staged rows inside
    :func:`staged_inserts`. Only rows that cannot violate a constraint (the
    caller knows why) are staged: an error at the shared insert names no entry."""
    staged = session.info.get(_STAGED)
    if not rows:
        return
    if staged is None:
        session.connection().execute(insert(table), rows)
    else:
        staged.setdefault(table, []).extend(rows)


def insert_staged(session: Session) -> None:
    """Insert the rows staged so far (before a savepoint that may roll back)."""
    staged = session.info.get(_STAGED)
    if staged:
        connection = session.connection()
        for table, rows in staged.items():
            connection.execute(insert(table), rows)
        staged.clear()


def _connection(session: Session) -> Connection:
    """The session's connection, staged rows inserted first."""
    insert_staged(session)
    return session.connection()


def _load(row: Row[Any], codec: RecordCodec, session: Session) -> StoredVersion:
    return StoredVersion(
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        version_id=row.version_id,
        last_updated=row.last_updated,
        resource=json.loads(codec.decrypt(row.content, session=session)),
        source_version=row.source_version,
        source_last_updated=row.source_last_updated,
        deleted=row.deleted,
    )


def current(session: Session, codec: RecordCodec, resource_type: str, resource_id: str
            ) -> StoredVersion | None:
    row = _connection(session).execute(
        select(*_VERSION_COLUMNS)
        .where(_RESOURCE.c.resource_type == resource_type, _RESOURCE.c.resource_id == resource_id)
        .order_by(_RESOURCE.c.version_id.desc())
        .limit(1)
    ).first()
    return _load(row, codec, session) if row else None


def last_content(session: Session, codec: RecordCodec, resource_type: str, resource_id: str
                 ) -> StoredVersion | None:
    """The newest version that is not a deletion: what a deleted resource last said."""
    row = _connection(session).execute(
        select(*_VERSION_COLUMNS)
        .where(_RESOURCE.c.resource_type == resource_type, _RESOURCE.c.resource_id == resource_id,
               _RESOURCE.c.deleted.is_(False))
        .order_by(_RESOURCE.c.version_id.desc())
        .limit(1)
    ).first()
    return _load(row, codec, session) if row else None


def version(session: Session, codec: RecordCodec, resource_type: str, resource_id: str,
            version_id: int) -> StoredVersion | None:
    if not 0 < version_id <= LARGEST_INTEGER:  # names no version (a vread of /_history/<26 digits>)
        return None
    row = _connection(session).execute(
        select(*_VERSION_COLUMNS).where(
            _RESOURCE.c.resource_type == resource_type,
            _RESOURCE.c.resource_id == resource_id,
            _RESOURCE.c.version_id == version_id,
        )
    ).first()
    return _load(row, codec, session) if row else None


def latest_version_id(session: Session, resource_type: str, resource_id: str) -> int | None:
    return _connection(session).execute(
        select(_RESOURCE.c.version_id)
        .where(_RESOURCE.c.resource_type == resource_type, _RESOURCE.c.resource_id == resource_id)
        .order_by(_RESOURCE.c.version_id.desc())
        .limit(1)
    ).scalar()


def has_source_version(session: Session, resource_type: str, resource_id: str,
                       source_version: str) -> bool:
    return _connection(session).execute(
        select(_RESOURCE.c.pk).where(
            _RESOURCE.c.resource_type == resource_type,
            _RESOURCE.c.resource_id == resource_id,
            _RESOURCE.c.source_version == source_version,
        ).limit(1)
    ).first() is not None


def append(
    session: Session,
    codec: RecordCodec,
    *,
    resource: dict[str, Any],
    version_id: int,
    last_updated: datetime,
    patient_id: str | None,
    source_version: str | None,
    source_last_updated: datetime | None,
    sender: str,
    new_id: bool = False,
    deleted: bool = False,
) -> StoredVersion:
    """Insert one version (the caller decides the number); the unique
    constraints fire here, unless ``new_id`` (the server has just assigned the
    id, so nothing can collide): then the row may be staged (:func:`stage`).
    ``deleted``: the version that records a deletion."""
    row = {
        "resource_type": resource["resourceType"],
        "resource_id": resource["id"],
        "version_id": version_id,
        "last_updated": last_updated,
        "status": resource.get("status"),
        "patient_id": patient_id,
        "source_version": source_version,
        "source_last_updated": source_last_updated,
        "sender": sender,
        "deleted": deleted,
        "content": codec.encrypt(json.dumps(resource, separators=(",", ":")).encode(),
                                 subject=subject_for(patient_id), session=session),
    }
    if new_id:
        stage(session, _RESOURCE, [row])
    else:
        _connection(session).execute(insert(_RESOURCE), [row])
    return StoredVersion(resource["resourceType"], resource["id"], version_id, last_updated,
                         resource, source_version, source_last_updated, deleted)


ANY_SYSTEM = "*"


def identifier_token(key: bytes, system: str, value: str) -> str:
    """Blind index of ``system|value`` (HMAC-SHA256): equal identifiers match,
    the table reveals none."""
    keyed = _keyed(key).copy()  # the key's set-up done once, not per identifier
    keyed.update(f"{system}|{value}".encode())
    return keyed.hexdigest()


@lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


def index_identifiers(session: Session, key: bytes, resource: dict[str, Any], *,
                      replace: bool = True) -> None:
    """Index the identifiers of the current version (after its version is
    stored, so they cannot collide: staged); ``replace=False`` for a
    resource's first version (nothing to delete)."""
    kind, rid = resource["resourceType"], resource["id"]
    if replace:
        _connection(session).execute(delete(_IDENTIFIER).where(
            _IDENTIFIER.c.resource_type == kind, _IDENTIFIER.c.resource_id == rid))
    identifiers = resource.get("identifier") or []
    if isinstance(identifiers, dict):  # Consent.identifier is a list in R4; be lenient
        identifiers = [identifiers]
    tokens = set()
    for i in identifiers:
        if i.get("value"):
            tokens.add(identifier_token(key, i.get("system", ""), i["value"]))
            tokens.add(identifier_token(key, ANY_SYSTEM, i["value"]))
    stage(session, _IDENTIFIER, [{"resource_type": kind, "token": t, "resource_id": rid}
                                 for t in sorted(tokens)])


def hold_identifier(session: Session, resource_type: str, value: str) -> None:
    """Until this transaction ends, no other transaction holds ``resource_type`` with an
    identifier ``value`` (any system): a conditional create or update looks for a match
    and then writes, and on PostgreSQL two of them at once (the same request reaching
    two ``serve`` processes) each found none and each created a resource, after which
    every conditional request for that identifier was a 412. The second now waits, and
    finds the first one's resource. SQLite has one writer anyway."""
    hold_until_commit(session, f"fhir identifier\0{resource_type}\0{value}")


def find_by_identifier(session: Session, key: bytes, resource_type: str, system: str | None,
                       value: str) -> list[str]:
    """Ids of resources of a type with ``system|value`` (``system`` None: any system)."""
    token = identifier_token(key, ANY_SYSTEM if system is None else system, value)
    return list(_connection(session).execute(select(_IDENTIFIER.c.resource_id).where(
        _IDENTIFIER.c.resource_type == resource_type, _IDENTIFIER.c.token == token)).scalars())
