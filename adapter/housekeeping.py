"""Scheduled compliance jobs, run by the in-process worker: signing audit tree heads,
the retention purge (config/purposes.yaml ``retention``) and adopting a rotated
master key."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Delete, delete, exists, literal_column, select, update
from sqlalchemy.orm import Session

from adapter.bootstrap import Container
from adapter.db import overwriting_deleted, transaction
from adapter.key_rotation import adopt_master_key_if_changed
from adapter.models import InboundMessage, InboundRaw, Invoice, Notification, OutboxMessage
from adapter.reply_models import PatientReply, WebhookEvent
from adapter.storage_full import is_storage_full
from compliance.audit import SYSTEM_ACTOR, TreeHead
from compliance.errors import AuditIntegrityError
from compliance.records import retention_cutoffs

log = logging.getLogger(__name__)

TREE_HEAD_EVERY = timedelta(minutes=1)
HOUSEKEEPING_EVERY_S = 60.0
KEY_CHECK_EVERY_S = 5.0
HOUSEKEEPER = f"{SYSTEM_ACTOR}:housekeeping"


@dataclass(frozen=True)
class PurgeReport:
    inbound_raw: int
    sent_bodies: int
    webhooks: int = 0  # provider callbacks as received (addresses, reply text)
    reply_texts: int = 0  # what patients wrote
    sandbox_outbox: int = 0  # what the sandbox "sent"
    settled_invoices: int = 0  # invoices no longer due (amount, number, notice code)


def sign_tree_head_if_due(container: Container, *, now: datetime, every: timedelta = TREE_HEAD_EVERY) -> TreeHead | None:
    """Sign a tree head when entries were added since the last one and it is at least
    ``every`` old. A log that no longer matches its last head is not signed over
    (logged; ``audit verify`` says where)."""
    audit = container.audit
    with transaction(container.sessions) as session:
        heads = audit.tree_heads(session)
        last = heads[-1] if heads else None
        if last is not None:
            if audit.size(session) <= last.tree_size:
                return None
            if now - datetime.fromtimestamp(last.timestamp_ms / 1000, now.tzinfo) < every:
                return None
        elif audit.size(session) == 0:
            return None
        try:
            return audit.sign_tree_head(session, now)
        except AuditIntegrityError as exc:
            log.error("audit tree head not signed: %s", exc)
            return None


def purge_expired(container: Container, *, now: datetime) -> PurgeReport:
    """Raw inbound messages and sent message bodies older than their retention period
    (GDPR art. 5(1)(e)) are deleted (raw messages) or set to NULL (bodies), and so are
    invoices settled longer ago than theirs; the messages' and notifications' rows,
    with status and why-record, stay."""
    cutoffs = retention_cutoffs(container.gate.policy, now)
    # It runs every minute in one write transaction, which ACKs wait for: each
    # statement reads what has expired (and a little more), never a whole table.
    # What it removes is overwritten in the database files too, as an erasure's is
    # (sealed, but the system key that opens a raw message is still there).
    report = PurgeReport(0, 0, 0, 0, 0, 0)
    with transaction(container.sessions) as session, overwriting_deleted(
            session, deleted=lambda: any(vars(report).values())):
        raw = session.execute(_purge_raw(session, cutoffs.inbound_raw_before)).rowcount
        bodies = session.execute(  # ix_notification_body_kept: only notifications still holding a body
            update(Notification)
            .where(Notification.body_enc.is_not(None), Notification.sent_at < cutoffs.sent_body_before)
            .values(body_enc=None)
        ).rowcount
        # Callbacks hold addresses and replies as received: kept like raw inbound messages.
        webhooks = session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.request_enc.is_not(None), WebhookEvent.received_at < cutoffs.inbound_raw_before,
                   WebhookEvent.processed_at.is_not(None))
            .values(request_enc=None)
        ).rowcount
        # What patients wrote, and what the sandbox recorded, are message bodies.
        replies = session.execute(
            update(PatientReply)
            .where(PatientReply.text_enc.is_not(None), PatientReply.received_at < cutoffs.sent_body_before)
            .values(text_enc=None)
        ).rowcount
        outbox = session.execute(
            delete(OutboxMessage).where(OutboxMessage.created_at < cutoffs.sent_body_before)
        ).rowcount
        # Paid or cancelled: the billing system keeps the invoice; a reminder is no longer owed.
        invoices = session.execute(  # ix_invoice_settled: only invoices no longer due
            delete(Invoice).where(Invoice.status != literal_column("'issued'"),  # as the index says it
                                  Invoice.updated_at < cutoffs.settled_invoice_before)
        ).rowcount
        report = PurgeReport(raw, bodies, webhooks, replies, outbox, invoices)
        if any(vars(report).values()):
            container.audit.append(session, action="retention_purged", actor=HOUSEKEEPER, subject_pseudonym="",
                                   reason="retention periods from config/purposes.yaml",
                                   details=vars(report), at=now)
    return report


def _purge_raw(session: Session, before: datetime) -> Delete:
    """Deleting the raw messages received ``before``, oldest first. ``inbound_raw`` holds
    only raw messages not yet purged, and ids grow with the time received: the search
    ends at the first one still within retention. (A message stored a few milliseconds
    out of order by another writer goes at the next round.) Messages still waiting to
    be processed keep theirs."""
    first_kept = session.scalar(
        select(InboundRaw.message_id).join(InboundMessage, InboundMessage.id == InboundRaw.message_id)
        .where(InboundMessage.received_at >= before).order_by(InboundRaw.message_id).limit(1))
    expired = exists().where(InboundMessage.id == InboundRaw.message_id, InboundMessage.received_at < before,
                             InboundMessage.status != "stored")
    if first_kept is None:
        return delete(InboundRaw).where(expired)
    return delete(InboundRaw).where(InboundRaw.message_id < first_kept, expired)


def run_housekeeping(container: Container) -> None:
    """One round of the minute jobs; each failure is logged and the others still run."""
    now = container.clock.now()
    for job in (sign_tree_head_if_due, purge_expired):
        try:
            job(container, now=now)
        except Exception as exc:
            if not is_storage_full(exc):  # a full disk is logged once, when writes are first refused
                log.exception("housekeeping job %s failed", job.__name__)


async def run_housekeeping_forever(container: Container, *, stop: asyncio.Event,
                                   every_s: float = HOUSEKEEPING_EVERY_S,
                                   key_check_every_s: float = KEY_CHECK_EVERY_S) -> None:
    """The minute jobs, and every few seconds a look for a rotated master key."""
    loop = asyncio.get_running_loop()
    next_round = loop.time()
    while not stop.is_set():
        try:
            await asyncio.to_thread(adopt_master_key_if_changed, container)
        except Exception as exc:
            if not is_storage_full(exc):  # a full disk is logged once, when writes are first refused
                log.exception("adopting the rotated master key failed; retrying")
        if loop.time() >= next_round:
            await asyncio.to_thread(run_housekeeping, container)
            next_round = loop.time() + every_s
        try:
            await asyncio.wait_for(stop.wait(), timeout=min(key_check_every_s, every_s))
        except TimeoutError:
            pass
