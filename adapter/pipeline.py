"""From events to scheduled notifications: the core's one entry point for
everything hospitals tell us (HL7 and FHIR both end here).

event → patient and appointment state → trigger rules → consent → ``scheduled``
or ``suppressed`` (with the reason), all in the caller's transaction, so that a
message is marked processed together with what it caused.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from adapter import events as ev
from adapter.models import Appointment, Notification, Patient
from adapter.patients import merge_patients, upsert_patient
from adapter.rules import Plan, PlannedNotification, RuleSet, plan_notifications
from adapter.compliance_gate import ComplianceGate
from adapter.quiet_hours import SendingWindow


@dataclass(frozen=True)
class _Previous:
    status: str
    start: datetime


@dataclass
class Pipeline:
    rules: RuleSet
    gate: ComplianceGate
    tz: ZoneInfo
    window: SendingWindow | None = None  # quiet hours and public holidays; None = any time

    def handle(self, session: Session, events: Sequence[ev.Event], *, now: datetime) -> list[int]:
        """Apply ``events`` in order; return the ids of notifications created."""
        created: list[int] = []
        announced: set[tuple[str, str]] = set()
        for event in events:
            if isinstance(event, ev.ReportReady):
                # One message can carry a panel (several OBRs): one notice per message.
                key = (event.patient.key.value, f"{event.origin.sender}|{event.origin.message_ref}")
                if event.origin.message_ref and key in announced:
                    continue
                announced.add(key)
            created.extend(self._handle_one(session, event, now=now))
        return created

    def _handle_one(self, session: Session, event: ev.Event, *, now: datetime) -> list[int]:
        vault = self.gate.vault
        if isinstance(event, ev.PatientsMerged):
            keeper, retired_id = merge_patients(session, vault, event.surviving, event.retired, now=now)
            self.gate.patients_merged(session, keeper.id, retired_id, event, now=now)
            return []
        details: ev.PatientDetails | None = getattr(event, "patient", None)
        if details is None:
            return []
        patient = upsert_patient(session, vault, details, now=now)
        self.gate.received(session, patient.id, event, now=now)
        if isinstance(event, ev.ConsentChanged):
            self.gate.consent_changed(session, patient.id, event, now=now)
            return []
        if isinstance(event, ev.ReportWithdrawn):
            self._withdraw(session, event.report_ref, timed_only=False, reason="report withdrawn", now=now)
            return []
        if isinstance(event, ev.ReportReady):
            allowed, reason = self.gate.report_notice_allowed(session, patient.id, event, now=now)
            if not allowed:
                return self._create(session, patient, self._plan(event, now), event, now=now, veto=reason)
            return self._create(session, patient, self._plan(event, now), event, now=now)
        appointment = getattr(event, "appointment", None)
        if appointment is None:
            return []
        previous = self._store_appointment(session, patient, event, appointment, now=now)
        if isinstance(event, ev.AppointmentRescheduled) and previous is not None and previous.status == "booked" and previous.start == appointment.start:
            return []  # a modification that did not move the start (SIU^S14): nothing to tell
        if isinstance(event, ev.AppointmentRescheduled) and (previous is None or previous.status != "booked"):
            # First news of this appointment, or it comes back from a cancellation: a booking.
            event = ev.AppointmentBooked(event.origin, event.occurred_at, event.patient, appointment)
        plan = self._plan(event, now)
        if plan.withdraw_all or plan.withdraw_timed:
            self._withdraw(session, appointment.ref, timed_only=plan.withdraw_timed, reason=plan.reason, now=now)
        return self._create(session, patient, plan, event, now=now)

    def _plan(self, event: ev.Event, now: datetime) -> Plan:
        return plan_notifications(event, self.rules, now=now, tz=self.tz)

    def _store_appointment(
        self, session: Session, patient: Patient, event: ev.Event, appointment: ev.Appointment, *, now: datetime
    ) -> _Previous | None:
        """Store what the hospital says now; return what we knew before."""
        status = {
            ev.AppointmentBooked: "booked",
            ev.AppointmentRescheduled: "booked",
            ev.AppointmentCancelled: "cancelled",
            ev.AppointmentNoShow: "noshow",
            ev.AppointmentFulfilled: "fulfilled",
        }[type(event)]
        row = session.scalar(select(Appointment).where(Appointment.ref == appointment.ref))
        previous = None if row is None else _Previous(row.status, row.start)
        if row is None:
            row = Appointment(ref=appointment.ref, source=event.origin.source, sender=event.origin.sender)
            session.add(row)
        row.patient_id = patient.id
        row.start = appointment.start
        row.status = status
        row.location = appointment.location[:200]
        row.updated_at = now
        session.flush()
        return previous

    def _withdraw(self, session: Session, subject_ref: str, *, timed_only: bool, reason: str, now: datetime) -> None:
        """Cancel what is still waiting for ``subject_ref``. Immediate notices
        already on their way are left alone when only timed ones move."""
        timed_rules = [r.id for r in self.rules.rules if r.timed]
        query = update(Notification).where(
            Notification.subject_ref == subject_ref, Notification.status == "scheduled"
        )
        if timed_only:
            query = query.where(Notification.rule_id.in_(timed_rules))
        ids = list(session.scalars(select(Notification.id).where(query.whereclause)))  # type: ignore[arg-type]
        if not ids:
            return
        session.execute(
            update(Notification)
            .where(Notification.id.in_(ids), Notification.status == "scheduled")
            .values(status="cancelled", reason=reason[:200], status_at=now)
        )
        for notification_id in ids:
            self.gate.withdrawn(session, notification_id, reason, now=now)

    def _create(
        self,
        session: Session,
        patient: Patient,
        plan: Plan,
        event: ev.Event,
        *,
        now: datetime,
        veto: str | None = None,
    ) -> list[int]:
        rows = []
        for planned in plan.notifications:
            planned = self._in_window(planned, now)
            decision = self.gate.decide_at_schedule(session, patient.id, planned.kind, now=now)
            status, reason = "scheduled", None
            if veto:
                status, reason = "suppressed", veto
            elif planned.too_late:
                status, reason = "suppressed", "its time had already passed when the event arrived"
            elif not decision.allowed:
                status, reason = "suppressed", decision.reason
            rows.append(
                Notification(
                    patient_id=patient.id,
                    kind=planned.kind,
                    rule_id=planned.rule_id,
                    subject_ref=planned.subject_ref,
                    scheduled_for=planned.scheduled_for,
                    status=status,
                    urgent=planned.urgent,
                    idempotency_key=uuid.uuid4().hex,
                    reason=reason,
                    status_at=now,
                    created_at=now,
                    tried_channels=[],
                    decision=why_record(event, planned, decision.as_dict(), status, reason),
                )
            )
        session.add_all(rows)
        session.flush()  # one flush for the event's notifications: their ids for the audit
        for row in rows:
            self.gate.scheduled(session, row, now=now)
        return [row.id for row in rows]


    def _in_window(self, planned: PlannedNotification, now: datetime) -> PlannedNotification:
        """Non-urgent notices avoid quiet hours and holidays: a reminder that would
        fall at night goes out the evening before; anything else waits for morning."""
        if self.window is None or planned.urgent or planned.too_late or self.window.allows(planned.scheduled_for):
            return planned
        if planned.ahead_of_start:
            moved = self.window.last_open_before(planned.scheduled_for)
            if moved < now:
                moved = self.window.next_open(now)
                if moved > planned.scheduled_for:
                    return replace(planned, too_late=True)
        else:
            moved = self.window.next_open(planned.scheduled_for)
        return replace(planned, scheduled_for=moved)


def why_record(
    event: ev.Event, planned: PlannedNotification, consent: dict, status: str, reason: str | None
) -> dict:
    """The decision record kept with each notification (``/why``): no personal data."""
    return {
        "event": {
            "type": type(event).__name__,
            "source": event.origin.source,
            "sender": event.origin.sender,
            "message_ref": event.origin.message_ref,
            "occurred_at": event.occurred_at.isoformat(),
        },
        "rule": {"id": planned.rule_id, "kind": planned.kind, "scheduled_for": planned.scheduled_for.isoformat()},
        "at_schedule": {"status": status, "reason": reason, "consent": consent},
    }
