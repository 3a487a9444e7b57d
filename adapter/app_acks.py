"""Enhanced acknowledgement mode (HL7 v2.5 §2.9.3): the accept ACK (CA) goes back
on the sender's connection as soon as the message is stored; the *application*
ACK follows after processing, as a message of its own to the sender's listener
(the facility's ``writeback`` endpoint in config/facilities.yaml), when MSH-16
asks for it: AL always, ER only on error, SU only on success, NE never.

Application ACKs are an outbox: the row is written in the transaction that
records the processing result, and sent with retries.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapter.db import transaction
from adapter.models import ApplicationAck, InboundMessage, InboundRaw
from adapter.writeback import (ATTEMPT_TIMEOUT, LEASE, WritebackError, deliver_over_mllp, lease_lasts_an_attempt,
                               requeue, settle_attempt)
from hl7.ack import AckCode, AckError, build_ack
from hl7.header import read_header

log = logging.getLogger(__name__)

# "ignored": an SIU without PID about an appointment erased with its patient: nothing to apply, nothing to fix.
VERDICT = {"processed": AckCode.AA, "ignored": AckCode.AA, "error": AckCode.AE, "rejected": AckCode.AR}


def wants_application_ack(application_ack_type: str, status: str) -> bool:
    """MSH-16 (HL7 table 0155) against the processing result."""
    mode = application_ack_type.strip().upper()
    if mode == "AL":
        return True
    if mode == "ER":
        return status != "processed"
    if mode == "SU":
        return status == "processed"
    return False


def wants_accept_ack(accept_ack_type: str, *, stored: bool) -> bool:
    """MSH-15 (table 0155) for the commit ACK: ER only when storing failed, SU only
    when it succeeded, NE never; AL, empty or anything unknown: always (a sender
    must never be left waiting because of a value we do not understand)."""
    mode = accept_ack_type.strip().upper()
    if mode == "NE":
        return False
    if mode == "ER":
        return not stored
    if mode == "SU":
        return stored
    return True


def queue_application_ack(session: Session, message_id: int, *, now: datetime,
                          outcome: tuple[str, str | None, str | None]) -> None:
    """Owe the sender an application ACK for ``message_id`` (once: replays reuse it),
    now that processing came to ``outcome`` (status, error, error code), recorded after
    this call. A replay tells the sender again only when the verdict changed: the same
    AE a second time would read as a second failure."""
    existing = session.scalar(select(ApplicationAck).where(ApplicationAck.inbound_message_id == message_id))
    if existing is None:
        session.add(ApplicationAck(inbound_message_id=message_id, status="pending", attempts=0,
                                   next_attempt_at=now, created_at=now))
    elif existing.status != "pending":
        told = session.execute(select(InboundMessage.status, InboundMessage.error, InboundMessage.error_code)
                               .where(InboundMessage.id == message_id)).one()
        if verdict(*told) != verdict(*outcome):
            requeue(existing, now=now)


def verdict(status: str, error: str | None, error_code: str | None) -> tuple[AckCode, AckError | None]:
    """MSA-1 and ERR for a message's processing result: AA, AE or AR (the reason's
    own table 0357 code in ERR-3; 207 or 200 when none was recorded)."""
    code = VERDICT.get(status, AckCode.AE)
    if code is AckCode.AE:
        return code, AckError(error_code or "207", (error or "could not be processed")[:200])
    if code is AckCode.AR:
        return code, AckError(error_code or "200", (error or "unsupported message")[:200])
    return code, None


def application_ack(raw: bytes, status: str, error: str | None, error_code: str | None = None) -> bytes:
    """The ACK message for a processed message: AA, AE or AR, with ERR on an error."""
    code, reason = verdict(status, error, error_code)
    return build_ack(read_header(raw), code, error=reason)


class ApplicationAckSender:
    """Sends what is owed, oldest first; retries with back-off for
    ``ADAPTER_HOSPITAL_RETRY_HOURS``, then gives up (failed)."""

    def __init__(self, container) -> None:  # noqa: ANN001 - the Container
        self.container = container

    async def run_once(self) -> int:
        due, leased_until = await asyncio.to_thread(self._due)
        for ack_id, endpoint, payload in due:
            if not lease_lasts_an_attempt(self.container.clock.now(), leased_until):
                break
            error: str | None = None
            try:
                if endpoint is None:
                    raise WritebackError("the sending facility has no listener configured (writeback)")
                async with asyncio.timeout(ATTEMPT_TIMEOUT.total_seconds()):
                    await deliver_over_mllp(endpoint, payload)
            except WritebackError as exc:
                error = str(exc)
            except TimeoutError:
                error = f"no answer within {ATTEMPT_TIMEOUT.total_seconds():.0f} s"
            except Exception as exc:  # noqa: BLE001 - a bug must not leave the attempt unrecorded
                log.exception("application ACK %s failed", ack_id)
                error = f"internal: {type(exc).__name__}"
            await asyncio.to_thread(self._record, ack_id, error)
        return len(due)

    def _due(self) -> tuple[list[tuple[int, object, bytes]], datetime]:
        """Claim a batch of due ACKs (see ``adapter.writeback.LEASE``) and build them."""
        now = self.container.clock.now()
        out = []
        with transaction(self.container.sessions) as session:
            rows = session.execute(
                select(ApplicationAck, InboundMessage, InboundRaw.raw_enc)
                .join(InboundMessage, InboundMessage.id == ApplicationAck.inbound_message_id)
                .outerjoin(InboundRaw, InboundRaw.message_id == InboundMessage.id)
                .where(ApplicationAck.status == "pending", ApplicationAck.next_attempt_at <= now)
                .order_by(ApplicationAck.id)
                .limit(20)
                .with_for_update(skip_locked=True, of=ApplicationAck)  # PostgreSQL; SQLite needs none
            ).all()
            for ack, message, raw_enc in rows:
                if raw_enc is None:  # purged by retention before we could answer
                    ack.status, ack.last_error = "failed", "raw message no longer held"
                    continue
                raw = self.container.vault.decrypt(session, raw_enc)
                facility = self.container.facilities.for_facility(read_header(raw).facility)
                ack.next_attempt_at = now + LEASE
                out.append((ack.id, facility.writeback,
                            application_ack(raw, message.status, message.error, message.error_code)))
        return out, now + LEASE

    def _record(self, ack_id: int, error: str | None) -> None:
        now = self.container.clock.now()
        with transaction(self.container.sessions) as session:
            ack = session.get(ApplicationAck, ack_id)
            if ack is not None:
                settle_attempt(ack, error, now=now, what="application ACK",
                               retry_for=timedelta(hours=self.container.settings.hospital_retry_hours))
