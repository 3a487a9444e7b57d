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

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from adapter import events as ev
from adapter.models import Appointment, Notification
from adapter.patients import merge_patients, upsert_patient
from adapter.rules import Plan, PlannedNotification, RuleSet, plan_notifications
from adapter.compliance_gate import ComplianceGate
from adapter.quiet_hours import SendingWindow


_APPOINTMENT = Appointment.__table__
_NOTIFICATION = Notification.__table__
# Built once: constructing a statement costs more than running it.
_FIND_APPOINTMENT = select(_APPOINTMENT.c.status, _APPOINTMENT.c.start).where(
    _APPOINTMENT.c.ref == bindparam("appointment"))
_UPDATE_APPOINTMENT = _APPOINTMENT.update().where(_APPOINTMENT.c.ref == bindparam("appointment"))
_INSERT_NOTIFICATIONS = _NOTIFICATION.insert().returning(_NOTIFICATION.c.id, sort_by_parameter_order=True)


@dataclass(frozen=True)
class _Previous:
    status: str
    start: datetime


@dataclass(frozen=True)
class _Created:
    """A notification just inserted, as its audit entry describes it."""

    id: int
    patient_id: str
    kind: str
    rule_id: str
    status: str
    reason: str | None
    scheduled_for: datetime


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
        session.flush()  # what the ORM holds pending is seen by the Core statements below
        if isinstance(event, ev.PatientsMerged):
            keeper_id, retired_id = merge_patients(session, vault, event.surviving, event.retired, now=now)
            self.gate.patients_merged(session, keeper_id, retired_id, event, now=now)
            return []
        details: ev.PatientDetails | None = getattr(event, "patient", None)
        if details is None:
            return []
        upserted = upsert_patient(session, vault, details, now=now)
        patient_id = upserted.id
        if upserted.created:
            self.gate.patient_created(session, patient_id)
        self.gate.received(session, patient_id, event, now=now)
        if isinstance(event, ev.ConsentChanged):
            self.gate.consent_changed(session, patient_id, event, now=now)
            return []
        if isinstance(event, ev.ReportWithdrawn):
            self._withdraw(session, event.report_ref, timed_only=False, reason="report withdrawn", now=now)
            return []
        if isinstance(event, ev.ReportReady):
            allowed, reason = self.gate.report_notice_allowed(session, patient_id, event, now=now)
            if not allowed:
                return self._create(session, patient_id, self._plan(event, now), event, now=now, veto=reason)
            return self._create(session, patient_id, self._plan(event, now), event, now=now)
        appointment = getattr(event, "appointment", None)
        if appointment is None:
            return []
        previous = self._store_appointment(session, patient_id, event, appointment, now=now)
        if isinstance(event, ev.AppointmentRescheduled) and previous is not None and previous.status == "booked" and previous.start == appointment.start:
            return []  # a modification that did not move the start (SIU^S14): nothing to tell
        if isinstance(event, ev.AppointmentRescheduled) and (previous is None or previous.status != "booked"):
            # First news of this appointment, or it comes back from a cancellation: a booking.
            event = ev.AppointmentBooked(event.origin, event.occurred_at, event.patient, appointment)
        plan = self._plan(event, now)
        if plan.withdraw_all or plan.withdraw_timed:
            self._withdraw(session, appointment.ref, timed_only=plan.withdraw_timed, reason=plan.reason, now=now)
        return self._create(session, patient_id, plan, event, now=now)

    def _plan(self, event: ev.Event, now: datetime) -> Plan:
        return plan_notifications(event, self.rules, now=now, tz=self.tz)

    def _store_appointment(
        self, session: Session, patient_id: str, event: ev.Event, appointment: ev.Appointment, *, now: datetime
    ) -> _Previous | None:
        """Store what the hospital says now; return what we knew before."""
        status = {
            ev.AppointmentBooked: "booked",
            ev.AppointmentRescheduled: "booked",
            ev.AppointmentCancelled: "cancelled",
            ev.AppointmentNoShow: "noshow",
            ev.AppointmentFulfilled: "fulfilled",
        }[type(event)]
        found = session.execute(_FIND_APPOINTMENT, {"appointment": appointment.ref}).first()
        values = {"patient_id": patient_id, "start": appointment.start, "status": status,
                  "location": appointment.location[:200], "updated_at": now}
        if found is None:
            session.execute(_APPOINTMENT.insert(), {
                **values, "ref": appointment.ref, "source": event.origin.source, "sender": event.origin.sender,
            })
            return None
        session.execute(_UPDATE_APPOINTMENT, {**values, "appointment": appointment.ref})
        return _Previous(found.status, found.start)

    def _withdraw(self, session: Session, subject_ref: str, *, timed_only: bool, reason: str, now: datetime) -> None:
        """Cancel what is still waiting for ``subject_ref``. Immediate notices
        already on their way are left alone when only timed ones move."""
        pending = (_NOTIFICATION.c.subject_ref == subject_ref, _NOTIFICATION.c.status == "scheduled")
        if timed_only:
            pending += (_NOTIFICATION.c.rule_id.in_([r.id for r in self.rules.rules if r.timed]),)
        withdrawn = [(row.id, row.patient_id) for row in session.execute(
            select(_NOTIFICATION.c.id, _NOTIFICATION.c.patient_id).where(*pending))]
        if not withdrawn:
            return
        session.execute(
            update(_NOTIFICATION)
            .where(_NOTIFICATION.c.id.in_([notification_id for notification_id, _ in withdrawn]),
                   _NOTIFICATION.c.status == "scheduled")
            .values(status="cancelled", reason=reason[:200], status_at=now)
        )
        self.gate.withdrawn(session, withdrawn, reason, now=now)

    def _create(
        self,
        session: Session,
        patient_id: str,
        plan: Plan,
        event: ev.Event,
        *,
        now: datetime,
        veto: str | None = None,
    ) -> list[int]:
        if not plan.notifications:
            return []
        rows = []
        for planned in plan.notifications:
            planned = self._in_window(planned, now)
            decision = self.gate.decide_at_schedule(session, patient_id, planned.kind, now=now)
            status, reason = "scheduled", None
            if veto:
                status, reason = "suppressed", veto
            elif planned.too_late:
                status, reason = "suppressed", "its time had already passed when the event arrived"
            elif not decision.allowed:
                status, reason = "suppressed", decision.reason
            rows.append({
                "patient_id": patient_id,
                "kind": planned.kind,
                "rule_id": planned.rule_id,
                "subject_ref": planned.subject_ref,
                "scheduled_for": planned.scheduled_for,
                "status": status,
                "urgent": planned.urgent,
                "idempotency_key": uuid.uuid4().hex,
                "reason": reason,
                "status_at": now,
                "created_at": now,
                "tried_channels": [],
                "attempts": 0,
                "decision": why_record(event, planned, decision.as_dict(), status, reason),
            })
        # One multi-row insert for the event's notifications, their ids back for the audit.
        ids = session.scalars(_INSERT_NOTIFICATIONS, rows).all()
        self.gate.scheduled(session, [
            _Created(notification_id, patient_id, row["kind"], row["rule_id"], row["status"], row["reason"],
                     row["scheduled_for"])
            for notification_id, row in zip(ids, rows, strict=True)
        ], now=now)
        return list(ids)

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
