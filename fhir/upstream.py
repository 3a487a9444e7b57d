"""Pulling from a hospital's FHIR server: creating its Subscriptions, and
polling it where it has none. The core wires ``python -m adapter fhir subscribe
--server URL`` and the poller to these two functions."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from adapter.db import transaction
from fhir.client import DEFAULT_TOPICS, FhirClient
from fhir.errors import FhirError, UpstreamError
from fhir.history import Deletion, deletion_in
from fhir.mapping import parse_instant
from fhir.models import FhirPollCursor, FhirSubscription
from fhir.service import FhirService
from fhir.validate import parse_data, resource_patient_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreatedSubscription:
    url: str  # absolute URL of the Subscription on the source server
    resource_type: str
    status: str


async def subscribe(
    server: str,
    *,
    endpoint: str,
    sessions: sessionmaker[Session],
    service: FhirService,
    auth: httpx.Auth | None = None,
    resource_types: tuple[str, ...] = ("Appointment", "DiagnosticReport"),
    topics: Mapping[str, str] | None = None,
    content: str = "id-only",
    heartbeat_period_s: int = 300,
    endpoint_headers: Mapping[str, str] | None = None,
    http: httpx.AsyncClient | None = None,
) -> list[CreatedSubscription]:
    """Create one backport rest-hook Subscription per type on ``server``,
    notifying ``endpoint`` (our ``/fhir/R4/$subscription-hook``; put the
    adapter's token in ``endpoint_headers``), and remember each for gap and
    silence detection."""
    topics = {**DEFAULT_TOPICS, **(topics or {})}
    created = []
    async with FhirClient(server, auth=auth, http=http) as client:
        for kind in resource_types:
            answer = await client.create_subscription(
                kind, endpoint=endpoint, topic=topics[kind], content=content,
                heartbeat_period_s=heartbeat_period_s, headers=endpoint_headers)
            url = f"{client.base}/Subscription/{answer['id']}"
            created.append(CreatedSubscription(url, kind, answer.get("status", "requested")))
            with transaction(sessions) as session:
                row = session.scalar(select(FhirSubscription).where(FhirSubscription.url == url))
                if row is None:
                    session.add(FhirSubscription(
                        url=url, server=client.base, topic=topics[kind], resource_type=kind,
                        content=content, heartbeat_period_s=heartbeat_period_s,
                        status=answer.get("status", "requested"), created_at=service.clock()))
    return created


# A Patient the source server will not give us: the resource is stored without its details.
_NOT_GIVEN = frozenset({401, 403, 404, 410})


async def patients_of(client: FhirClient, resources: list[dict[str, Any]], *,
                      carried: Mapping[str, dict[str, Any]] | None = None,
                      skip: set[str] | None = None) -> list[dict[str, Any]]:
    """The Patients ``resources`` are about (:func:`fhir.validate.resource_patient_ids`),
    each once: a pulled Appointment or report only names its patient, whose contacts and
    language are on the Patient. Taken from ``carried`` (``Patient/id`` → resource: what
    a notification brings along), else read from the source server; ids in ``skip``
    (read already this round) are left out, and those read are added to it. A Patient
    the server does not give (401, 403, 404, 410) is left out; any other failure raises
    :class:`UpstreamError`, for the caller to try again."""
    skip = set() if skip is None else skip
    carried = carried or {}
    found = []
    for patient_id in dict.fromkeys(pid for r in resources for pid in resource_patient_ids(r)):
        if patient_id in skip:
            continue
        ref = f"Patient/{patient_id}"
        try:
            patient = carried.get(ref) or await client.read(ref)
        except UpstreamError as exc:
            if exc.status not in _NOT_GIVEN:
                raise
            log.warning("%s did not give %s (%s): stored without the patient's details", client.base, ref,
                        exc.status)
            patient = None
        skip.add(patient_id)
        if patient is not None and patient.get("resourceType") == "Patient":
            found.append(patient)
    return found


def store_patients(sessions: sessionmaker[Session], service: FhirService, patients: list[dict[str, Any]],
                   sender: str) -> None:
    """Store Patients read from a source server, each on its own: one the adapter refuses
    (invalid) is logged and left out, not the resources that name it."""
    for patient in patients:
        try:
            with transaction(sessions) as session:
                service.write(session, parse_data(patient), sender=sender)
        except FhirError as exc:
            if exc.status >= 500:
                raise
            log.warning("%s: Patient/%s refused: %s", sender, patient.get("id"), exc)


@dataclass
class PollResult:
    stored: int = 0
    unchanged: int = 0  # duplicates and stale versions
    deleted: int = 0  # deletions applied, from the server's _history
    rejected: list[str] = field(default_factory=list)  # "Type/id: why"
    failed: bool = False  # stopped early; the cursor stays before the failed resource


# (server, type) that answered _history with a 4xx or 501: said once a process (each poll and
# each gap recovery still asks).
_WITHOUT_HISTORY: set[tuple[str, str]] = set()


def _no_history(status: int) -> bool:
    """The server does not offer ``[type]/_history``: a client error other than "too
    many requests", or 501 Not Implemented (a cursor that waited for it would never move)."""
    return (400 <= status < 500 and status != 429) or status == 501


async def poll_once(
    server: str,
    *,
    sessions: sessionmaker[Session],
    service: FhirService,
    auth: httpx.Auth | None = None,
    resource_types: tuple[str, ...] = ("Appointment", "DiagnosticReport"),
    page_size: int = 100,
    http: httpx.AsyncClient | None = None,
) -> PollResult:
    """One polling round, per type: every resource changed since the last round
    (``_lastUpdated=ge<cursor>``, paged), stored through the same path as a push;
    then the deletions since the same cursor, which no search returns, from the
    type's history (``_history?_since=<cursor>``), applied as a pushed DELETE is.
    The cursor is inclusive, so the boundary resource comes back and is recognised
    as a duplicate by its version; it moves only past what both passes covered. A
    resource that fails validation is reported and skipped, not retried forever.
    A server that refuses ``_history`` (4xx) is polled by search alone."""
    result = PollResult()
    read: set[str] = set()  # Patients read this round
    async with FhirClient(server, auth=auth, http=http) as client:
        for kind in resource_types:
            with transaction(sessions) as session:
                cursor = session.get(FhirPollCursor, (client.base, kind))
                since = cursor.last_updated if cursor else None
            newest = await _pull_updates(client, kind, since, sessions=sessions, service=service,
                                         page_size=page_size, result=result, read=read)
            # The first round has no deletions to learn: nothing was pulled before it.
            if since is not None and not await _pull_deletions(client, kind, since, sessions=sessions,
                                                               service=service, page_size=page_size,
                                                               result=result):
                newest = since  # history is newest first: all of it comes back next round
            with transaction(sessions) as session:
                cursor = session.get(FhirPollCursor, (client.base, kind)) or FhirPollCursor(
                    server=client.base, resource_type=kind)
                cursor.last_updated = newest
                cursor.polled_at = service.clock()
                session.add(cursor)
    return result


async def _pull_updates(client: FhirClient, kind: str, since: datetime | None, *,
                        sessions: sessionmaker[Session], service: FhirService, page_size: int,
                        result: PollResult, read: set[str]) -> datetime | None:
    """Store what a ``_lastUpdated`` search returns, oldest first; the newest
    ``lastUpdated`` stored (``since`` if none), before any that failed."""
    newest = since
    async for resource in client.updated_since(kind, since, page_size=page_size):
        updated = parse_instant((resource.get("meta") or {}).get("lastUpdated"))
        ref = f"{resource.get('resourceType')}/{resource.get('id')}"
        try:
            store_patients(sessions, service, await patients_of(client, [resource], skip=read),
                           client.base)
        except UpstreamError as exc:  # the server's, for now: retry next round
            log.error("polling %s stopped at %s: %s", client.base, ref, exc)
            result.failed = True
            break
        try:
            with transaction(sessions) as session:
                outcome = service.write(session, parse_data(resource),
                                        sender=client.base).outcome
        except FhirError as exc:
            if exc.status >= 500:  # ours to fix, not the resource's: retry next round
                log.error("polling %s stopped at %s: %s", client.base, ref, exc)
                result.failed = True
                break
            result.rejected.append(f"{ref}: {exc}")
            log.warning("polling %s: %s rejected: %s", client.base, ref, exc)
        else:
            if outcome in ("created", "updated"):
                result.stored += 1
            else:
                result.unchanged += 1
        if updated and (newest is None or updated > newest):
            newest = updated
    return newest


async def _pull_deletions(client: FhirClient, kind: str, since: datetime, *,
                          sessions: sessionmaker[Session], service: FhirService, page_size: int,
                          result: PollResult) -> bool:
    """Apply the deletions of ``kind``'s history since ``since`` (:func:`deletions_since`),
    each ordered against the stored versions by its own, as a Subscription's are.
    False: stopped early."""
    try:
        async for deletion in deletions_since(client, kind, since, page_size=page_size, rejected=result.rejected):
            ref = f"{kind}/{deletion.resource_id}"
            try:
                with transaction(sessions) as session:
                    outcome = service.delete(session, kind, deletion.resource_id, sender=client.base,
                                             source_version=deletion.source_version,
                                             source_updated=deletion.source_updated).outcome
            except FhirError as exc:
                if exc.status >= 500:  # ours to fix: retry next round
                    log.error("polling %s stopped at the deletion of %s: %s", client.base, ref, exc)
                    result.failed = True
                    return False
                result.rejected.append(f"{ref} (deletion): {exc}")
                log.warning("polling %s: the deletion of %s rejected: %s", client.base, ref, exc)
                continue
            if outcome == "deleted":
                result.deleted += 1
    except UpstreamError as exc:
        log.error("polling %s stopped in the history of %s: %s", client.base, kind, exc)
        result.failed = True
        return False
    return True


async def deletions_since(client: FhirClient, kind: str, since: datetime, *, page_size: int = 100,
                          rejected: list[str]) -> AsyncIterator[Deletion]:
    """The DELETE entries of ``kind``'s history since ``since`` (``[type]/_history?_since=``,
    R4 http.html#history), newest first: what no ``_lastUpdated`` search returns. Its other
    entries are versions a search returns. A deletion that carries neither its version
    nor its time is ordered by the history's own order: one with a version of the
    resource before it was undone, and is left out. An entry that names no ``Type/id``
    is added to ``rejected``.

    A server that does not offer the history (:func:`_no_history`, at its first page)
    yields nothing: it is then searched alone, and that is logged once a process. Any
    other failure raises :class:`UpstreamError`."""
    seen = False
    recreated: set[str] = set()  # ids with a version newer than what follows
    try:
        async for entry in client.history_since(kind, since, page_size=page_size):
            seen = True
            if isinstance(entry.get("resource"), dict):
                recreated.add(str(entry["resource"].get("id")))
                continue
            try:
                deletion = deletion_in(entry)
            except FhirError as exc:
                rejected.append(f"{kind} history entry: {exc}")
                continue
            if deletion is None or deletion.resource_type != kind or (
                    deletion.resource_id in recreated and not (deletion.source_version or deletion.source_updated)):
                continue
            yield deletion
    except UpstreamError as exc:
        if seen or exc.status is None or not _no_history(exc.status):
            raise
        if (client.base, kind) not in _WITHOUT_HISTORY:
            _WITHOUT_HISTORY.add((client.base, kind))
            log.warning("%s answered %s to %s/_history: deletions there are not seen when polling or "
                        "recovering missed notifications", client.base, exc.status, kind)


__all__ = ["CreatedSubscription", "PollResult", "UpstreamError", "deletions_since", "patients_of", "poll_once",
           "store_patients", "subscribe"]
