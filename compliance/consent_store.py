"""The consent registry: statements appended to ``consent_record``, never updated, so the
history of every permit, deny, withdrawal and objection stays (proof of consent, art. 7(1))."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import bindparam, event, select
from sqlalchemy.orm import Session

from adapter.events import ConsentChanged
from compliance.consent import ANY, ConsentDecision, evaluate
from compliance.errors import ComplianceError
from compliance.models import ConsentRecord
from compliance.purposes import CompliancePolicy

SOURCES = frozenset({"fhir", "hl7", "reply", "api", "operator"})
DECISIONS = frozenset({"permit", "deny"})


def record_consent(
    session: Session,
    *,
    patient_id: str,
    purpose: str,
    channel: str,
    decision: str,
    source: str,
    at: datetime,
    source_ref: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
    recorded_by: str = "",
    active: bool = True,
) -> ConsentRecord:
    if decision not in DECISIONS:
        raise ComplianceError(f"consent decision must be permit or deny, not {decision!r}")
    if source not in SOURCES:
        raise ComplianceError(f"unknown consent source {source!r}")
    if at.tzinfo is None or (start and start.tzinfo is None) or (end and end.tzinfo is None):
        raise ComplianceError("consent times must be timezone-aware")
    row = ConsentRecord(patient_id=patient_id, purpose=purpose, channel=channel, decision=decision,
                        period_start=start, period_end=end, source=source, source_ref=source_ref,
                        active=active, recorded_at=at, recorded_by=recorded_by)
    session.add(row)
    session.flush()
    _cache(session).pop(patient_id, None)
    return row


def withdraw(
    session: Session, *, patient_id: str, source: str, at: datetime, purpose: str = ANY,
    channel: str = ANY, source_ref: str = "", recorded_by: str = "",
) -> ConsentRecord:
    """Withdrawal (art. 7(3)) or objection (art. 21): a ``deny`` that replaces what it covers.
    A STOP reply on SMS is ``withdraw(purpose="*", channel="sms", source="reply")``."""
    return record_consent(session, patient_id=patient_id, purpose=purpose, channel=channel,
                          decision="deny", source=source, at=at, source_ref=source_ref,
                          recorded_by=recorded_by)


_CACHE = "consent_records"
_RECORDS_OF = (select(ConsentRecord).where(ConsentRecord.patient_id == bindparam("patient"))
               .order_by(ConsentRecord.recorded_at, ConsentRecord.id))  # built once: building costs more than running


def _cache(session: Session) -> dict[str, list[ConsentRecord]]:
    return session.info.setdefault(_CACHE, {})


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_undone_savepoint(session: Session, _undone: object) -> None:
    """A rolled-back savepoint may have written consent that the copy holds: read again."""
    session.info.pop(_CACHE, None)


def records_for(session: Session, patient_id: str) -> list[ConsentRecord]:
    """The patient's whole consent history, oldest first. Read once per session:
    one event asks for several decisions; writes here forget the copy."""
    cache = _cache(session)
    if patient_id not in cache:
        cache[patient_id] = list(session.scalars(_RECORDS_OF, {"patient": patient_id}))
    return list(cache[patient_id])


def load_records(session: Session, patient_ids: Iterable[str]) -> None:
    """Read the consent histories of many patients with one query into the session's
    copy (a dispatcher round decides for every patient it sends to)."""
    cache = _cache(session)
    wanted = {patient_id for patient_id in patient_ids if patient_id is not None and patient_id not in cache}
    if not wanted:
        return
    found: dict[str, list[ConsentRecord]] = {patient_id: [] for patient_id in wanted}
    query = (select(ConsentRecord).where(ConsentRecord.patient_id.in_(wanted))
             .order_by(ConsentRecord.recorded_at, ConsentRecord.id))
    for row in session.scalars(query):
        found[row.patient_id].append(row)
    cache.update(found)


def new_patient(session: Session, patient_id: str) -> None:
    """A patient created in this session has no consent history yet: their decisions
    here need no look-up (a record written later forgets this, as any cached copy)."""
    _cache(session)[patient_id] = []


def apply_consent_event(
    session: Session, patient_id: str, event: ConsentChanged, *, at: datetime | None = None
) -> list[ConsentRecord]:
    """Record a FHIR (or HL7) Consent as one set: it replaces the previous set from the same
    Consent; an inactive Consent (or one with no provisions) leaves an empty set."""
    at = at or event.occurred_at
    source = "hl7" if event.origin.source == "hl7" else "fhir"
    if not event.active or not event.provisions:
        return [record_consent(session, patient_id=patient_id, purpose=ANY, channel=ANY, decision="deny",
                               source=source, source_ref=event.consent_ref, at=at, active=False,
                               recorded_by=event.origin.sender)]
    return [
        record_consent(session, patient_id=patient_id, purpose=p.purpose, channel=p.channel,
                       decision=p.decision, source=source, source_ref=event.consent_ref, at=at,
                       start=p.start, end=p.end, recorded_by=event.origin.sender)
        for p in event.provisions
    ]


def decide(
    session: Session, policy: CompliancePolicy, *, patient_id: str, kind: str, channel: str, at: datetime
) -> ConsentDecision:
    """Consent for one message kind on one channel, from the stored history."""
    basis = policy.basis_for_kind(kind)
    return evaluate(records_for(session, patient_id), purpose=basis.purpose, channel=channel, at=at, basis=basis)


def reassign(session: Session, *, from_patient: str, to_patient: str) -> int:
    """A merge (HL7 A40): the surviving patient takes over the retired one's consent
    history. Rows keep their times and sources; only the owner changes."""
    rows = list(session.scalars(select(ConsentRecord).where(ConsentRecord.patient_id == from_patient)))
    for row in rows:
        row.patient_id = to_patient
    session.flush()
    _cache(session).pop(from_patient, None)
    _cache(session).pop(to_patient, None)
    return len(rows)
