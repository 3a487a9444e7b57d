"""Pre-visit instructions and the yearly recall, through the public surfaces: HL7 over a
real MLLP socket, FHIR over real HTTP, the sandbox outbox, a FrozenClock moved to when
each message is due; the shipped config (rules.yaml, services.yaml, templates)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select

from adapter import demo
from adapter.clock import FrozenClock
from adapter.db import transaction
from adapter.models import Notification, OutboxMessage, Patient
from adapter.rules import BOOKED_AGAIN
from compliance.consent_store import record_consent
from hl7.client import send_messages
from tests.core.test_end_to_end import siu, wait_for
from tests.harness import running_adapter, settings_for

FHIR = {"Content-Type": "application/fhir+json"}
ROME = ZoneInfo("Europe/Rome")
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday, no holiday


def siu_of(trigger: str, control_id: str, start: datetime, service: str, *, mrn: str = "0012345",
           appointment: str = "FL1", status: str = "Booked", sent_at: datetime | None = None) -> bytes:
    """The end-to-end SIU, for another patient, appointment and service (AIS-3), sent at
    ``sent_at`` (MSH-7: a later message about the appointment must say it is later), with
    ``status`` in SCH-25."""
    stamp = (sent_at or NOW).strftime("%Y%m%d%H%M%S+0000")
    return (siu(trigger, control_id, start, status)
            .replace(b"|20260101000000||SIU", f"|{stamp}||SIU".encode())
            .replace(b"CARD01^Visita^L", service.encode())
            .replace(b"0012345^^^OSP_TEST^MR", f"{mrn}^^^OSP_TEST^MR".encode())
            .replace(b"FL1^OSP_TEST", f"{appointment}^OSP_TEST".encode()))


def outbox(adapter) -> list[str]:
    with transaction(adapter.container.sessions) as session:
        vault = adapter.container.vault
        return [vault.decrypt_str(session, body)
                for body in session.scalars(select(OutboxMessage.body_enc).order_by(OutboxMessage.id))]


def of_kind(adapter, kind: str) -> list[Notification]:
    with transaction(adapter.container.sessions) as session:
        rows = list(session.scalars(select(Notification).where(Notification.kind == kind).order_by(Notification.id)))
        session.expunge_all()
        return rows


def fhir_appointment(aid: str, pid: str, start: datetime, code: str, status: str = "booked") -> dict:
    return {**demo.appointment(aid, pid, start, status),
            "serviceType": [{"coding": [{"system": "urn:cup", "code": code}], "text": "Visita"}]}


def test_pre_visit_instructions_reach_an_italian_patient_three_days_before_over_mllp(tmp_path, database_url):
    clock = FrozenClock(NOW)
    with running_adapter(settings_for(tmp_path, database_url), clock=clock) as adapter:
        start = NOW + timedelta(days=10)
        send = lambda *m: asyncio.run(send_messages(list(m), "127.0.0.1", adapter.mllp_port))  # noqa: E731
        acks = send(siu_of("S12", "P1", start, "ECO-ADD^Ecografia addome^L"),
                    siu_of("S12", "P2", start, "CARD01^Visita^L", mrn="0099", appointment="FL2"))
        assert [r.code.value for r in acks] == ["AA", "AA"]
        wait_for(lambda: len(outbox(adapter)) == 2)  # the two booking confirmations
        [planned] = wait_for(lambda: of_kind(adapter, "pre_visit_instructions"))  # none for the cardiology visit
        assert planned.scheduled_for == start - timedelta(days=3) and planned.status == "scheduled"

        clock.set(start - timedelta(days=3))
        wait_for(lambda: of_kind(adapter, "pre_visit_instructions")[0].status == "sent")
        [sent] = of_kind(adapter, "pre_visit_instructions")
        assert sent.template_id == "it/pre_visit_instructions"
        body = next(body for body in outbox(adapter) if "digiuno" in body)
        assert body == ("Gentile Nicolò, per l'appuntamento presso Poliambulatorio San Luca giovedì 12 marzo alle "
                        "10:00: Si presenti a digiuno da 8 ore, a vescica piena (beva un litro d'acqua un'ora prima), "
                        "e porti i referti precedenti. Info: +39 02 1234 5678")


def test_a_late_fhir_booking_gets_english_instructions_and_the_form_link_at_once_and_not_again_when_moved(
        tmp_path, database_url):
    clock = FrozenClock(NOW)
    with running_adapter(settings_for(tmp_path, database_url), clock=clock) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        start = NOW + timedelta(days=2)  # the instructions were due a day ago
        assert ehr.put("/fhir/R4/Patient/p1", json=demo.patient("p1", "John", "Smith", "+447911123456", "en"),
                       headers=FHIR).status_code in (200, 201)
        created = ehr.put("/fhir/R4/Appointment/a1", json=fhir_appointment("a1", "p1", start, "RM-GINOCCHIO"),
                          headers=FHIR)
        assert created.status_code in (200, 201), created.text
        wait_for(lambda: [n.status for n in of_kind(adapter, "pre_visit_instructions")] == ["sent"])
        [sent] = of_kind(adapter, "pre_visit_instructions")
        assert sent.scheduled_for == NOW and sent.template_id == "en/pre_visit_instructions"
        body = next(body for body in outbox(adapter) if "jewellery" in body)
        assert "Please arrive 20 minutes early, without jewellery or metal objects." in body
        assert "Questionnaire to fill in first: https://moduli.example.org/rm?id=a1&lang=en" in body

        clock.advance(timedelta(hours=1))
        moved = start + timedelta(days=1)  # its instructions' moment, 3 days before, has passed too
        assert ehr.put("/fhir/R4/Appointment/a1", json=fhir_appointment("a1", "p1", moved, "RM-GINOCCHIO"),
                       headers=FHIR).status_code == 200
        adapter.fhir_processed()
        wait_for(lambda: any(n.status == "sent" for n in of_kind(adapter, "reschedule_notice")))
        assert [n.status for n in of_kind(adapter, "pre_visit_instructions")] == ["sent"]  # given once
        why = officer.get(f"/api/notifications/{sent.id}/why").json()
        assert why["decision"]["rule"]["id"] == "pre-visit-instructions"


def test_a_booking_made_at_night_after_the_moment_gets_its_instructions_when_the_sending_window_opens(tmp_path):
    late_evening = datetime(2026, 3, 2, 22, 30, tzinfo=ROME)
    clock = FrozenClock(late_evening)
    settings = settings_for(tmp_path, sending_window_start=datetime.strptime("08:00", "%H:%M").time(),
                            sending_window_end=datetime.strptime("21:00", "%H:%M").time())
    with running_adapter(settings, clock=clock) as adapter:
        start = late_evening + timedelta(days=2)
        acks = asyncio.run(send_messages([siu_of("S12", "N1", start.astimezone(UTC), "ECO-ADD^Eco^L")],
                                         "127.0.0.1", adapter.mllp_port))
        assert [r.code.value for r in acks] == ["AA"]
        [planned] = wait_for(lambda: of_kind(adapter, "pre_visit_instructions"))
        assert planned.status == "scheduled"
        assert planned.scheduled_for == datetime(2026, 3, 3, 8, 0, tzinfo=ROME)


def test_a_yearly_recall_follows_a_fulfilled_visit_and_is_moot_once_the_same_service_is_booked_again(
        tmp_path, database_url):
    clock = FrozenClock(NOW)
    with running_adapter(settings_for(tmp_path, database_url), clock=clock) as adapter:
        officer = adapter.client("officer")
        send = lambda *m: asyncio.run(send_messages(list(m), "127.0.0.1", adapter.mllp_port))  # noqa: E731
        visit = NOW + timedelta(hours=2)
        # Two patients have an eye check-up (OCU01); the hospital says each took place (S14 Complete).
        booked = send(siu_of("S12", "R1", visit, "OCU01^Visita oculistica^L", mrn="A1", appointment="V1"),
                      siu_of("S12", "R2", visit, "OCU01^Visita oculistica^L", mrn="A2", appointment="V2"))
        clock.set(visit + timedelta(hours=1))
        done = send(siu_of("S14", "R3", visit, "OCU01^Visita oculistica^L", mrn="A1", appointment="V1", status="Complete",
                           sent_at=clock.now()),
                    siu_of("S14", "R4", visit, "OCU01^Visita oculistica^L", mrn="A2", appointment="V2", status="Complete",
                           sent_at=clock.now()))
        assert [r.code.value for r in booked + done] == ["AA"] * 4
        recalls = wait_for(lambda: len(of_kind(adapter, "recall")) == 2 and of_kind(adapter, "recall"))
        due = (visit + timedelta(days=335)).astimezone(ROME).replace(hour=10, minute=0)
        assert [r.scheduled_for for r in recalls] == [due, due] and {r.status for r in recalls} == {"scheduled"}
        # The first patient books the same service again for next year before the recall is due.
        clock.set(visit + timedelta(days=200))
        assert send(siu_of("S12", "R5", visit + timedelta(days=360), "OCU01^Visita oculistica^L", mrn="A1",
                           appointment="V3"))[0].code.value == "AA"
        wait_for(lambda: any(n.subject_ref.endswith(":V3") and n.status == "sent"
                             for n in of_kind(adapter, "booking_confirmation")))

        clock.set(due)
        wait_for(lambda: {r.status for r in of_kind(adapter, "recall")} == {"sent", "suppressed"})
        first, second = of_kind(adapter, "recall")
        assert (first.status, first.reason) == ("suppressed", BOOKED_AGAIN)
        assert officer.get(f"/api/notifications/{first.id}/why").json()["decision"]["at_send"]["appointment"] == BOOKED_AGAIN
        assert second.status == "sent" and second.template_id == "it/recall"
        assert sum("è il momento del controllo periodico presso Poliambulatorio San Luca" in body
                   for body in outbox(adapter)) == 1


def test_a_patient_who_objected_to_recalls_gets_none(tmp_path):
    clock = FrozenClock(NOW)
    with running_adapter(settings_for(tmp_path), clock=clock) as adapter:
        send = lambda *m: asyncio.run(send_messages(list(m), "127.0.0.1", adapter.mllp_port))  # noqa: E731
        visit = NOW + timedelta(hours=2)
        assert send(siu_of("S12", "O1", visit, "OCU01^Visita oculistica^L"))[0].code.value == "AA"
        wait_for(lambda: of_kind(adapter, "booking_confirmation"))
        with transaction(adapter.container.sessions) as session:
            patient_id = session.scalar(select(Patient.id))
            record_consent(session, patient_id=patient_id, purpose="recall", channel="*", decision="deny",
                           source="api", at=NOW)
        clock.set(visit + timedelta(hours=1))
        assert send(siu_of("S14", "O2", visit, "OCU01^Visita oculistica^L", status="Complete",
                           sent_at=clock.now()))[0].code.value == "AA"
        [recall] = wait_for(lambda: of_kind(adapter, "recall"))
        assert recall.status == "suppressed" and "recall" in recall.reason
