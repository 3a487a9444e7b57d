"""What a patient's reply does: matched to the patient by the contact's blind index and to
their latest open question, classified (``adapter.replies``), then acted on in the
caller's transaction.

- confirm: recorded, and queued for write-back to the hospital;
- cancel: the appointment is cancelled through the pipeline (an ``AppointmentCancelled``
  from ``reply``: pending reminders withdrawn, the cancellation notice by the rules) and
  queued for write-back;
- STOP / START: consent withdrawn / given back for that channel, the contact suspended /
  resumed;
- wrong number: the contact suspended at once and an incident opened (GDPR art. 33);
- anything else: the operator queue (``GET /api/replies?status=open``).

Nothing here logs or audits personal data: the audit gets pseudonyms and intents only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapter import events as ev
from adapter.bootstrap import Container
from adapter.compliance_gate import SYSTEM_ACTOR
from adapter.contact_check import open_contact_check, record_preference
from adapter.models import Appointment, Contact, Notification, Patient
from adapter.patients import CHANNEL_MEDIUM, normalise_phone
from adapter.replies import IntentKind, Question, classify_reply
from adapter.reply_models import Incident, PatientReply
from adapter.writeback import queue_writebacks
from channels.base import InboundReply
from compliance.consent_store import record_consent, withdraw

# Messages that ask "1 to confirm, 2 to cancel".
QUESTION_KINDS = ("booking_confirmation", "reminder", "reschedule_notice")
BREACH_NOTIFICATION_WINDOW = timedelta(hours=72)  # GDPR art. 33(1)


class ReplyAction(StrEnum):
    CONFIRM = "confirm"
    CANCEL = "cancel"
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    WRONG_NUMBER = "wrong_number"
    PREFERENCE = "contact_preference"  # the answer to a contact check
    QUEUE = "queue"  # for an operator


def decide(intent: IntentKind, *, known_sender: bool, open_question: bool) -> ReplyAction:
    """Pure: what to do with a reply of ``intent``.

    >>> decide(IntentKind.CANCEL, known_sender=True, open_question=True)
    <ReplyAction.CANCEL: 'cancel'>
    >>> decide(IntentKind.CANCEL, known_sender=True, open_question=False)
    <ReplyAction.QUEUE: 'queue'>
    """
    if not known_sender:
        return ReplyAction.QUEUE
    if intent is IntentKind.WRONG_NUMBER:
        return ReplyAction.WRONG_NUMBER
    if intent is IntentKind.STOP:
        return ReplyAction.OPT_OUT
    if intent is IntentKind.START:
        return ReplyAction.OPT_IN
    if intent is IntentKind.CONTACT_PREFERENCE:  # only when a contact check is open
        return ReplyAction.PREFERENCE
    if open_question and intent is IntentKind.CONFIRM:
        return ReplyAction.CONFIRM
    if open_question and intent is IntentKind.CANCEL:
        return ReplyAction.CANCEL
    return ReplyAction.QUEUE


@dataclass(frozen=True)
class Sender:
    """The contacts that match a reply's sender, and the open question if any."""

    contacts: list[Contact]
    patient: Patient | None
    question: Notification | None


def sender_contacts(session: Session, container: Container, reply: InboundReply, channel: str) -> list[Contact]:
    medium = CHANNEL_MEDIUM.get(channel)
    if medium is None:  # the sandbox: its addresses are phone numbers
        medium = "phone"
    address = (reply.chat_id or reply.from_address) if medium == "telegram" else reply.from_address
    if medium == "phone":
        address = normalise_phone(address) or address
    index = container.vault.blind_index(medium, address)
    # Only contacts in use: a number the hospital has dropped may now be someone
    # else's, who must not cancel the patient's appointment or stop their messages.
    return list(session.scalars(
        select(Contact).where(Contact.channel == medium, Contact.address_index == index, Contact.active.is_(True))
        .order_by(Contact.id)
    ))


def find_sender(session: Session, container: Container, reply: InboundReply, channel: str, *,
                now: datetime) -> Sender:
    """Match by blind index; of the patients sharing the address, the one written to
    last. A reply answers the last message sent on that channel, and only when it asked
    something ("1 to confirm, 2 to cancel") about an appointment still booked and still
    to come: a "No" to a later cancellation notice must not cancel the appointment an
    older confirmation asked about, nor a "No" after the visit cancel, here and at the
    hospital, a visit that took place, nor one the hospital has since given to another
    patient cancel that patient's. Anything else goes to the operators' queue."""
    contacts = sender_contacts(session, container, reply, channel)
    patient_ids = sorted({c.patient_id for c in contacts})
    if not patient_ids:
        return Sender([], None, None)
    last = session.scalar(
        select(Notification)
        .where(
            Notification.patient_id.in_(patient_ids),
            Notification.status.in_(("sent", "delivered", "read")),
            Notification.channel == channel,
        )
        .order_by(Notification.sent_at.desc(), Notification.id.desc())
        .limit(1)
    )
    if last is None:
        return Sender(contacts, session.get(Patient, patient_ids[0]), None)
    asked_about = session.execute(select(Appointment.status, Appointment.start, Appointment.patient_id)
                                  .where(Appointment.ref == last.subject_ref)).first()
    # Still that patient's: an appointment the hospital has since given to another patient
    # is not the first one's to cancel (the pipeline applies a cancel to its stored patient).
    asks = (last.kind in QUESTION_KINDS and asked_about is not None and asked_about.patient_id == last.patient_id
            and asked_about.status == "booked" and asked_about.start > now)
    return Sender(contacts, session.get(Patient, last.patient_id), last if asks else None)


def handle_reply(session: Session, container: Container, reply: InboundReply, channel: str, *, now: datetime) -> PatientReply:
    """Classify and act on one reply; idempotent per provider message id."""
    existing = session.scalar(select(PatientReply).where(
        PatientReply.provider == reply.provider, PatientReply.provider_message_id == reply.provider_message_id))
    if existing is not None:
        return existing
    sender = find_sender(session, container, reply, channel, now=reply.received_at or now)
    patient = sender.patient
    check = None
    if patient is not None:
        check = open_contact_check(session, patient.id, channel,
                                   after=sender.question.sent_at if sender.question else None)
    expecting = Question.CONTACT_PREFERENCE if check is not None else Question.APPOINTMENT
    intent = classify_reply(reply.text, patient.language if patient else None, expecting=expecting)
    action = decide(intent.kind, known_sender=patient is not None, open_question=sender.question is not None)
    question = check or sender.question
    subject = f"patient:{patient.id}" if patient else "system"
    row = PatientReply(
        provider=reply.provider, provider_message_id=reply.provider_message_id, channel=channel,
        patient_id=patient.id if patient else None,
        notification_id=question.id if question else None,
        subject_ref=question.subject_ref if question else "",
        intent=intent.kind.value, action=action.value,
        status="open" if action is ReplyAction.QUEUE else "done",
        text_enc=container.vault.encrypt_str(session, subject, reply.text),
        received_at=reply.received_at or now, handled_at=None if action is ReplyAction.QUEUE else now,
    )
    session.add(row)
    session.flush()
    details: dict[str, object] = {"reply": row.id, "intent": row.intent, "channel": channel}
    if patient is not None and action is ReplyAction.PREFERENCE:
        record_preference(session, patient.id, str(intent.channel), source=f"reply/{row.id}", now=now)
        details["preferred_channel"] = str(intent.channel)
    elif patient is not None:
        _ACTIONS[action](session, container, sender, row, now)
    if patient is not None:
        _audit(session, container, patient.id, f"reply: {action.value}", details, now)
    return row


def _confirm(session: Session, container: Container, sender: Sender, row: PatientReply, now: datetime) -> None:
    assert sender.question is not None
    appointment = _appointment(session, sender.question.subject_ref)
    queue_writebacks(session, container, appointment, row, "confirm", now=now)


def _cancel(session: Session, container: Container, sender: Sender, row: PatientReply, now: datetime) -> None:
    assert sender.question is not None and sender.patient is not None
    appointment = _appointment(session, sender.question.subject_ref)
    event = ev.AppointmentCancelled(
        origin=ev.Origin(source="reply", sender=f"{row.provider}", message_ref=f"reply/{row.id}"),
        occurred_at=now,
        patient=None,  # the appointment's own patient, as the pipeline has it stored
        appointment=ev.Appointment(ref=appointment.ref, start=appointment.start, location=appointment.location),
        reason="cancelled",
    )
    container.pipeline.handle(session, [event], now=now)
    queue_writebacks(session, container, appointment, row, "cancel", now=now)


def _opt_out(session: Session, container: Container, sender: Sender, row: PatientReply, now: datetime) -> None:
    for patient_id in sorted({c.patient_id for c in sender.contacts}):
        withdraw(session, patient_id=patient_id, source="reply", at=now, channel=row.channel,
                 source_ref=f"reply/{row.id}")
    _suspend(sender.contacts, f"stop:{row.channel}", now)


def _opt_in(session: Session, container: Container, sender: Sender, row: PatientReply, now: datetime) -> None:
    for patient_id in sorted({c.patient_id for c in sender.contacts}):
        record_consent(session, patient_id=patient_id, purpose="*", channel=row.channel, decision="permit",
                       source="reply", at=now, source_ref=f"reply/{row.id}")
    for contact in sender.contacts:
        if (contact.suspended_reason or "").startswith("stop:"):
            contact.suspended_at, contact.suspended_reason, contact.updated_at = None, None, now


def _wrong_number(session: Session, container: Container, sender: Sender, row: PatientReply, now: datetime) -> None:
    _suspend(sender.contacts, "wrong_number", now)
    last = session.scalar(
        select(Notification.id).where(Notification.patient_id == row.patient_id, Notification.channel == row.channel,
                                      Notification.sent_at.is_not(None))
        .order_by(Notification.sent_at.desc()).limit(1)
    )
    session.add(Incident(kind="wrong_number", patient_id=row.patient_id, notification_id=last, reply_id=row.id,
                         channel=row.channel, contacts_suspended=len(sender.contacts), status="open",
                         opened_at=now, deadline_at=now + BREACH_NOTIFICATION_WINDOW))
    session.flush()


def _queue(session: Session, container: Container, sender: Sender, row: PatientReply, now: datetime) -> None:
    """Nothing automatic: an operator reads it (``GET /api/replies?status=open``)."""


_ACTIONS = {
    ReplyAction.CONFIRM: _confirm,
    ReplyAction.CANCEL: _cancel,
    ReplyAction.OPT_OUT: _opt_out,
    ReplyAction.OPT_IN: _opt_in,
    ReplyAction.WRONG_NUMBER: _wrong_number,
    ReplyAction.QUEUE: _queue,
}


def _suspend(contacts: list[Contact], reason: str, now: datetime) -> None:
    for contact in contacts:
        if contact.suspended_reason != "wrong_number":  # a breach suspension outranks a STOP
            contact.suspended_at, contact.suspended_reason, contact.updated_at = now, reason, now


def _appointment(session: Session, ref: str) -> Appointment:
    row = session.scalar(select(Appointment).where(Appointment.ref == ref))
    assert row is not None  # the open question was joined on it
    return row


def _audit(session: Session, container: Container, patient_id: str, reason: str, details: dict[str, object],
           now: datetime) -> None:
    container.gate.audit.append(session, action="replied", actor=SYSTEM_ACTOR, subject_pseudonym=f"patient:{patient_id}",
                                reason=reason, details=details, at=now)
