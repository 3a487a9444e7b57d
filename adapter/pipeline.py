"""From events to scheduled notifications: the core's one entry point for
everything hospitals tell us (HL7 and FHIR both end here).

event → patient and appointment state → trigger rules → consent → ``scheduled``
or ``suppressed`` (with the reason), all in the caller's transaction, so that a
message is marked processed together with what it caused.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session
from uuid6 import uuid7

from adapter import events as ev
from adapter.appointments import StoredAppointment, change_to_apply
from adapter.db import all_or_each, execute_prebuilt, insert_rows
from adapter.storage_full import is_storage_full
from adapter.errors import UnknownAppointment
from adapter.models import Appointment, Invoice, Notification, PatientIdentifier
from adapter.patients import (
    create_patients,
    identifier_index,
    identifier_indexes,
    known_patients,
    legacy_indexes,
    merge_patients,
    upsert_patient,
)
from adapter.rules import Plan, PlannedNotification, RuleSet, plan_notifications
from adapter.compliance_gate import ComplianceGate, Decision
from adapter.quiet_hours import SendingWindow, facility_of


log = logging.getLogger(__name__)

_APPOINTMENT = Appointment.__table__
_INVOICE = Invoice.__table__
_NOTIFICATION = Notification.__table__
# Built once: constructing a statement costs more than running it. Those run for each
# message go through execute_prebuilt (SQLAlchemy's execution costs ten times the statement's).
# A StoredAppointment's fields, in its order, then time_known and service_code.
_FIND_APPOINTMENT = select(
    _APPOINTMENT.c.status, _APPOINTMENT.c.start, _APPOINTMENT.c.patient_id, _APPOINTMENT.c.event_at,
    _APPOINTMENT.c.time_known, _APPOINTMENT.c.service_code,
).where(_APPOINTMENT.c.ref == bindparam("appointment"))
_UPDATE_APPOINTMENT = _APPOINTMENT.update().where(_APPOINTMENT.c.ref == bindparam("appointment"))
# What a later message may change in a stored appointment (never its ref, source or sender).
_APPOINTMENT_STATE = ("patient_id", "start", "time_known", "status", "location", "service_code", "event_at",
                      "updated_at")
_FIND_INVOICE = select(_INVOICE.c.status, _INVOICE.c.issued_at, _INVOICE.c.patient_id).where(
    _INVOICE.c.ref == bindparam("invoice"))
_KNOWN_IDENTIFIERS = select(PatientIdentifier.__table__.c.identifier_index).where(
    PatientIdentifier.__table__.c.identifier_index.in_(bindparam("indexes", expanding=True)))
_KNOWN_REFS = select(_APPOINTMENT.c.ref).where(_APPOINTMENT.c.ref.in_(bindparam("refs", expanding=True)))
# A patient's notifications of some rules (the report notices) in some statuses.
_NOTICES_OF = select(
    _NOTIFICATION.c.id, _NOTIFICATION.c.subject_ref, _NOTIFICATION.c.decision,
).where(_NOTIFICATION.c.patient_id == bindparam("patient"),
        _NOTIFICATION.c.status.in_(bindparam("statuses", expanding=True)),
        _NOTIFICATION.c.rule_id.in_(bindparam("rules", expanding=True)))
_GOING_OR_GONE = ("scheduled", "claimed", "sent", "delivered", "read")
# The rules whose notice about a subject has gone out.
_SENT_OF = select(_NOTIFICATION.c.rule_id).where(
    _NOTIFICATION.c.subject_ref == bindparam("subject"), _NOTIFICATION.c.status.in_(("sent", "delivered", "read")))
# What is still waiting for a subject, cancelled, filed under the message that said so (its
# trace); found by the subject's index. (Selecting the ids first and then updating "id IN
# (...) AND status = 'scheduled'" led SQLite to the status index: every scheduled
# notification of every patient read, 0.3 ms at a few thousand.)
_WITHDRAW = update(_NOTIFICATION).where(
    _NOTIFICATION.c.subject_ref == bindparam("subject"), _NOTIFICATION.c.status == "scheduled",
).values(status="cancelled", reason=bindparam("withdrawn_reason"), status_at=bindparam("withdrawn_at"),
         withdrawn_by=bindparam("withdrawn_by")).returning(
    _NOTIFICATION.c.id, _NOTIFICATION.c.patient_id)
_WITHDRAW_TIMED = _WITHDRAW.where(_NOTIFICATION.c.rule_id.in_(bindparam("rules", expanding=True)))


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
        announced: set[tuple[ev.Identifier, str, str]] = set()
        for event in events:
            panel: list[ev.ReportReady] = []
            if isinstance(event, ev.ReportReady) and event.origin.message_ref:
                # One message can carry a panel (several OBRs) for a patient: decided together, one notice.
                key = _panel_key(event)
                if key in announced:
                    continue
                announced.add(key)
                panel = [other for other in events if isinstance(other, ev.ReportReady) and _panel_key(other) == key]
            created.extend(self._handle_one(session, event, now=now, panel=panel))
        return created

    def handle_many(
        self, session: Session, messages: Sequence[Sequence[ev.Event]], *, now: datetime
    ) -> list[list[int] | Exception]:
        """Apply each message's events as :meth:`handle` would, each message all or nothing
        (a savepoint each): per message, the ids of notifications created, or the exception
        that undid that message alone.

        Bookings of new patients that share no identifier or appointment with the database
        or with any other message of ``messages`` are applied together, with one multi-row
        insert per table and one audit append; should that fail, they are applied one by one
        like the rest, so a failure stays its own."""
        session.flush()  # what the ORM holds pending is seen by the Core look-ups below
        outcomes: list[list[int] | Exception | None] = [None] * len(messages)
        mentions = [self._mentions(events) for events in messages]
        together = self._independent_new_bookings(session, messages, mentions)
        if together:
            try:
                with session.begin_nested():
                    created = self._book_new_patients(session, [messages[i][0] for i in together], now=now)  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - one of them is at fault: each on its own below finds which
                if is_storage_full(exc):  # none of them is: the whole transaction waits for space
                    raise
                log.warning("%d bookings applied together failed; applying them one by one", len(together))
            else:
                for position, ids in zip(together, created, strict=True):
                    outcomes[position] = ids
        for position, failure in self._unknown_appointments(session, messages, mentions).items():
            outcomes[position] = failure
        rest = [position for position, outcome in enumerate(outcomes) if outcome is None]
        self._read_ahead(session, [mentions[position] for position in rest])
        applied = all_or_each(session, [messages[position] for position in rest],
                              lambda events: self.handle(session, events, now=now),
                              hold=lambda: self.gate.audit_held(session), what="messages")
        for position, outcome in zip(rest, applied, strict=True):
            outcomes[position] = outcome
        return outcomes  # type: ignore[return-value]

    def _independent_new_bookings(self, session: Session, messages: Sequence[Sequence[ev.Event]],
                                  mentions: Sequence[set[tuple[str, str]]]) -> list[int]:
        """Positions of the messages that are one booking whose patient identifiers and
        appointment no other message mentions and the database does not know: applying
        them before, after or between the others changes nothing. ``mentions``: each
        message's (:meth:`_mentions`)."""
        counts = Counter(mention for mentioned in mentions for mention in mentioned)
        candidates = [
            position for position, events in enumerate(messages)
            if len(events) == 1 and type(events[0]) is ev.AppointmentBooked and events[0].patient is not None
            and all(counts[mention] == 1 for mention in mentions[position])
        ]
        if not candidates:
            return []
        wanted = {mention for position in candidates for mention in mentions[position]}
        known = {("identifier", index) for index in session.scalars(
            _KNOWN_IDENTIFIERS, {"indexes": [value for kind, value in wanted if kind == "identifier"]})}
        known |= {("ref", ref) for ref in session.scalars(
            _KNOWN_REFS, {"refs": [value for kind, value in wanted if kind == "ref"]})}
        return [position for position in candidates if not mentions[position] & known]

    def _unknown_appointments(self, session: Session, messages: Sequence[Sequence[ev.Event]],
                              mentions: Sequence[set[tuple[str, str]]]) -> dict[int, UnknownAppointment]:
        """The messages that :meth:`handle` would fail with ``UnknownAppointment``, by position:
        an event not naming its patient, about an appointment neither the database nor any
        other of ``messages`` mentions; found with one query for all. Failing them here keeps
        the others applied together (one failing among them has every message of the batch
        applied again one by one: twice the time)."""
        asked = {position: events[0].appointment.ref for position, events in enumerate(messages)  # type: ignore[attr-defined]
                 if len(events) == 1 and getattr(events[0], "appointment", None) is not None
                 and getattr(events[0], "patient", ...) is None}
        if asked:
            counts = Counter(mention for mentioned in mentions for mention in mentioned)
            asked = {position: ref for position, ref in asked.items() if counts[("ref", ref)] == 1}
        if not asked:
            return {}
        known = set(session.scalars(_KNOWN_REFS, {"refs": sorted(set(asked.values()))}))
        return {position: UnknownAppointment(ref) for position, ref in asked.items() if ref not in known}

    def _read_ahead(self, session: Session, mentions: Sequence[set[tuple[str, str]]]) -> None:
        """The consent histories and data keys of the known patients that messages with
        these ``mentions`` are about, each read with one query for all of them: applying
        a message about a known patient reads both first, one query each. (Read in this
        transaction, and kept as a patient's own reads are: see ``load_consent``,
        ``load_keys``.)"""
        indexes = {value for mentioned in mentions for kind, value in mentioned if kind == "identifier"}
        if not indexes:
            return
        patient_ids = known_patients(session, sorted(indexes))
        self.gate.load_consent(session, patient_ids)
        self.gate.vault.load_keys(session, [f"patient:{patient_id}" for patient_id in patient_ids])

    def _mentions(self, events: Sequence[ev.Event]) -> set[tuple[str, str]]:
        """The patient identifiers (blind indexes, also as stored before identifiers without
        an authority were qualified) and appointment or report refs ``events`` touch."""
        out: set[tuple[str, str]] = set()
        vault = self.gate.vault
        for event in events:
            for details in (getattr(event, "patient", None), getattr(event, "surviving", None)):
                if details is not None:
                    out |= {("identifier", index) for index in (*identifier_indexes(vault, details),
                                                                 *legacy_indexes(vault, details))}
            if isinstance(event, ev.PatientsMerged):
                out |= {("identifier", identifier_index(vault, retired))
                        for retired in (event.retired, *event.retired_also)}
            appointment = getattr(event, "appointment", None)
            if appointment is not None:
                out.add(("ref", appointment.ref))
            if isinstance(event, ev.ReportReady | ev.ReportWithdrawn):
                out.add(("ref", event.report_ref))
        return out

    def _book_new_patients(self, session: Session, bookings: Sequence[ev.AppointmentBooked], *,
                           now: datetime) -> list[list[int]]:
        """What :meth:`handle` does for each booking of a new patient (patient, appointment,
        notifications with their consent decisions, audit entries in the same order), with
        one multi-row insert per table."""
        patient_ids = create_patients(session, self.gate.vault, [booking.patient for booking in bookings], now=now)
        for patient_id in patient_ids:
            self.gate.patient_created(session, patient_id)
        insert_rows(session, _APPOINTMENT, [
            _appointment_row(patient_id, booking, "booked", now) for patient_id, booking in zip(patient_ids, bookings, strict=True)
        ])
        # None of them has a consent history yet, so a kind's decision is the same for all:
        # made for the first patient that needs it, taken as it is for the others.
        decided: dict[str, Decision] = {}
        rows = [self._notification_rows(session, patient_id, self._plan(booking, now), booking, now=now, decided=decided)
                for patient_id, booking in zip(patient_ids, bookings, strict=True)]
        created = iter(self._insert_notifications(session, [row for per_booking in rows for row in per_booking]))
        per_booking = [[next(created) for _ in booking_rows] for booking_rows in rows]
        self.gate.received_and_scheduled(session, list(zip(patient_ids, bookings, per_booking, strict=True)), now=now)
        return [[notice.id for notice in notices] for notices in per_booking]

    def _handle_one(
        self, session: Session, event: ev.Event, *, now: datetime, panel: Sequence[ev.ReportReady] = ()
    ) -> list[int]:
        """Apply ``event``; ``panel``: the reports its message makes available to the
        patient, ``event`` among them (see :meth:`_announce`)."""
        vault = self.gate.vault
        session.flush()  # what the ORM holds pending is seen by the Core statements below
        if isinstance(event, ev.PatientsMerged):
            keeper_id, retired_id = merge_patients(session, vault, event.surviving,
                                                   [event.retired, *event.retired_also], now=now)
            if retired_id is None:
                log.info("merge: no patient other than the survivor is known by the retired identifiers")
            self.gate.patients_merged(session, keeper_id, retired_id, event, now=now)
            return []
        details: ev.PatientDetails | None = getattr(event, "patient", None)
        if details is None:
            return self._for_stored_patient(session, event, now=now)
        upserted = upsert_patient(session, vault, details, now=now)
        patient_id = upserted.id
        if upserted.created:
            self.gate.patient_created(session, patient_id)
        self.gate.received(session, patient_id, event, now=now)
        if isinstance(event, ev.ConsentChanged):
            self.gate.consent_changed(session, patient_id, event, now=now)
            return []
        if isinstance(event, ev.ReportWithdrawn):
            self._withdraw_report(session, patient_id, event, now=now)
            return []
        if isinstance(event, ev.ReportReady):
            return self._announce(session, patient_id, panel or [event], now=now)
        if isinstance(event, ev.InvoiceIssued | ev.InvoiceSettled):
            return self._invoice(session, patient_id, event, now=now)
        appointment = getattr(event, "appointment", None)
        if appointment is None:
            return []
        found = execute_prebuilt(session, _FIND_APPOINTMENT, {"appointment": appointment.ref})  # ref is unique
        return self._apply_appointment(session, patient_id, event, found, now=now)

    def _for_stored_patient(self, session: Session, event: ev.Event, *, now: datetime) -> list[int]:
        """An appointment event that does not say whose the appointment is (an HL7 SIU without
        PID), applied for the patient the appointment is stored for (read by the look-up the
        appointment needs anyway), whose details stay as they are. Raises ``UnknownAppointment``
        for an appointment not stored: there is no one to apply it to."""
        appointment: ev.Appointment | None = getattr(event, "appointment", None)
        if appointment is None:
            return []
        found = execute_prebuilt(session, _FIND_APPOINTMENT, {"appointment": appointment.ref})  # ref is unique
        if not found:
            raise UnknownAppointment(appointment.ref)
        patient_id = found[0][2]
        self.gate.received(session, patient_id, event, now=now)
        return self._apply_appointment(session, patient_id, event, found, now=now)

    def _apply_appointment(self, session: Session, patient_id: str, event: ev.Event, found: Sequence[Any], *,
                           now: datetime) -> list[int]:
        """Apply an appointment event about ``patient_id``, given the appointment as stored
        (``found``: its row of ``_FIND_APPOINTMENT``, or none)."""
        appointment: ev.Appointment = event.appointment  # type: ignore[attr-defined]
        previous, time_known, stored_service = (
            (StoredAppointment(*found[0][:4]), found[0][4], found[0][5]) if found else (None, None, ""))
        if appointment.start is None:  # an HL7 cancellation or no-show naming the appointment only
            if previous is None:
                log.info("%s from %s without the appointment's time, about one never booked here: nothing to apply",
                         type(event).__name__, event.origin.source)
                return []
            appointment = replace(appointment, start=previous.start, time_known=time_known)
            event = replace(event, appointment=appointment)  # type: ignore[call-arg]
        if not appointment.service_code and stored_service:
            # A message that does not say the service (an HL7 S15 or S14 without AIS) leaves it as stored.
            appointment = replace(appointment, service_code=stored_service)
            event = replace(event, appointment=appointment)  # type: ignore[call-arg]
        change = change_to_apply(event, previous, patient_id)
        if change is None:
            log.info("%s from %s ignored: stale, or a booking of an appointment no longer booked",
                     type(event).__name__, event.origin.source)
            return []
        event = change
        self._store_appointment(session, patient_id, event, appointment, known=previous is not None, now=now)
        if previous is not None and previous.patient_id != patient_id:
            # The hospital gave the appointment to another patient: nothing pending is the first one's any more.
            self._withdraw(session, appointment.ref, timed_only=False, reason="appointment given to another patient",
                           by=event, now=now)
        if isinstance(event, ev.AppointmentRescheduled) and previous is not None and previous.start == appointment.start:
            return []  # a modification that did not move the start (SIU^S14): nothing to tell
        plan = self._plan(event, now, sent_rules=self._caught_up_before(session, event))
        if plan.withdraw_all or plan.withdraw_timed:
            self._withdraw(session, appointment.ref, timed_only=plan.withdraw_timed, reason=plan.reason, by=event,
                           now=now)
        return self._create(session, patient_id, plan, event, now=now)

    def _invoice(self, session: Session, patient_id: str, event: ev.InvoiceIssued | ev.InvoiceSettled, *,
                 now: datetime) -> list[int]:
        """Store what the billing system says of an invoice. Settled: its pending reminders
        are withdrawn. Due: first issued (or issued again after it was settled, or now
        dated or billed otherwise) its reminders are planned from the issue moment;
        otherwise only what it says is replaced (a new total): pending reminders read it
        when they are sent, so none asks for an amount no longer due."""
        if isinstance(event, ev.InvoiceSettled):
            session.execute(_INVOICE.update().where(_INVOICE.c.ref == event.invoice_ref).values(
                status=event.reason[:24], updated_at=now))
            plan = self._plan(event, now)
            self._withdraw(session, event.invoice_ref, timed_only=False, reason=plan.reason, by=event, now=now)
            return []
        invoice = event.invoice
        found = session.execute(_FIND_INVOICE, {"invoice": invoice.ref}).first()
        details = {"amount": str(invoice.amount), "currency": invoice.currency, "number": invoice.number,
                   "notice_code": invoice.notice_code, "issuer": invoice.issuer}
        row = {"patient_id": patient_id, "status": "issued", "issued_at": invoice.issued_at,
               "details_enc": self.gate.vault.encrypt_str(session, f"patient:{patient_id}", json.dumps(details)),
               "source": event.origin.source, "sender": event.origin.sender, "updated_at": now}
        if found is None:
            session.execute(_INVOICE.insert(), {**row, "ref": invoice.ref})
        else:
            session.execute(_INVOICE.update().where(_INVOICE.c.ref == invoice.ref).values(**row))
            if (found.status, found.issued_at, found.patient_id) == ("issued", invoice.issued_at, patient_id):
                return []
            self._withdraw(session, invoice.ref, timed_only=False, reason="invoice issued again", by=event, now=now)
        return self._create(session, patient_id, self._plan(event, now), event, now=now)

    def _announce(self, session: Session, patient_id: str, reports: Sequence[ev.ReportReady], *,
                  now: datetime) -> list[int]:
        """The notice for the reports one message makes available to a patient, whatever
        their order: each report excluded from online delivery (HIV, genetic: Garante 2009)
        is recorded as suppressed; the others share one notice, filed under the first of
        them and listing them all (``reports`` in its why-record), scheduled or suppressed
        by the patient's consent to online delivery. A report announced already (final
        again after a preliminary version, or sent again) is not announced twice; an
        amended one is, by its own notice."""
        reports = self._not_yet_announced(session, patient_id, reports)
        decided = [(report, self.gate.report_notice_allowed(session, patient_id, report, now=now)) for report in reports]
        created: list[int] = []
        for report, decision in decided:
            if decision.excluded_code is not None:
                created += self._create(session, patient_id, self._plan(report, now), report, now=now, veto=decision.reason)
        online = [(report, decision) for report, decision in decided if decision.excluded_code is None]
        if online:
            report, decision = online[0]
            created += self._create(session, patient_id, self._plan(report, now), report, now=now,
                                    veto=None if decision.allowed else decision.reason,
                                    reports=[report.report_ref for report, _ in online])
        return created

    def _not_yet_announced(self, session: Session, patient_id: str,
                           reports: Sequence[ev.ReportReady]) -> list[ev.ReportReady]:
        if all(report.amended for report in reports):
            return list(reports)
        announced: set[str] = set()
        for _, subject_ref, decision in self._report_notices(session, patient_id, _GOING_OR_GONE):
            announced.add(subject_ref)
            announced.update((decision or {}).get("reports") or [])
        return [report for report in reports if report.amended or report.report_ref not in announced]

    def _report_notices(self, session: Session, patient_id: str, statuses: Sequence[str]) -> list[tuple[Any, ...]]:
        """(id, subject_ref, decision) of the patient's report notices in ``statuses``."""
        rule_ids = [rule.id for rule in self.rules.for_trigger("report.ready")]
        return execute_prebuilt(session, _NOTICES_OF, {"patient": patient_id, "statuses": list(statuses), "rules": rule_ids})

    def _withdraw_report(self, session: Session, patient_id: str, event: ev.ReportWithdrawn, *, now: datetime) -> None:
        """A report withdrawn (OBR-25 X): a pending notice that also announces other reports
        stays, for those (filed under one of them); one that announced only this is withdrawn."""
        report_ref = event.report_ref
        for notice_id, subject_ref, decision in self._report_notices(session, patient_id, ("scheduled",)):
            reports = decision.get("reports") or []
            remaining = [ref for ref in reports if ref != report_ref]
            if report_ref not in reports or not remaining:
                continue
            subject = remaining[0] if subject_ref == report_ref else subject_ref
            session.execute(update(_NOTIFICATION).where(_NOTIFICATION.c.id == notice_id).values(
                subject_ref=subject, decision={**decision, "reports": remaining}))
        self._withdraw(session, report_ref, timed_only=False, reason="report withdrawn", by=event, now=now)

    def _plan(self, event: ev.Event, now: datetime, *, sent_rules: Sequence[str] = ()) -> Plan:
        return plan_notifications(event, self.rules, now=now, tz=self.tz, sent_rules=sent_rules)

    def _caught_up_before(self, session: Session, event: ev.Event) -> list[str]:
        """For a reschedule: the ``catch_up`` rules whose notice about the appointment has
        gone out already (see :func:`adapter.rules.plan_notifications`)."""
        rules = [rule.id for rule in self.rules.rules if rule.catch_up]
        if not rules or not isinstance(event, ev.AppointmentRescheduled):
            return []
        return list(session.scalars(_SENT_OF.where(_NOTIFICATION.c.rule_id.in_(rules)),
                                    {"subject": event.appointment.ref}))

    def _store_appointment(
        self, session: Session, patient_id: str, event: ev.Event, appointment: ev.Appointment, *, known: bool,
        now: datetime,
    ) -> None:
        """Store what the hospital says now (``known``: over what we stored before)."""
        status = {
            ev.AppointmentBooked: "booked",
            ev.AppointmentRescheduled: "booked",
            ev.AppointmentCancelled: "cancelled",
            ev.AppointmentNoShow: "noshow",
            ev.AppointmentFulfilled: "fulfilled",
        }[type(event)]
        row = _appointment_row(patient_id, event, status, now)
        if not known:
            insert_rows(session, _APPOINTMENT, [row])
            return
        execute_prebuilt(session, _UPDATE_APPOINTMENT, {
            **{column: row[column] for column in _APPOINTMENT_STATE}, "appointment": appointment.ref})

    def _withdraw(self, session: Session, subject_ref: str, *, timed_only: bool, reason: str, by: ev.Event,
                  now: datetime) -> None:
        """Cancel what is still waiting for ``subject_ref``, as ``by`` says to. Immediate
        notices already on their way are left alone when only timed ones move."""
        values = {"subject": subject_ref, "withdrawn_reason": reason[:200], "withdrawn_at": now,
                  "withdrawn_by": by.origin.message_id}
        if timed_only:
            statement, values["rules"] = _WITHDRAW_TIMED, [r.id for r in self.rules.rules if r.timed]
        else:
            statement = _WITHDRAW
        withdrawn = sorted(execute_prebuilt(session, statement, values))  # (id, patient_id)
        if withdrawn:
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
        reports: Sequence[str] = (),
    ) -> list[int]:
        created = self._insert_notifications(session, self._notification_rows(
            session, patient_id, plan, event, now=now, veto=veto, reports=reports))
        self.gate.scheduled(session, created, now=now)
        return [notice.id for notice in created]

    def _notification_rows(
        self, session: Session, patient_id: str, plan: Plan, event: ev.Event, *, now: datetime,
        veto: str | None = None, reports: Sequence[str] = (), decided: dict[str, Decision] | None = None,
    ) -> list[dict[str, Any]]:
        """The planned notifications as rows: moved into the sending window, each with its
        consent decision (``scheduled`` or ``suppressed`` with the reason) and why-record
        (with the ``reports`` a report notice announces). ``decided``: decisions by kind
        that hold for this patient too (patients without a consent history), added to;
        a kind planned twice (two reminders) is decided once either way."""
        rows = []
        facility = facility_of(event.origin.source, event.origin.sender)
        message_id = event.origin.message_id
        decided = {} if decided is None else decided
        about = EventRecord.of(event)
        for planned in plan.notifications:
            planned = self._in_window(planned, now, facility)
            decision = decided.get(planned.kind)
            if decision is None:
                decision = decided[planned.kind] = self.gate.decide_at_schedule(session, patient_id, planned.kind, now=now)
            status, reason = "scheduled", None
            if veto:
                status, reason = "suppressed", veto
            elif planned.too_late:
                status, reason = "suppressed", "its time had already passed when the event arrived"
            elif planned.appointment_started:
                status, reason = "suppressed", "the appointment had already started when the event arrived"
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
                "idempotency_key": uuid7().hex,  # time-ordered: appended to its unique index
                "reason": reason,
                "status_at": now,
                "created_at": now,
                "tried_channels": [],
                "attempts": 0,
                "message_id": message_id,
                "decision": why_record(about, planned, decision.as_dict(), status, reason)
                | ({"reports": list(reports)} if reports else {}),
            })
        return rows

    @staticmethod
    def _insert_notifications(session: Session, rows: list[dict[str, Any]]) -> list[_Created]:
        """One multi-row insert; the ids come back for the audit, matched by the (unique)
        idempotency key (asking for the rows' order would make SQLite insert them one by one)."""
        if not rows:
            return []
        ids = dict(insert_rows(session, _NOTIFICATION, rows, returning=("idempotency_key", "id")))
        return [_Created(ids[row["idempotency_key"]], row["patient_id"], row["kind"], row["rule_id"], row["status"],
                         row["reason"], row["scheduled_for"]) for row in rows]

    def _in_window(self, planned: PlannedNotification, now: datetime, facility: str) -> PlannedNotification:
        """Non-urgent notices avoid quiet hours and holidays (national, and the local ones
        of the ``facility`` the event came from): a reminder that would fall at night goes
        out the evening before; anything else waits for morning."""
        if (self.window is None or planned.urgent or planned.too_late or planned.appointment_started
                or self.window.allows(planned.scheduled_for, facility)):
            return planned
        if planned.ahead_of_start:
            moved = self.window.last_open_before(planned.scheduled_for, facility)
            if moved < now:
                moved = self.window.next_open(now, facility)
                if moved > planned.scheduled_for and not planned.catch_up:
                    return replace(planned, too_late=True)
        else:
            moved = self.window.next_open(planned.scheduled_for, facility)
        return replace(planned, scheduled_for=moved)


def _panel_key(report: ev.ReportReady) -> tuple[ev.Identifier, str, str]:
    return report.patient.key, report.origin.sender, report.origin.message_ref


def _appointment_row(patient_id: str, event: ev.Event, status: str, now: datetime) -> dict[str, Any]:
    """The ``appointment`` row for what ``event`` says about its appointment."""
    appointment: ev.Appointment = event.appointment  # type: ignore[attr-defined]
    return {"ref": appointment.ref, "source": event.origin.source, "sender": event.origin.sender,
            "patient_id": patient_id, "start": appointment.start, "time_known": appointment.time_known, "status": status,
            "location": appointment.location[:200], "service_code": appointment.service_code[:200], "updated_at": now,
            # Orders later HL7 messages about it (adapter.appointments); other sources are not ordered so.
            "event_at": event.occurred_at if event.origin.source == "hl7" else None}


@dataclass(frozen=True)
class EventRecord:
    """What the why-record of each notification an event plans says of the event: the
    same for all of them, so made once."""

    event: dict[str, str]
    appointment_start: str | None  # ISO 8601

    @classmethod
    def of(cls, event: ev.Event) -> EventRecord:
        appointment = getattr(event, "appointment", None)
        return cls({
            "type": type(event).__name__,
            "source": event.origin.source,
            "sender": event.origin.sender,
            "message_ref": event.origin.message_ref,
            "occurred_at": event.occurred_at.isoformat(),
        }, appointment.start.isoformat() if appointment is not None and appointment.start is not None else None)


def why_record(
    about: EventRecord, planned: PlannedNotification, consent: dict, status: str, reason: str | None
) -> dict:
    """The decision record kept with each notification (``/why``): no personal data.
    A notice about an appointment keeps the start it was planned for (the dispatcher
    finds by it one planned before the appointment moved)."""
    rule = {"id": planned.rule_id, "kind": planned.kind, "scheduled_for": planned.scheduled_for.isoformat()}
    if about.appointment_start is not None:
        rule["appointment_start"] = about.appointment_start
    return {
        "event": about.event,
        "rule": rule,
        "at_schedule": {"status": status, "reason": reason, "consent": consent},
    }
