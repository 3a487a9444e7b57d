"""The contact check (issue 6, item 7): a message asking the patient how they want to be
reached, whose answer ("EMAIL", "TELEGRAM", …) becomes their preferred channel, tried
first by the dispatcher from then on.

A check is requested by an officer (``POST /api/patients/{id}/contact-check``) and sent
like any notification, on the ``administrative`` purpose (config/purposes.yaml). A reply
answers it while it is the patient's latest open question on that channel.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from uuid6 import uuid7

from adapter.compliance_gate import ComplianceGate
from adapter.contact_models import ContactPreference
from adapter.errors import NotFound
from adapter.models import Notification, Patient
from adapter.reply_models import PatientReply

CONTACT_CHECK_KIND = "contact_check"
CONTACT_CHECK_RULE = "contact-check"
ANSWERED_BY = "contact_preference"  # the reply action that closes a check


def request_contact_check(session: Session, gate: ComplianceGate, patient_id: str, *, actor: str,
                          now: datetime) -> Notification:
    """Schedule a contact check for now: ``scheduled``, or ``suppressed`` with the reason
    when consent does not allow it. Audited with who asked."""
    patient = session.get(Patient, patient_id)
    if patient is None or patient.merged_into:
        raise NotFound(f"no patient {patient_id!r}")
    decision = gate.decide_at_schedule(session, patient.id, CONTACT_CHECK_KIND, now=now)
    status, reason = ("scheduled", None) if decision.allowed else ("suppressed", decision.reason)
    row = Notification(
        patient_id=patient.id, kind=CONTACT_CHECK_KIND, rule_id=CONTACT_CHECK_RULE, subject_ref="",
        scheduled_for=now, status=status, urgent=False, idempotency_key=uuid7().hex, reason=reason,
        status_at=now, created_at=now, tried_channels=[],
        decision={
            "request": {"source": "api", "actor": actor, "at": now.isoformat()},
            "rule": {"id": CONTACT_CHECK_RULE, "kind": CONTACT_CHECK_KIND, "scheduled_for": now.isoformat()},
            "at_schedule": {"status": status, "reason": reason, "consent": decision.as_dict()},
        },
    )
    session.add(row)
    session.flush()
    gate.audit.append(session, action="received", actor=actor, subject_pseudonym=f"patient:{patient.id}",
                      reason="contact check requested", details={"notification": row.id}, at=now)
    gate.scheduled(session, [row], now=now)
    return row


def open_contact_check(session: Session, patient_id: str, channel: str, *,
                       after: datetime | None = None) -> Notification | None:
    """The contact check a reply on ``channel`` answers: the latest one sent to the patient
    on that channel, not answered yet, and sent after ``after`` (the appointment question
    it would otherwise answer), else None."""
    query = (
        select(Notification)
        .where(
            Notification.patient_id == patient_id,
            Notification.kind == CONTACT_CHECK_KIND,
            Notification.channel == channel,
            Notification.status.in_(("sent", "delivered", "read")),
        )
        .order_by(Notification.sent_at.desc(), Notification.id.desc())
        .limit(1)
    )
    check = session.scalar(query)
    if check is None or (after is not None and check.sent_at is not None and check.sent_at < after):
        return None
    answered = session.scalar(
        select(PatientReply.id).where(PatientReply.notification_id == check.id, PatientReply.action == ANSWERED_BY)
        .limit(1)
    )
    return None if answered is not None else check


def record_preference(session: Session, patient_id: str, channel: str, *, source: str, now: datetime) -> None:
    """Store the patient's chosen channel (the caller audits the reply that chose it)."""
    row = session.get(ContactPreference, patient_id)
    if row is None:
        session.add(ContactPreference(patient_id=patient_id, channel=channel, source=source[:40], updated_at=now))
    else:
        row.channel, row.source, row.updated_at = channel, source[:40], now
    session.flush()


_NO_PREFERENCE = "patients_without_preference"  # session.info, see load_preferences


def load_preferences(session: Session, patient_ids: set[str]) -> list[ContactPreference]:
    """Read the channel choices of many patients with one query, for
    :func:`ordered_channels` in this session (the rows found stay in the session;
    the caller keeps them referenced)."""
    found = list(session.scalars(select(ContactPreference).where(ContactPreference.patient_id.in_(patient_ids))))
    session.info.setdefault(_NO_PREFERENCE, set()).update(patient_ids - {row.patient_id for row in found})
    return found


def ordered_channels(session: Session, patient: Patient, preference: list[str]) -> list[str]:
    """The live channels in the order to try them for ``patient``: their explicit choice
    first when it is live, then the deployment's order (``ADAPTER_CHANNELS``)."""
    none = patient.id in session.info.get(_NO_PREFERENCE, ())
    chosen = None if none else session.get(ContactPreference, patient.id)
    if chosen is None or chosen.channel not in preference:
        return list(preference)
    return [chosen.channel, *(c for c in preference if c != chosen.channel)]
