"""Receiving FHIR Subscription notifications, for the R4 Subscriptions Backport
IG (STU 1.1: ``history`` Bundles whose first entry is a Parameters
SubscriptionStatus) and R4B/R5 (``subscription-notification`` Bundles whose first
entry is a SubscriptionStatus).

Handshake and heartbeat carry no events; event notifications carry
full-resource entries or only references (id-only: the resource is fetched from
the source server). Every notification says how many events the subscription
has produced (``events-since-subscription-start``): a jump in that counter is a
gap, recovered with ``$events``, or where the server lacks it with a
``_lastUpdated`` search and the deletions of the type's ``_history``. A subscription that stops calling is *silent*: servers accept
subscriptions that never fire and drop notifications after a minute of retries.

A resource the source server deleted is applied as a delete (FHIR R4 §3.1.0.7):
its history entry says so (``request.method`` DELETE, or ``response.status``
410), or its read answers 410 Gone, or 404 for a resource stored here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from adapter.db import read_transaction, transaction
from fhir import store
from fhir.client import FhirClient
from fhir.errors import FhirError, Issue, UpstreamError, invalid
from fhir.history import Deletion, deletion_in
from fhir.mapping import parse_instant
from fhir.models import FhirSubscription
from fhir.outcome import information
from fhir.service import FhirService
from fhir.settings import FhirSettings
from fhir.upstream import deletions_since, patients_of
from fhir.validate import SUPPORTED_TYPES

log = logging.getLogger(__name__)
SUBSCRIBED_TYPES = ("Appointment", "DiagnosticReport")
# The source server's clock is not ours: search a little further back; versions dedupe.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class NotificationEvent:
    number: int | None
    focus: str  # reference to the resource, relative or absolute
    timestamp: datetime | None = None


@dataclass(frozen=True)
class Notification:
    """What a notification Bundle says, whatever its flavour."""

    subscription: str  # reference to the Subscription, relative or absolute
    kind: str  # handshake, heartbeat, event-notification, query-status, query-event
    events_since_start: int | None
    events: tuple[NotificationEvent, ...] = ()
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # fullUrl → resource
    topic: str = ""
    deleted: dict[str, Deletion] = field(default_factory=dict)  # Type/id → its deletion


@dataclass(frozen=True)
class SilentSubscription:
    url: str
    server: str
    last_heard_at: datetime
    silent_for: timedelta
    expected_every: timedelta


def parse_notification(bundle: dict[str, Any]) -> Notification:
    """Read a notification Bundle (backport ``history`` or ``subscription-notification``).

    >>> parse_notification({"resourceType": "Bundle", "type": "history", "entry": [
    ...   {"resource": {"resourceType": "Parameters", "parameter": [
    ...     {"name": "subscription", "valueReference": {"reference": "Subscription/s1"}},
    ...     {"name": "type", "valueCode": "heartbeat"},
    ...     {"name": "events-since-subscription-start", "valueString": "4"}]}}]}).kind
    'heartbeat'
    """
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in (
            "history", "subscription-notification"):
        raise invalid("A notification is a Bundle of type history (R4 backport) or "
                      "subscription-notification (R4B/R5)", "Bundle.type")
    entries = bundle.get("entry") or []
    status = (entries[0].get("resource") if entries else None) or {}
    if status.get("resourceType") == "Parameters":
        notification = _from_parameters(status)
    elif status.get("resourceType") == "SubscriptionStatus":
        notification = _from_status(status)
    else:
        raise invalid("The first entry of a notification must be its SubscriptionStatus "
                      "(Parameters in the R4 backport)", "Bundle.entry[0].resource")
    resources = {e.get("fullUrl", ""): e["resource"] for e in entries[1:]
                 if isinstance(e.get("resource"), dict)}
    deleted = {f"{found.resource_type}/{found.resource_id}": found for e in entries[1:]
               if isinstance(e, dict) and (found := deletion_in(e)) is not None}
    events = notification.events
    if not events and notification.kind in ("event-notification", "query-event"):
        events = _events_from_entries(entries[1:], notification.events_since_start)
    return Notification(notification.subscription, notification.kind,
                        notification.events_since_start, events, resources, notification.topic, deleted)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        raise invalid(f"Event counter {value!r} is not a number") from None


def _from_parameters(parameters: dict[str, Any]) -> Notification:
    values: dict[str, Any] = {}
    events = []
    for p in parameters.get("parameter") or []:
        name = p.get("name")
        if name == "notification-event":
            parts = {q.get("name"): q for q in p.get("part") or []}
            events.append(NotificationEvent(
                _int(_value(parts.get("event-number", {}))),
                (_value(parts.get("focus", {})) or {}).get("reference", ""),
                parse_instant(_value(parts.get("timestamp", {}))),
            ))
        else:
            values[name] = _value(p)
    return Notification(
        subscription=(values.get("subscription") or {}).get("reference", ""),
        kind=values.get("type") or "event-notification",
        events_since_start=_int(values.get("events-since-subscription-start")),
        events=tuple(events),
        topic=values.get("topic") or "",
    )


def _value(parameter: dict[str, Any]) -> Any:
    return next((v for k, v in parameter.items() if k.startswith("value")), None)


def _from_status(status: dict[str, Any]) -> Notification:
    events = tuple(
        NotificationEvent(_int(e.get("eventNumber")), (e.get("focus") or {}).get("reference", ""),
                          parse_instant(e.get("timestamp")))
        for e in status.get("notificationEvent") or []
    )
    return Notification(
        subscription=(status.get("subscription") or {}).get("reference", ""),
        kind=status.get("type") or "event-notification",
        events_since_start=_int(status.get("eventsSinceSubscriptionStart")),
        events=events,
        topic=status.get("topic") or "",
    )


def _events_from_entries(entries: list[dict[str, Any]], since_start: int | None
                         ) -> tuple[NotificationEvent, ...]:
    """Backport STU 1.0 sends no notification-event parts: the entries are the
    last ``len(entries)`` events, in order."""
    first = since_start - len(entries) + 1 if since_start is not None else None
    return tuple(
        NotificationEvent(first + i if first is not None else None, e.get("fullUrl", ""))
        for i, e in enumerate(entries)
    )


def server_of(subscription_url: str) -> str:
    """``https://ehr/fhir/Subscription/1`` → ``https://ehr/fhir``."""
    return subscription_url.rsplit("/Subscription/", 1)[0]


@dataclass
class SubscriptionReceiver:
    service: FhirService
    sessions: sessionmaker[Session]
    client_for: Callable[[str], FhirClient] | None = None

    @property
    def settings(self) -> FhirSettings:
        return self.service.settings

    def _client(self, server: str) -> FhirClient:
        if self.client_for:
            return self.client_for(server)
        return FhirClient(server, auth=self.settings.upstream_auth.get(server),
                          timeout=self.settings.upstream_timeout_s)

    async def receive(self, body: bytes) -> dict[str, Any]:
        """Handle one notification; answer an informational OperationOutcome.
        Raises FhirError for an unknown subscription, a malformed Bundle or a
        resource that cannot be fetched or stored (the server retries on 4xx/5xx
        per its policy; the counters make a retry safe)."""
        try:
            bundle = json.loads(body)
        except ValueError as exc:
            raise invalid(f"The body is not valid JSON: {exc}", code="structure") from None
        if not isinstance(bundle, dict):
            raise invalid("The body must be a Bundle", code="structure")
        note = parse_notification(bundle)
        sub = await run_in_threadpool(self._subscription, note)
        last = sub.last_event_number
        resources: list[tuple[dict[str, Any] | Deletion, str]] = []
        recovered = 0
        async with self._client(sub.server) as client:
            gap = _gap(last, note)
            if gap:
                found = await self._recover(client, sub, gap)
                recovered = len(found)
                resources += found
            for event in note.events:
                resources.append((await self._resource(client, sub, note, event), sub.server))
            patients = await self._patients(client, sub, note, [r for r, _ in resources])
        numbers = [e.number for e in note.events if e.number is not None]
        newest = max([last, *numbers, note.events_since_start or 0])
        timestamps = [e.timestamp for e in note.events if e.timestamp]
        await run_in_threadpool(self._apply, sub.url, note, [*patients, *resources], newest,
                                max(timestamps) if timestamps else None, recovered)
        return information(f"{note.kind} for {sub.url}: {len(note.events)} event(s), "
                           f"{recovered} recovered")

    def _subscription(self, note: Notification) -> FhirSubscription:
        with transaction(self.sessions) as session:
            ref = note.subscription
            if ref.startswith(("http://", "https://")):
                sub = session.scalar(select(FhirSubscription).where(FhirSubscription.url == ref))
            else:
                sub = next(iter(session.scalars(select(FhirSubscription).where(
                    FhirSubscription.url.endswith("/" + ref.strip("/"))))), None)
            if sub is not None:
                return sub
            if ref.startswith(("http://", "https://")) and (
                    server_of(ref) in self.settings.trusted_servers):
                sub = FhirSubscription(url=ref, server=server_of(ref), topic=note.topic,
                                       status="active", created_at=self.service.clock())
                session.add(sub)
                session.flush()
                return sub
        raise FhirError(404, Issue("not-found", f"Subscription {ref!r} is not one of ours nor "
                                   "on a trusted server", "Bundle.entry[0].resource"))

    async def _resource(self, client: FhirClient, sub: FhirSubscription, note: Notification,
                        event: NotificationEvent) -> dict[str, Any] | Deletion:
        """The resource an event is about, or its deletion: carried by the
        notification, else read from the source server (410 Gone, or 404 for a
        resource stored here, is its deletion)."""
        focus = event.focus.split("/_history/")[0]
        for ref, deletion in note.deleted.items():
            if focus == ref or focus.endswith("/" + ref):
                return deletion
        for url, resource in note.resources.items():
            if url and (url == event.focus or url.endswith("/" + event.focus)):
                return resource
            ref = f"{resource.get('resourceType')}/{resource.get('id')}"
            if event.focus.split("/_history/")[0].endswith(ref):
                return resource
        try:
            return await client.read(event.focus)
        except UpstreamError as exc:
            if exc.status == 410 or exc.status == 404 and await run_in_threadpool(self._stored, event.focus):
                # The version the focus names is the event's, not the deletion's.
                return Deletion.of(focus, source_updated=event.timestamp)
            raise FhirError(502 if exc.status is None else 424, Issue(
                "transient", f"Could not fetch {event.focus} from {sub.server}: {exc}")) from exc

    def _stored(self, reference: str) -> bool:
        """Whether a version of the resource ``reference`` names is stored here."""
        deletion = Deletion.of(reference)
        with read_transaction(self.sessions) as session:
            return store.latest_version_id(session, deletion.resource_type, deletion.resource_id) is not None

    async def _patients(self, client: FhirClient, sub: FhirSubscription, note: Notification,
                        resources: list[dict[str, Any] | Deletion]) -> list[tuple[dict[str, Any], str]]:
        """The Patients the notified resources are about, valid ones only (one the adapter
        refuses is logged; the resources naming it are stored without its details): those
        the notification carries, the others read from the source server."""
        carried = {f"Patient/{r.get('id')}": r for r in note.resources.values() if r.get("resourceType") == "Patient"}
        try:
            patients = await patients_of(client, [r for r in resources if isinstance(r, dict)], carried=carried)
        except UpstreamError as exc:
            raise FhirError(502 if exc.status is None else 424, Issue(
                "transient", f"Could not fetch the patients of the notified resources from {sub.server}: {exc}"
            )) from exc
        refused = await run_in_threadpool(self.service.validator.validate, patients)
        for patient, error in zip(patients, refused, strict=True):
            if error:
                log.warning("%s: Patient/%s refused: %s", sub.server, patient.get("id"), error)
        return [(patient, sub.server) for patient, error in zip(patients, refused, strict=True) if not error]

    async def _recover(self, client: FhirClient, sub: FhirSubscription, gap: tuple[int, int]
                       ) -> list[tuple[dict[str, Any] | Deletion, str]]:
        """Missed events ``gap`` (inclusive): ``$events`` first, else a search since
        the last event we saw, then the deletions since then, which no search returns,
        from each type's history (:func:`fhir.upstream.deletions_since`; a server
        without it is searched alone). The deletions come after what the searches
        found: each is ordered against those versions by its own."""
        sub_id = sub.url.rsplit("/", 1)[-1]
        try:
            bundle = await client.events(sub_id, gap[0], gap[1])
            note = parse_notification(bundle)
            return [(await self._resource(client, sub, note, e), sub.server) for e in note.events]
        except (UpstreamError, FhirError) as exc:
            log.info("$events unavailable on %s (%s); searching by _lastUpdated", sub.server, exc)
        since = (sub.last_event_at or sub.last_notification_at or sub.created_at) - CLOCK_SKEW
        found: list[tuple[dict[str, Any] | Deletion, str]] = []
        types = (sub.resource_type,) if sub.resource_type else SUBSCRIBED_TYPES
        rejected: list[str] = []
        try:
            for kind in types:
                async for resource in client.updated_since(kind, since):
                    found.append((resource, sub.server))
            for kind in types:
                async for deletion in deletions_since(client, kind, since, rejected=rejected):
                    found.append((deletion, sub.server))
        except UpstreamError as exc:
            raise FhirError(502, Issue("transient", f"Could not recover missed events "
                                       f"{gap[0]}..{gap[1]} from {sub.server}: {exc}")) from exc
        for why in rejected:
            log.warning("recovering missed events from %s: %s", sub.server, why)
        return found

    def _apply(self, url: str, note: Notification, resources: list[tuple[dict[str, Any] | Deletion, str]],
               newest: int, last_event_at: datetime | None, recovered: int) -> None:
        """Store the resources (and deletions) and move the counters, in one
        transaction. The resources are validated first, outside it (in helper
        processes when there are many: a gap recovered with ``$events`` can bring
        hundreds)."""
        ours = [(resource, server) for resource, server in resources if (
            resource.resource_type if isinstance(resource, Deletion) else resource.get("resourceType")
        ) in SUPPORTED_TYPES]
        written = [r for r, _ in ours if isinstance(r, dict)]
        refused = next((e for e in self.service.validator.validate(written) if e), None)
        if refused is not None:
            raise refused
        with transaction(self.sessions) as session:
            for resource, server in ours:
                if isinstance(resource, Deletion):
                    self.service.delete(session, resource.resource_type, resource.resource_id, sender=server,
                                        source_version=resource.source_version,
                                        source_updated=resource.source_updated)
                else:
                    self.service.write(session, resource, sender=server)
            sub = session.scalar(select(FhirSubscription).where(FhirSubscription.url == url))
            assert sub is not None
            sub.last_notification_at = self.service.clock()
            sub.last_event_number = max(sub.last_event_number, newest)
            if last_event_at and (sub.last_event_at is None or last_event_at > sub.last_event_at):
                sub.last_event_at = last_event_at
            sub.events_recovered += recovered
            if note.kind == "handshake" or sub.status == "requested":
                sub.status = "active"
            sub.last_error = ""


def _gap(last: int, note: Notification) -> tuple[int, int] | None:
    numbers = [e.number for e in note.events if e.number is not None]
    if numbers:
        first = min(numbers)
        return (last + 1, first - 1) if first > last + 1 else None
    if note.kind in ("heartbeat", "query-status") and note.events_since_start:
        return (last + 1, note.events_since_start) if note.events_since_start > last else None
    return None


def silent_subscriptions(session: Session, now: datetime,
                         settings: FhirSettings | None = None) -> list[SilentSubscription]:
    """Subscriptions not heard from (no handshake, heartbeat or event) within
    ``silence_factor`` heartbeat periods, or ``default_silence_s`` without one:
    for /health/ready, the metrics and the console."""
    settings = settings or FhirSettings()
    silent = []
    for sub in session.scalars(select(FhirSubscription).where(FhirSubscription.status != "off")):
        heard = sub.last_notification_at or sub.created_at
        expected = timedelta(seconds=sub.heartbeat_period_s * settings.silence_factor
                             if sub.heartbeat_period_s else settings.default_silence_s)
        if now - heard > expected:
            silent.append(SilentSubscription(sub.url, sub.server, heard, now - heard, expected))
    return silent
