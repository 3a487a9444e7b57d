"""The service code is stored with the appointment (PostgreSQL and SQLite), and a later
message that does not say the service (an HL7 cancellation without AIS) leaves it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from adapter import events as ev
from adapter.db import transaction
from adapter.models import Appointment
from tests.harness import migrated_container, settings_for

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
ORIGIN = ev.Origin("hl7", "CUP^OSP_TEST", "C1")
PATIENT = ev.PatientDetails(key=ev.Identifier("OSP_TEST", "MRN1", "MR"))


def stored_code(container) -> str:
    with transaction(container.sessions) as session:
        return session.scalar(select(Appointment.service_code).where(Appointment.ref == "hl7:CUP^OSP_TEST:A1"))


def test_the_service_code_is_stored_and_kept_by_a_message_that_does_not_say_it(tmp_path, database_url):
    container = migrated_container(settings_for(tmp_path, database_url))
    start = NOW + timedelta(days=10)
    booked = ev.AppointmentBooked(ORIGIN, NOW, PATIENT, ev.Appointment("hl7:CUP^OSP_TEST:A1", start,
                                                                        service_code="L|ECO-ADD"))
    with transaction(container.sessions) as session:
        container.pipeline.handle(session, [booked], now=NOW)
    assert stored_code(container) == "L|ECO-ADD"
    cancelled = ev.AppointmentCancelled(ev.Origin("hl7", "CUP^OSP_TEST", "C2"), NOW + timedelta(minutes=1), PATIENT,
                                        ev.Appointment("hl7:CUP^OSP_TEST:A1", None), reason="cancelled")
    with transaction(container.sessions) as session:
        container.pipeline.handle(session, [cancelled], now=NOW)
    assert stored_code(container) == "L|ECO-ADD"
    container.engine.dispose()
