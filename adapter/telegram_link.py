"""Linking a patient's Telegram chat by deep link (``channels.telegram``, issue 6 item 1).

An officer asks for a link (``POST /api/patients/{id}/telegram-link``) and hands it to the
patient; we keep only the token's digest. When the patient presses Start, the bot receives
``/start <token>``: a usable token is spent by a conditional UPDATE (so two concurrent
uses link once) and the chat becomes the patient's ``telegram`` contact. Nothing is
answered to the chat. A reused, expired, unknown or malformed token changes nothing and is
audited; the token itself is never audited, logged or stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from adapter.compliance_gate import SYSTEM_ACTOR, ComplianceGate
from adapter.contact_models import TelegramLink
from adapter.errors import Conflict, NotFound
from adapter.models import Patient
from adapter.patients import link_contact
from channels.base import InboundReply
from channels.errors import LinkTokenError
from channels.telegram import DEFAULT_LINK_TTL, deep_link, link_token_usable, mint_link_token, parse_link_request

TELEGRAM_MEDIUM = "telegram"


@dataclass(frozen=True)
class IssuedLink:
    """The deep link to give the patient (it carries the token) and when it stops working."""

    url: str
    expires_at: datetime


def issue_link(session: Session, gate: ComplianceGate, patient_id: str, *, bot_name: str, actor: str,
               now: datetime, ttl: timedelta = DEFAULT_LINK_TTL) -> IssuedLink:
    """Mint a one-time token for the patient; store its digest; audit without it."""
    if not bot_name:
        raise Conflict("telegram is not configured (ADAPTER_TELEGRAM_BOT_NAME)")
    patient = session.get(Patient, patient_id)
    if patient is None or patient.merged_into:
        raise NotFound(f"no patient {patient_id!r}")
    token = mint_link_token(now, ttl)
    row = TelegramLink(digest=token.digest, patient_id=patient.id, expires_at=token.expires_at, created_at=now)
    session.add(row)
    session.flush()
    gate.audit.append(session, action="received", actor=actor, subject_pseudonym=f"patient:{patient.id}",
                      reason="telegram link issued", details={"link": row.id, "expires_at": token.expires_at.isoformat()},
                      at=now)
    return IssuedLink(deep_link(bot_name, token.token), token.expires_at)


def accept_link(session: Session, gate: ComplianceGate, reply: InboundReply, *, now: datetime) -> str | None:
    """Handle a Telegram message if it is ``/start <token>``: the id of the patient whose
    token it carries ("" when none is known). None for any other message (a reply for
    :func:`adapter.replies_flow.handle_reply`)."""
    try:
        request = parse_link_request(reply)
    except LinkTokenError:
        _refused(gate, session, None, "malformed token", now)
        return ""
    if request is None:
        return None
    link = session.scalar(select(TelegramLink).where(TelegramLink.digest == request.digest))
    if link is None:
        _refused(gate, session, None, "unknown token", now)
        return ""
    if not link_token_usable(link.expires_at, link.used_at, now):
        _refused(gate, session, link, "token already used" if link.used_at else "token expired", now)
        return link.patient_id
    spent = session.execute(
        update(TelegramLink)
        .where(TelegramLink.id == link.id, TelegramLink.used_at.is_(None), TelegramLink.expires_at > now)
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if spent != 1:
        _refused(gate, session, link, "token already used", now)
        return link.patient_id
    patient_id = _surviving(session, link.patient_id)
    contact = link_contact(session, gate.vault, patient_id, TELEGRAM_MEDIUM, request.chat_id, now=now)
    gate.audit.append(session, action="replied", actor=SYSTEM_ACTOR, subject_pseudonym=f"patient:{patient_id}",
                      reason="telegram chat linked", details={"link": link.id, "contact": contact.id}, at=now)
    return True


def _surviving(session: Session, patient_id: str) -> str:
    """The record a merged patient lives on in (HL7 A40)."""
    patient = session.get(Patient, patient_id)
    while patient is not None and patient.merged_into:
        patient = session.get(Patient, patient.merged_into)
    return patient.id if patient is not None else patient_id


def _refused(gate: ComplianceGate, session: Session, link: TelegramLink | None, why: str, now: datetime) -> None:
    gate.audit.append(session, action="replied", actor=SYSTEM_ACTOR,
                      subject_pseudonym=f"patient:{link.patient_id}" if link else "",
                      reason=f"telegram link refused: {why}", details={"link": link.id if link else None},
                      at=now, outcome="minor_failure")
