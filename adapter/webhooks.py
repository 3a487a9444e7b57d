"""Providers' webhooks: delivery statuses and patients' replies (INTERFACES.md, HTTP).

No bearer token: each call is checked by its provider's signature (a bad one is 403
and changes nothing). A verified callback is stored first (``webhook_event``, unique
per provider and body digest, so a provider's retry is a no-op), committed, then
processed; the answer is 200 even for a message id we do not know, because providers
retry failures and WhatsApp disables a webhook that keeps failing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapter.bootstrap import Container
from adapter.db import read_transaction, transaction
from adapter.models import Notification
from adapter.replies_flow import handle_reply
from adapter.telegram_link import accept_link
from adapter.reply_models import WebhookEvent, WebhookEventPatient
from adapter.storage_full import is_storage_full
from channels.base import Channel, DeliveryStatus, InboundReply, StatusUpdate, WebhookRequest
from channels.errors import SignatureError, WebhookPayloadError

log = logging.getLogger(__name__)

# URL provider → the live channel's name in ADAPTER_CHANNELS.
CHANNEL_FOR_PROVIDER = {"twilio": "sms", "whatsapp": "whatsapp", "telegram": "telegram", "sandbox": "sandbox"}
# Headers a provider's signature may depend on; only these are kept for re-processing.
SIGNED_HEADERS = ("x-twilio-signature", "x-hub-signature-256", "x-telegram-bot-api-secret-token",
                  "x-sandbox-signature", "content-type")
# A status may arrive before the send that caused it is recorded: try again this long.
UNMATCHED_RETRY_FOR = timedelta(minutes=10)
UNMATCHED_RETRY_EVERY = timedelta(seconds=2)
STORED_GRACE = timedelta(seconds=2)  # the route processes inline; the worker picks up what it left

# Forward order of a notification once handed to a provider. A failure reported of a sent
# one fails it over (adapter.dispatch); one back in the queue, or sent again by another
# channel, is no longer the message the provider reports on.
_RANK = {"sent": 2, "delivered": 3, "read": 4}


def next_status(current: str, reported: DeliveryStatus) -> str | None:
    """The status a notification moves to on a provider's report, or None to ignore it.
    Never backwards: delivered after read is ignored, failed only follows sent (a failure
    reported after the delivery, out of order, is not one), and nothing moves a notification
    that is not with a provider (back in the queue after a failure, to be failed over).

    >>> next_status("delivered", DeliveryStatus.READ), next_status("read", DeliveryStatus.DELIVERED)
    ('read', None)
    >>> next_status("sent", DeliveryStatus.FAILED), next_status("delivered", DeliveryStatus.FAILED)
    ('failed', None)
    >>> next_status("scheduled", DeliveryStatus.SENT), next_status("claimed", DeliveryStatus.DELIVERED)
    (None, None)
    """
    if current not in _RANK:
        return None
    if reported is DeliveryStatus.FAILED:
        return "failed" if current == "sent" else None
    return reported.value if _RANK[reported.value] > _RANK[current] else None


def apply_status(session: Session, container: Container, update: StatusUpdate, *, now: datetime) -> str | None:
    """Apply one update; the patient of the notification it reports on, None when no
    notification has that provider message id. A final failure reported after the
    provider accepted the message fails over to the patient's next channel, as a final
    error answered to the send does."""
    row = session.scalar(
        select(Notification).where(Notification.provider_message_id == update.provider_message_id)
    )
    if row is None:
        return None
    moved = next_status(row.status, update.status)
    if moved == "failed":
        error = f"provider reported failure {update.error_code or ''} {update.error_text or ''}".strip()
        container.dispatcher.fail_over(session, row, row.channel or "", error, now=now)
    elif moved is not None:
        row.status, row.status_at = moved, now
        container.gate.status_changed(session, row, now=now)
    return row.patient_id


@dataclass(frozen=True)
class Parsed:
    statuses: list[StatusUpdate]
    replies: list[InboundReply]


def parse(channel: Channel, provider: str, kind: str, request: WebhookRequest) -> Parsed:
    """Verify and translate. WhatsApp sends statuses and messages to one URL: both parsers."""
    if provider == "whatsapp":
        return Parsed(channel.parse_status(request), channel.parse_inbound(request))
    if kind == "status":
        return Parsed(channel.parse_status(request), [])
    return Parsed([], channel.parse_inbound(request))


def _seal(container: Container, session: Session, request: WebhookRequest) -> bytes:
    kept = {k.lower(): v for k, v in request.headers.items() if k.lower() in SIGNED_HEADERS}
    blob = json.dumps({"method": request.method, "url": request.url, "headers": kept,
                       "query": dict(request.query), "body": base64.b64encode(request.body).decode()})
    return container.vault.encrypt(session, "system", blob.encode())


def _unseal(container: Container, session: Session, sealed: bytes) -> WebhookRequest:
    data = json.loads(container.vault.decrypt(session, sealed))
    return WebhookRequest(data["method"], data["url"], data["headers"], data["query"], base64.b64decode(data["body"]))


def store(container: Container, provider: str, kind: str, request: WebhookRequest) -> int | None:
    """Store the verified callback; None when it is a retry of one already stored."""
    digest = hashlib.sha256(kind.encode() + b"\0" + request.body).hexdigest()
    try:
        with transaction(container.sessions) as session:
            row = WebhookEvent(provider=provider, kind=kind, dedupe_key=digest, received_at=container.clock.now(),
                               status="stored", attempts=0, request_enc=_seal(container, session, request))
            session.add(row)
            session.flush()
            return row.id
    except IntegrityError:
        return None


def process(container: Container, event_id: int, parsed: Parsed | None = None) -> str:
    """Apply a stored callback in one transaction; returns its new status."""
    now = container.clock.now()
    with transaction(container.sessions) as session:
        # Locked: the route and a worker's retry of what it left may reach it together.
        row = session.get(WebhookEvent, event_id, with_for_update=True)
        if row is None or row.status == "processed":
            return "processed"
        row.attempts += 1
        channel = container.channels[CHANNEL_FOR_PROVIDER[row.provider]]
        if parsed is None:
            parsed = parse(channel, row.provider, row.kind, _unseal(container, session, row.request_enc or b""))
        concerned = [apply_status(session, container, update, now=now) for update in parsed.statuses]
        matched = None not in concerned
        for reply in parsed.replies:
            linked = accept_link(session, container.gate, reply, now=now) if row.provider == "telegram" else None
            if linked is None:  # not a deep-link Start: a reply
                linked = handle_reply(session, container, reply, CHANNEL_FOR_PROVIDER[row.provider], now=now).patient_id
            concerned.append(linked)
        _record_patients(session, event_id, concerned)
        expired = now - row.received_at > UNMATCHED_RETRY_FOR
        row.status = "processed" if matched or expired else "unmatched"
        row.processed_at = now
        return row.status


def _record_patients(session: Session, event_id: int, concerned: list[str | None]) -> None:
    """Which patients the callback as received speaks of: their erasure deletes it."""
    known = set(session.scalars(select(WebhookEventPatient.patient_id).where(WebhookEventPatient.event_id == event_id)))
    session.add_all(WebhookEventPatient(event_id=event_id, patient_id=patient_id)
                    for patient_id in sorted({p for p in concerned if p} - known))


def _to_retry(now: datetime) -> ColumnElement[bool]:
    return or_(
        and_(WebhookEvent.status == "stored", WebhookEvent.received_at < now - STORED_GRACE),
        and_(WebhookEvent.status == "unmatched", WebhookEvent.processed_at < now - UNMATCHED_RETRY_EVERY),
    )


def process_pending(container: Container, limit: int = 100) -> int:
    """Retry callbacks left stored (a crash) or unmatched (status before send recorded)."""
    with transaction(container.sessions) as session:
        ids = list(session.scalars(select(WebhookEvent.id).where(_to_retry(container.clock.now()))
                                   .order_by(WebhookEvent.id).limit(limit)))
    for event_id in ids:
        try:
            process(container, event_id)
        except Exception as exc:  # noqa: BLE001 - one bad callback must not stop the others
            log.warning("webhook event %s failed: %s", event_id, type(exc).__name__)
            with transaction(container.sessions) as session:
                row = session.get(WebhookEvent, event_id)
                if row is not None:
                    row.status, row.error = "error", type(exc).__name__
    return len(ids)


def webhooks_router(container: Container) -> APIRouter:
    router = APIRouter(prefix="/webhooks", tags=["provider webhooks"])

    def channel_for(provider: str) -> Channel:
        name = CHANNEL_FOR_PROVIDER.get(provider)
        if name is None or name not in container.channels:
            raise HTTPException(404, f"no live channel for provider {provider!r}")
        return container.channels[name]

    def webhook_request(request: Request, body: bytes) -> WebhookRequest:
        url = container.settings.public_base_url.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        return WebhookRequest(request.method, url, dict(request.headers), dict(request.query_params), body)

    async def receive(provider: str, kind: str, request: Request) -> dict[str, object]:
        channel = channel_for(provider)
        call = webhook_request(request, await request.body())
        try:
            parsed = parse(channel, provider, kind, call)
        except SignatureError:
            raise HTTPException(403, "signature does not match") from None
        except WebhookPayloadError as exc:
            raise HTTPException(400, str(exc)) from None
        event_id = await asyncio.to_thread(store, container, provider, kind, call)
        if event_id is None:
            return {"status": "duplicate"}
        try:
            status = await asyncio.to_thread(process, container, event_id, parsed)
        except Exception as exc:  # noqa: BLE001 - stored: the worker tries again; the provider must not
            log.warning("webhook event %s not processed yet: %s", event_id, type(exc).__name__)
            status = "stored"
        return {"status": status}

    @router.post("/{provider}/status")
    async def status_callback(provider: str, request: Request) -> dict[str, object]:
        """A delivery-status callback (sent, delivered, read, failed), signed by the provider."""
        return await receive(provider, "status", request)

    @router.post("/{provider}/inbound")
    async def inbound(provider: str, request: Request) -> dict[str, object]:
        """A patient's message, signed by the provider."""
        return await receive(provider, "inbound", request)

    async def whatsapp_handshake(request: Request) -> Response:
        channel = channel_for("whatsapp")
        try:
            challenge = channel.verify_subscription(dict(request.query_params))  # type: ignore[attr-defined]
        except SignatureError:
            raise HTTPException(403, "verify token does not match") from None
        except WebhookPayloadError as exc:
            raise HTTPException(400, str(exc)) from None
        return PlainTextResponse(challenge)

    for path in ("/whatsapp/status", "/whatsapp/inbound"):
        router.add_api_route(path, whatsapp_handshake, methods=["GET"], response_class=PlainTextResponse,
                             summary="WhatsApp webhook verification (hub.challenge)")
    return router


# -- the way back: what the in-process worker, or a Celery task, runs ------------------------


def way_back_due(container: Container) -> bool:
    """A callback waits to be tried again, or a write-back or an application ACK is due."""
    from adapter.models import ApplicationAck
    from adapter.reply_models import Writeback

    now = container.clock.now()
    with read_transaction(container.sessions) as session:
        return any(session.scalar(select(exists().where(where))) for where in (
            _to_retry(now),
            and_(Writeback.status == "pending", Writeback.next_attempt_at <= now),
            and_(ApplicationAck.status == "pending", ApplicationAck.next_attempt_at <= now),
        ))


class WayBack:
    """One sender's way back: callbacks left unprocessed, then due write-backs and
    application ACKs to the hospital. Any number may run, in any processes: each
    claims what it sends (``adapter.writeback.LEASE``)."""

    def __init__(self, container: Container) -> None:
        from adapter.app_acks import ApplicationAckSender
        from adapter.writeback import WritebackSender

        self.container = container
        self.writebacks = WritebackSender(container)
        self.app_acks = ApplicationAckSender(container)

    async def run_once(self) -> int:
        """One round; how many write-backs and ACKs it claimed (callbacks left
        unmatched are tried every few seconds: they do not count)."""
        await asyncio.to_thread(process_pending, self.container)
        busy = await self.writebacks.run_once()
        return busy + await self.app_acks.run_once()

    async def aclose(self) -> None:
        await self.writebacks.aclose()


async def run_way_back_forever(container: Container, *, stop: asyncio.Event, interval: float = 1.0) -> None:
    """The in-process worker's share of the way back (:class:`WayBack`), until
    ``stop`` is set."""
    way_back = WayBack(container)
    try:
        while not stop.is_set():
            busy = 0
            try:
                busy = await way_back.run_once()
            except Exception as exc:
                if not is_storage_full(exc):  # a full disk is logged once, when writes are first refused
                    log.exception("way-back round failed; retrying")
            if not busy:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                except TimeoutError:
                    pass
    finally:
        await way_back.aclose()
