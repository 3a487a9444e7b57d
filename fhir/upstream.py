"""Pulling from a hospital's FHIR server: creating its Subscriptions, and
polling it where it has none. The core wires ``python -m adapter fhir subscribe
--server URL`` and the poller to these two functions."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from adapter.db import transaction
from fhir.client import DEFAULT_TOPICS, FhirClient
from fhir.errors import FhirError, UpstreamError
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
    rejected: list[str] = field(default_factory=list)  # "Type/id: why"
    failed: bool = False  # stopped early; the cursor stays before the failed resource


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
    """One polling round: every resource of each type changed since the last
    round (``_lastUpdated=ge<cursor>``, paged), stored through the same path as a
    push. The cursor is inclusive, so the boundary resource comes back and is
    recognised as a duplicate by its version. A resource that fails validation
    is reported and skipped, not retried forever."""
    result = PollResult()
    read: set[str] = set()  # Patients read this round
    async with FhirClient(server, auth=auth, http=http) as client:
        for kind in resource_types:
            with transaction(sessions) as session:
                cursor = session.get(FhirPollCursor, (client.base, kind))
                since = cursor.last_updated if cursor else None
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
            with transaction(sessions) as session:
                cursor = session.get(FhirPollCursor, (client.base, kind)) or FhirPollCursor(
                    server=client.base, resource_type=kind)
                cursor.last_updated = newest
                cursor.polled_at = service.clock()
                session.add(cursor)
    return result


__all__ = ["CreatedSubscription", "PollResult", "UpstreamError", "patients_of", "poll_once", "store_patients",
           "subscribe"]
