"""Which appointment a patient's reply answers, and whose reply it is: a reply acts only
when it comes from a number in use and answers the last message sent, if that asked.
On a real container (SQLite), the pipeline and the dispatcher sending to the sandbox."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from adapter import events as ev
from adapter.clock import FrozenClock
from adapter.db import transaction
from adapter.models import Appointment
from adapter.replies_flow import handle_reply
from channels.base import InboundReply
from tests.harness import migrated_container, settings_for

T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
OLD, NEW = "+393331111111", "+393332222222"


def details(phone: str) -> ev.PatientDetails:
    return ev.PatientDetails(key=ev.Identifier("urn:oid:t", "MRN1", "MR"), given_name="Nicolò", family_name="Rossi",
                             language="it", telecom=(ev.ContactPoint("phone", phone, "mobile", 1),))


class Clinic:
    def __init__(self, tmp_path) -> None:
        self.clock = FrozenClock(T0)
        self.container = migrated_container(settings_for(tmp_path), self.clock)

    def apply(self, event: ev.Event) -> None:
        with transaction(self.container.sessions) as session:
            self.container.pipeline.handle(session, [event], now=self.clock.now())
        while asyncio.run(self.container.dispatcher.run_once()):
            pass
        self.clock.advance(timedelta(hours=1))

    def book(self, ref: str, days: int, phone: str = OLD) -> None:
        self.apply(ev.AppointmentBooked(ev.Origin("api", "t", f"B-{ref}"), self.clock.now(), details(phone),
                                        ev.Appointment(ref=ref, start=T0 + timedelta(days=days))))

    def reply(self, sender: str, text: str) -> str:
        with transaction(self.container.sessions) as session:
            row = handle_reply(session, self.container, InboundReply("sandbox", sender, text, secrets.token_hex(4)),
                               "sandbox", now=self.clock.now())
            return row.action

    def status(self, ref: str) -> str:
        with transaction(self.container.sessions) as session:
            return session.scalar(select(Appointment.status).where(Appointment.ref == ref))


def test_a_reply_from_a_number_the_hospital_dropped_acts_on_nobody(tmp_path):
    """The patient moved to a new number; the old one may now be someone else's. Their
    "2" must not cancel the patient's appointment, nor their STOP stop her messages."""
    clinic = Clinic(tmp_path)
    clinic.book("t/A", 5)
    clinic.apply(ev.PatientUpdated(ev.Origin("api", "t", "U1"), clinic.clock.now(), details(NEW)))
    assert clinic.reply(OLD, "2") == "queue"
    assert clinic.reply(OLD, "STOP") == "queue"
    assert clinic.status("t/A") == "booked"
    with transaction(clinic.container.sessions) as session:
        patient_id = session.scalar(select(Appointment.patient_id))
        decision = clinic.container.gate.decide_at_send(session, patient_id, "reminder", "sandbox", now=clinic.clock.now())
    assert decision.allowed
    assert clinic.reply(NEW, "2") == "cancel"  # the number in use still answers
    assert clinic.status("t/A") == "cancelled"


def test_a_no_to_a_cancellation_notice_does_not_cancel_the_appointment_an_older_message_asked_about(tmp_path):
    """A booked first, B later; the hospital cancels B and the patient is told. Their
    "No" answers that notice, which asked nothing: it goes to the operators, and A stays."""
    clinic = Clinic(tmp_path)
    clinic.book("t/A", 20)
    clinic.book("t/B", 5)
    clinic.apply(ev.AppointmentCancelled(ev.Origin("api", "t", "C-B"), clinic.clock.now(), details(OLD),
                                         ev.Appointment(ref="t/B", start=T0 + timedelta(days=5)), reason="cancelled"))
    assert clinic.reply(OLD, "No") == "queue"
    assert clinic.status("t/A") == "booked"


def test_a_no_after_the_appointment_has_started_goes_to_the_operators_and_cancels_nothing(tmp_path):
    """The question "1 to confirm, 2 to cancel" closes when the appointment starts: a "No"
    the day after the visit (to the reminder, the last message sent) must not cancel it
    here and tell the hospital (SIU^S15, a FHIR cancellation) that the patient cancelled
    a visit that took place, nor withdraw the follow-up."""
    clinic = Clinic(tmp_path)
    clinic.book("t/A", 3)
    clinic.clock.set(T0 + timedelta(days=2))  # the 24-hour reminder goes
    while asyncio.run(clinic.container.dispatcher.run_once()):
        pass
    clinic.clock.set(T0 + timedelta(days=3, hours=5))
    assert clinic.reply(OLD, "2") == "queue"
    assert clinic.reply(OLD, "Sì") == "queue"
    assert clinic.status("t/A") == "booked"


def test_a_reply_about_an_appointment_since_given_to_another_patient_cancels_nothing(tmp_path):
    """The hospital gave the appointment the patient was asked about to another patient.
    The first patient's "2" answers a question about an appointment that is no longer
    theirs: it must not cancel the other patient's visit (here, and at the hospital)."""
    clinic = Clinic(tmp_path)
    clinic.book("t/A", 5)
    other = ev.PatientDetails(key=ev.Identifier("urn:oid:t", "MRN2", "MR"), given_name="Anna", family_name="Bianchi",
                              language="it", telecom=(ev.ContactPoint("phone", NEW, "mobile", 1),))
    clinic.apply(ev.AppointmentBooked(ev.Origin("api", "t", "B-t/A-2"), clinic.clock.now(), other,
                                      ev.Appointment(ref="t/A", start=T0 + timedelta(days=5))))
    assert clinic.reply(OLD, "2") == "queue"
    assert clinic.status("t/A") == "booked"
