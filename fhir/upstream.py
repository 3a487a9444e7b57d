"""Pulling from a hospital's FHIR server: creating its Subscriptions, and
polling it where it has none. The core wires ``python -m adapter fhir subscribe
--server URL`` and the poller to these two functions."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from adapter.db import transaction
from fhir.client import DEFAULT_TOPICS, FhirClient
from fhir.errors import FhirError, UpstreamError
from fhir.mapping import parse_instant
from fhir.models import FhirPollCursor, FhirSubscription
from fhir.service import FhirService
from fhir.validate import parse_data

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


__all__ = ["CreatedSubscription", "PollResult", "UpstreamError", "poll_once", "subscribe"]
