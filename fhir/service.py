"""The FHIR front door's unit of work: store a version in the caller's
transaction; its events, derived from the version before it, reach the core
either in the same transaction or after the commit, from the stored version.

REST pushes, Bundle entries, subscription notifications and polling all go
through :meth:`FhirService.write`, so every path orders versions and
deduplicates the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import unquote

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from uuid6 import uuid7

from adapter.events import AnyEvent, Origin, PatientDetails, ReportReady
from fhir import store
from fhir.errors import FhirError, Issue, gone, invalid, not_found, precondition_failed
from fhir.mapping import deletion_events, events_for, parse_instant, patient_details
from fhir.settings import FhirSettings
from fhir.store import RecordCodec, StoredVersion
from fhir.validation_pool import ValidationPool
from fhir.validate import appointment_patient_ids, resource_patient_id

log = logging.getLogger(__name__)

Publish = Callable[[Session, list[AnyEvent]], None]
# Records a stored version whose events are published later (see FhirService.accept).
Accept = Callable[[Session, StoredVersion, str], None]
_LOAD = object()  # events_of: load the previous version from the store
Outcome = Literal["created", "updated", "duplicate", "stale"]


@dataclass(frozen=True)
class WriteResult:
    """``duplicate``: that source version was already stored; ``stale``: older
    than the current version, which stays current. Both publish nothing."""

    stored: StoredVersion
    outcome: Outcome
    events: list[AnyEvent] = field(default_factory=list)

    @property
    def status(self) -> int:
        return 201 if self.outcome == "created" else 200


@lru_cache(maxsize=1024)  # a version's time is written into it, then into its answer
def instant(moment: datetime) -> str:
    """A FHIR instant in UTC with milliseconds.

    >>> instant(datetime(2025, 1, 2, 3, 4, 5, 6000, tzinfo=UTC))
    '2025-01-02T03:04:05.006Z'
    """
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    """A server-assigned id: a time-ordered UUID (version 7, RFC 9562), so a Bundle's
    new rows land at the right edge of every index keyed by id instead of on as many
    random pages (its COMMIT writes a fraction of the WAL pages a random UUID cost)."""
    return str(uuid7())


def parse_etag(value: str) -> int:
    """``W/"3"`` or ``"3"`` → 3 (FHIR R4 §3.1.0.5.3)."""
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise invalid(f"If-Match {value!r} is not a version ETag such as W/\"3\"", code="value")
    return int(text)


def _is_older(version: str | None, updated: datetime | None, than: StoredVersion) -> bool:
    if version and than.source_version and version.isdigit() and than.source_version.isdigit():
        return int(version) < int(than.source_version)
    if updated and than.source_last_updated:
        return updated < than.source_last_updated
    return False


def _check_if_match(if_match: str | None, existing: StoredVersion | None, ref: str) -> None:
    """``If-Match`` (FHIR R4 §3.1.0.5.3): the write applies to that version only."""
    if if_match is not None:
        wanted = parse_etag(if_match)
        if existing is None or existing.version_id != wanted:
            raise precondition_failed(
                f"If-Match {if_match} does not match the current version "
                f"({existing.etag if existing else 'none'}) of {ref}")


@dataclass(frozen=True)
class DeleteResult:
    """``deleted``: a deletion version stored (``stored``); ``gone``: unknown or
    deleted already, nothing stored (``stored``: the deletion, if any);
    ``duplicate`` / ``stale``: as for :class:`WriteResult`."""

    ref: str
    outcome: Literal["deleted", "gone", "duplicate", "stale"]
    stored: StoredVersion | None
    events: list[AnyEvent] = field(default_factory=list)


def deletion_text(result: DeleteResult) -> str:
    """What a delete did, for its informational OperationOutcome."""
    if result.outcome == "deleted":
        return f"{result.ref} deleted"
    if result.outcome == "gone":
        return f"{result.ref} was deleted already" if result.stored else f"{result.ref} is not known; nothing to delete"
    return f"{result.ref}: that deletion is older than the current version, which stays" if (
        result.outcome == "stale") else f"{result.ref}: that deletion was received already"


@dataclass
class FhirService:
    """``accept`` None: a write publishes its events in its own transaction, and
    the core refusing them refuses the write. Set: a write records the stored
    version through ``accept`` and answers; the caller publishes it later with
    :meth:`publish_version` (adapter/fhir_intake.py). ``validator`` validates
    the resources of a Bundle together, in helper processes when it has them."""

    publish: Publish
    codec: RecordCodec
    clock: Callable[[], datetime]
    settings: FhirSettings = field(default_factory=FhirSettings)
    accept: Accept | None = None
    validator: ValidationPool = field(default_factory=ValidationPool)

    # -- reads ---------------------------------------------------------------
    def read(self, session: Session, resource_type: str, resource_id: str) -> StoredVersion:
        found = store.current(session, self.codec, resource_type, resource_id)
        if found is None:
            raise not_found(f"{resource_type}/{resource_id} is not known")
        if found.deleted:
            raise gone(f"{resource_type}/{resource_id} was deleted (version {found.version_id})")
        return found

    def vread(self, session: Session, resource_type: str, resource_id: str, vid: str
              ) -> StoredVersion:
        found = vid.isdigit() and store.version(session, self.codec, resource_type,
                                                resource_id, int(vid))
        if not found:
            raise not_found(f"{resource_type}/{resource_id}/_history/{vid} is not known")
        if found.deleted:
            raise gone(f"{resource_type}/{resource_id}/_history/{vid} is its deletion")
        return found

    def search_identifier(self, session: Session, resource_type: str, query: str) -> list[str]:
        """Ids matching an ``identifier`` search value: ``system|value``, ``|value``
        (no system) or ``value`` (any system)."""
        if not query:
            raise invalid("The identifier search value is empty", code="value")
        system, sep, value = query.partition("|")
        if not sep:
            system, value = None, query  # type: ignore[assignment]
        return store.find_by_identifier(session, self.settings.identifier_index_key,
                                        resource_type, system, value)

    # -- writes --------------------------------------------------------------
    def create(self, session: Session, resource: dict[str, Any], *, sender: str | None = None,
               if_none_exist: str | None = None, resource_id: str | None = None) -> WriteResult:
        """FHIR create: the server assigns the id (``resource_id``: one it assigned
        already, for a Bundle's urn:uuid). With ``if_none_exist``
        (``identifier=system|value``) an existing match is returned, unwritten."""
        kind = resource["resourceType"]
        if if_none_exist:
            matches = self.conditional_matches(session, kind, if_none_exist, "If-None-Exist")
            if len(matches) > 1:
                raise precondition_failed(
                    f"If-None-Exist matches {len(matches)} {kind} resources")
            if matches:
                return WriteResult(self.read(session, kind, matches[0]), "duplicate")
        resource = {**resource, "id": resource_id or new_id()}
        return self.write(session, resource, sender=sender, fresh=True)

    def conditional_update(self, session: Session, resource: dict[str, Any], query: str, *,
                           sender: str | None = None) -> WriteResult:
        """``PUT /Type?identifier=...`` (FHIR R4 §3.1.0.4.3): no match creates,
        one match updates it, several are a 412."""
        target = self.conditional_target(session, resource, query)
        return self.write(session, {**resource, "id": target}, sender=sender)

    def conditional_target(self, session: Session, resource: dict[str, Any], query: str, *,
                           new: str | None = None) -> str:
        """The id a conditional update of ``resource`` writes: the one match, else the
        body's id, else ``new`` (one assigned already, for a Bundle's urn:uuid) or a new one."""
        kind = resource["resourceType"]
        matches = self.conditional_matches(session, kind, query, "the search")
        if len(matches) > 1:
            raise precondition_failed(f"The conditional update matches {len(matches)} {kind}")
        body_id = resource.get("id")
        if matches and body_id and body_id != matches[0]:
            raise invalid(f"The body's id {body_id!r} differs from the match {matches[0]!r}",
                          f"{kind}.id")
        return matches[0] if matches else (body_id or new or new_id())

    def conditional_matches(self, session: Session, kind: str, query: str, what: str) -> list[str]:
        params = dict(p.partition("=")[::2] for p in query.lstrip("?").split("&") if p)
        if set(params) != {"identifier"}:
            raise FhirError(400, Issue(
                "not-supported", f"{what} supports only the 'identifier' parameter; "
                f"got {', '.join(sorted(params)) or 'nothing'}"))
        query = unquote(params["identifier"])
        store.hold_identifier(session, kind, query.partition("|")[2] if "|" in query else query)
        return self.search_identifier(session, kind, query)

    def write(self, session: Session, resource: dict[str, Any], *, sender: str | None = None,
              if_match: str | None = None, fresh: bool = False) -> WriteResult:
        """Store a new version of ``resource`` (its ``id`` set), in ``session``'s
        transaction; then either record it for processing after the commit
        (``accept`` set) or derive its events and publish them now.

        ``meta.versionId`` / ``meta.lastUpdated`` given by the sender are the
        *source* version: the same one twice is a duplicate, an older one than
        the current is stale; neither is stored or published. ``fresh``: the
        server has just assigned the id, so there is no current version."""
        kind, rid = resource["resourceType"], resource["id"]
        sender = sender or self.settings.sender
        existing = None if fresh else store.current(session, self.codec, kind, rid)
        _check_if_match(if_match, existing, f"{kind}/{rid}")
        meta = resource.get("meta") or {}
        source_version = meta.get("versionId")
        source_updated = parse_instant(meta.get("lastUpdated"))
        if existing and source_version and store.has_source_version(
                session, kind, rid, source_version):
            return WriteResult(existing, "duplicate")
        if existing and _is_older(source_version, source_updated, existing):
            return WriteResult(existing, "stale")

        stored = self._append(session, resource, existing, sender=sender, source_version=source_version,
                              source_updated=source_updated, fresh=fresh)
        if stored is None:
            return WriteResult(self.read(session, kind, rid), "duplicate")
        store.index_identifiers(session, self.settings.identifier_index_key, stored.resource,
                                replace=existing is not None)
        outcome: Outcome = "created" if existing is None or existing.deleted else "updated"
        live = existing.resource if existing and not existing.deleted else None
        return WriteResult(stored, outcome, self._record(session, stored, sender, live))

    def delete(self, session: Session, resource_type: str, resource_id: str, *,
               sender: str | None = None, if_match: str | None = None,
               source_version: str | None = None, source_updated: datetime | None = None
               ) -> DeleteResult:
        """FHIR delete (R4 §3.1.0.7): a version of its own marks the resource deleted
        (a read answers 410, an update brings it back), its identifiers leave the index,
        and it is recorded or published like any write (its events:
        :func:`fhir.mapping.deletion_events`). Deleting an unknown or deleted resource
        stores nothing (``gone``). ``source_*``: the deletion as the source server
        numbered it (a subscription's), ordered against its versions as :meth:`write` does."""
        ref = f"{resource_type}/{resource_id}"
        sender = sender or self.settings.sender
        existing = store.current(session, self.codec, resource_type, resource_id)
        _check_if_match(if_match, existing, ref)
        if existing is None or existing.deleted:
            return DeleteResult(ref, "gone", existing)
        if source_version and store.has_source_version(session, resource_type, resource_id, source_version):
            return DeleteResult(ref, "duplicate", existing)
        if _is_older(source_version, source_updated, existing):
            return DeleteResult(ref, "stale", existing)
        stored = self._append(session, {"resourceType": resource_type, "id": resource_id}, existing,
                              sender=sender, source_version=source_version, source_updated=source_updated,
                              deleted=True, patient_id=resource_patient_id(existing.resource))
        if stored is None:
            return DeleteResult(ref, "duplicate", store.current(session, self.codec, resource_type, resource_id))
        store.index_identifiers(session, self.settings.identifier_index_key, stored.resource)
        return DeleteResult(ref, "deleted", stored, self._record(session, stored, sender, existing.resource))

    def _append(self, session: Session, resource: dict[str, Any], existing: StoredVersion | None, *,
                sender: str, source_version: str | None, source_updated: datetime | None,
                fresh: bool = False, deleted: bool = False, patient_id: str | None = None
                ) -> StoredVersion | None:
        """Store the version after ``existing`` (None: that source version was stored
        meanwhile, by a concurrent request)."""
        now = self.clock()
        number = existing.version_id + 1 if existing else 1
        meta = resource.get("meta") or {}
        stored_resource = {
            **resource,
            "meta": {**meta, "versionId": str(number), "lastUpdated": instant(now)},
        }
        # A savepoint only where a unique violation is an answer (the same source
        # version sent concurrently); otherwise it ends the request. A new id
        # cannot collide. Rows staged before are inserted first, outside it.
        savepoint = bool(source_version) and not fresh
        if savepoint:
            store.insert_staged(session)
        try:
            with session.begin_nested() if savepoint else nullcontext():
                return store.append(
                    session, self.codec, resource=stored_resource, version_id=number,
                    last_updated=now, patient_id=patient_id if deleted else resource_patient_id(resource),
                    source_version=source_version, source_last_updated=source_updated,
                    sender=sender, new_id=fresh, deleted=deleted)
        except IntegrityError:
            kind, rid = resource["resourceType"], resource["id"]
            if source_version and store.has_source_version(session, kind, rid, source_version):
                return None
            raise FhirError(409, Issue(
                "conflict", f"{kind}/{rid} was changed concurrently; retry")) from None

    def _record(self, session: Session, stored: StoredVersion, sender: str,
                previous: dict[str, Any] | None) -> list[AnyEvent]:
        """Record the stored version for processing after the commit (``accept``
        set), or publish its events now and return them."""
        if self.accept is not None:
            self.accept(session, stored, sender)
            return []
        return self.publish_version(session, stored, sender, previous=previous)

    def events_of(self, session: Session, stored: StoredVersion, sender: str,
                  previous: dict[str, Any] | None | object = _LOAD, *,
                  message_id: int | None = None) -> list[AnyEvent]:
        """The events version N of a resource announces, derived from version
        N-1 (loaded unless given; a deletion stands for no version): the same answer
        whenever it is asked. ``message_id``, the caller's id of the stored version's
        record, goes into their origin as it is."""
        if previous is _LOAD:
            before = stored.version_id > 1 and store.version(
                session, self.codec, stored.resource_type, stored.resource_id,
                stored.version_id - 1)
            previous = before.resource if before and not before.deleted else None
        origin = Origin("fhir", sender, f"{stored.ref}/_history/{stored.version_id}", message_id)
        if stored.deleted:
            if previous is None:
                return []
            events = deletion_events(stored.resource_type, previous,  # type: ignore[arg-type]
                                     origin=origin, now=stored.last_updated,
                                     patient=self._patient(session, previous),  # type: ignore[arg-type]
                                     others=self._other_patients(session, previous, None))  # type: ignore[arg-type]
        else:
            events = events_for(stored.resource_type, stored.resource, previous,  # type: ignore[arg-type]
                                origin=origin, now=stored.last_updated,
                                patient=self._patient(session, stored.resource),
                                others=self._other_patients(session, stored.resource, previous),  # type: ignore[arg-type]
                                notice_systems=self.settings.notice_code_systems)
        if not self.settings.announce_amended_reports:
            events = [e for e in events if not (isinstance(e, ReportReady) and e.amended)]
        return events

    def publish_version(self, session: Session, stored: StoredVersion, sender: str,
                        previous: dict[str, Any] | None | object = _LOAD, *,
                        message_id: int | None = None) -> list[AnyEvent]:
        """Derive the events of a stored version and hand them to the core, in
        ``session``'s transaction. Raises :class:`FhirError` (422 when the core
        refuses them, 500 on any other failure)."""
        store.insert_staged(session)  # the core sees what is stored
        events = self.events_of(session, stored, sender, previous, message_id=message_id)
        self._publish(session, events)
        return events

    def _patient(self, session: Session, resource: dict[str, Any]) -> PatientDetails | None:
        keys = self.settings.patient_key_systems
        if resource["resourceType"] == "Patient":
            return patient_details(resource, resource["id"], keys)
        patient_id = resource_patient_id(resource)
        # A deleted Patient is still who the resources naming it are about.
        found = patient_id and store.last_content(session, self.codec, "Patient", patient_id)
        return patient_details(found.resource, patient_id, keys) if found else None

    def _other_patients(self, session: Session, resource: dict[str, Any], previous: dict[str, Any] | None
                        ) -> dict[str, PatientDetails]:
        """An Appointment's Patient participants after the first, of this version and the
        one before, resolved from the stored Patients (each is told of it on their own)."""
        if resource["resourceType"] != "Appointment":
            return {}
        ids = dict.fromkeys([*appointment_patient_ids(resource)[1:],
                             *(appointment_patient_ids(previous)[1:] if previous else [])])
        keys, out = self.settings.patient_key_systems, {}
        for patient_id in ids:
            found = store.last_content(session, self.codec, "Patient", patient_id)
            if found:
                out[patient_id] = patient_details(found.resource, patient_id, keys)
        return out

    def _publish(self, session: Session, events: list[AnyEvent]) -> None:
        if not events:
            return
        try:
            self.publish(session, events)
        except FhirError:
            raise
        except ValueError as exc:
            raise FhirError(422, Issue("processing", f"The adapter refused the change: {exc}")
                            ) from exc
        except Exception as exc:
            log.exception("publishing FHIR events failed")
            raise FhirError(500, Issue("exception", "The change could not be processed; "
                                       "nothing was stored")) from exc
