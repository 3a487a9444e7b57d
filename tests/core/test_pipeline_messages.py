"""HL7 v2 messages through the production path (``intake.handle``, then
``process_pending``) on a real SQLite database: which patients, appointments and
notices they leave behind, whatever the order or repetition they arrive in."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from adapter import events as ev
from adapter.bootstrap import Container
from adapter.clock import FrozenClock
from adapter.db import transaction
from compliance.report_rules import EXCLUDED_REASON
from adapter.models import Appointment, Contact, InboundMessage, Notification, Patient
from compliance.consent_store import record_consent
from tests.harness import migrated_container, settings_for

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
START = NOW + timedelta(days=3)


def ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def siu(trigger: str, control_id: str, appointment: str, start: datetime = START, *, facility: str = "OSP_TEST",
        pid3: str = "777^^^OSP_TEST^MR", phone: str = "3331234567", status: str = "Booked",
        sent: datetime = NOW) -> bytes:
    """An SIU message; ``sent`` is its MSH-7, when the hospital says the event happened."""
    return ("\r".join([
        f"MSH|^~\\&|CUP|{facility}|ADAPTER|NOTIFY|{ts(sent)}||SIU^{trigger}^SIU_S12|{control_id}|P|2.5||||||UNICODE UTF-8",
        f"SCH||{appointment}^{facility}|||||VIS^Visita||30|min|^^^{ts(start)}||||||||||||||{status}",
        f"PID|1||{pid3}||Rossi^Mario^^^^^L||19800101|M|||||^PRN^CP^^39^{phone[:3]}^{phone[3:]}||it",
        f"AIS|1||CARD01^Visita^L|{ts(start)}|0|min|30|min",
    ]) + "\r").encode()


@dataclass
class Adapter:
    """A real container at a frozen ``NOW`` and the event loop its intake lives in."""

    container: Container
    loop: asyncio.AbstractEventLoop

    def feed(self, *messages: bytes) -> None:
        """Each message acknowledged AA and processed before the next arrives."""
        for message in messages:
            assert b"MSA|AA|" in self.loop.run_until_complete(self.container.intake.handle(message))
            self.container.intake.process_pending()

    def owners(self) -> dict[str, str]:
        """Appointment id as the hospital sent it → the internal id of its patient."""
        with transaction(self.container.sessions) as session:
            return {ref.rsplit(":", 1)[1]: patient for ref, patient in session.execute(
                select(Appointment.ref, Appointment.patient_id))}

    def appointments(self) -> dict[str, tuple[str, datetime]]:
        """Appointment id as the hospital sent it → (status, start)."""
        with transaction(self.container.sessions) as session:
            return {ref.rsplit(":", 1)[1]: (status, start) for ref, status, start in session.execute(
                select(Appointment.ref, Appointment.status, Appointment.start))}

    def notices(self) -> list[tuple[str, str, str, datetime]]:
        """(appointment or report id, rule, status, scheduled for) of every notification, in order."""
        with transaction(self.container.sessions) as session:
            return [(ref.rsplit(":", 1)[1], rule, status, at) for ref, rule, status, at in session.execute(
                select(Notification.subject_ref, Notification.rule_id, Notification.status,
                       Notification.scheduled_for).order_by(Notification.id))]

    def active_phones(self, patient_id: str) -> list[str]:
        with transaction(self.container.sessions) as session:
            return [self.container.vault.decrypt_str(session, contact.address_enc) for contact in session.scalars(
                select(Contact).where(Contact.patient_id == patient_id, Contact.active.is_(True)))]

    def patient_count(self) -> int:
        with transaction(self.container.sessions) as session:
            return len(session.scalars(select(Patient.id)).all())


@contextmanager
def running_adapter(tmp_path: Path, facilities: str | None = None) -> Iterator[Adapter]:
    """An :class:`Adapter`; ``facilities``: a config/facilities.yaml of its own."""
    settings = settings_for(tmp_path)
    if facilities is not None:
        config = tmp_path / "config"
        shutil.copytree(settings.config_dir, config)
        (config / "facilities.yaml").write_text(facilities)
        settings = settings_for(tmp_path, config_dir=config)
    running = Adapter(migrated_container(settings, clock=FrozenClock(NOW)), asyncio.new_event_loop())
    try:
        yield running
    finally:
        running.loop.run_until_complete(running.container.intake.writer.stop())
        running.loop.close()
        running.container.engine.dispose()


@pytest.fixture
def adapter(tmp_path):
    with running_adapter(tmp_path) as running:
        yield running


# ------------------------------------------------------------- patient identity


def test_the_same_mrn_without_assigning_authority_from_two_hospitals_is_two_patients(adapter):
    adapter.feed(
        siu("S12", "A1", "VISIT-A", facility="OSP_A", pid3="12345^^^^MR", phone="3331111111"),
        siu("S12", "B1", "VISIT-B", START + timedelta(days=1), facility="OSP_B", pid3="12345^^^^MR",
            phone="3472222222"))
    found = adapter.owners()
    assert found["VISIT-A"] != found["VISIT-B"]
    assert adapter.active_phones(found["VISIT-A"]) == ["+393331111111"]
    assert adapter.active_phones(found["VISIT-B"]) == ["+393472222222"]


@pytest.mark.parametrize("deleted", ['""^^^NNITA^NN', '""'], ids=["fiscal code null", "repetition null"])
def test_an_identifier_sent_as_the_hl7_null_does_not_make_two_patients_one(adapter, deleted):
    """CX-1 ``""`` says the hospital deleted that identifier (HL7 v2.5 §2.5.3): it identifies
    nobody, so two patients whose fiscal code was deleted stay two patients."""
    adapter.feed(
        siu("S12", "A1", "VISIT-A", pid3=f"111^^^OSP_TEST^MR~{deleted}", phone="3331111111"),
        siu("S12", "B1", "VISIT-B", START + timedelta(days=1), pid3=f"222^^^OSP_TEST^MR~{deleted}", phone="3472222222"))
    found = adapter.owners()
    assert found["VISIT-A"] != found["VISIT-B"]
    assert adapter.active_phones(found["VISIT-A"]) == ["+393331111111"]


def test_a_patient_key_rule_naming_the_sending_facility_as_authority_matches_its_ids_sent_without_one(tmp_path):
    # The same hospital's PAS writes CX-4, its CUP leaves it out: both are the hospital's MRN.
    own_mrn = "facilities:\n  default: {}\n  OSP_TEST:\n    patient_key:\n      - {identifier_type: MR, assigning_authority: OSP_TEST}\n"
    with running_adapter(tmp_path, own_mrn) as adapter:
        adapter.feed(siu("S12", "M1", "APPT1", pid3="777^^^OSP_TEST^MR"),
                     siu("S12", "M2", "APPT2", START + timedelta(days=1), pid3="777^^^^MR"))
        found = adapter.owners()
        assert found["APPT1"] == found["APPT2"]


def stored_before_qualifying(container: Container, facility: str, appointment: str | None) -> None:
    """A patient as the adapter stored an MRN without authority before it qualified such
    ids by their sender: with an empty system (and an appointment from ``facility``)."""
    origin = ev.Origin("hl7", f"CUP^{facility}", "OLD1")
    patient = ev.PatientDetails(key=ev.Identifier("", "12345", "MR"), given_name="Mario",
                                telecom=(ev.ContactPoint("phone", "+393331111111", "mobile"),))
    event = (ev.PatientUpdated(origin, NOW, patient) if appointment is None else ev.AppointmentBooked(
        origin, NOW, patient, ev.Appointment(f"hl7:CUP^{facility}:{appointment}", START)))
    with transaction(container.sessions) as session:
        container.pipeline.handle(session, [event], now=NOW)


def test_a_patient_stored_before_ids_were_qualified_is_found_by_its_own_hospital_only(adapter):
    stored_before_qualifying(adapter.container, "OSP_A", "VISIT-A")
    adapter.feed(
        siu("S12", "B1", "VISIT-B", facility="OSP_B", pid3="12345^^^^MR", phone="3472222222"),
        siu("S12", "A2", "VISIT-A2", facility="OSP_A", pid3="12345^^^^MR", phone="3331111111"),
        siu("S12", "B2", "VISIT-B2", facility="OSP_B", pid3="12345^^^^MR", phone="3472222222"))
    found = adapter.owners()
    assert found["VISIT-A2"] == found["VISIT-A"]
    assert found["VISIT-B"] == found["VISIT-B2"] != found["VISIT-A"]
    assert adapter.active_phones(found["VISIT-A"]) == ["+393331111111"]


def test_a_patient_stored_before_ids_were_qualified_with_no_trace_of_a_sender_goes_to_the_first_that_sends(adapter):
    stored_before_qualifying(adapter.container, "OSP_A", None)
    adapter.feed(
        siu("S12", "A1", "VISIT-A", facility="OSP_A", pid3="12345^^^^MR", phone="3331111111"),
        siu("S12", "B1", "VISIT-B", facility="OSP_B", pid3="12345^^^^MR", phone="3472222222"))
    found = adapter.owners()
    assert found["VISIT-A"] != found["VISIT-B"]
    assert adapter.patient_count() == 2


def a40(control_id: str, surviving_pid3: str, mrg1: str, *, facility: str = "OSP_TEST") -> bytes:
    return (f"MSH|^~\\&|PAS|{facility}|ADAPTER|NOTIFY|{ts(NOW)}||ADT^A40^ADT_A39|{control_id}|P|2.5||||||UNICODE UTF-8\r"
            f"EVN|A40|{ts(NOW)}\rPID|1||{surviving_pid3}||Rossi^Mario\rMRG|{mrg1}\r").encode()


def test_an_a40_finds_the_retired_patient_stored_before_ids_were_qualified(adapter):
    stored_before_qualifying(adapter.container, "OSP_A", "VISIT-A")
    adapter.feed(siu("S12", "A1", "VISIT-A1", facility="OSP_A", pid3="999^^^^MR", phone="3331111111"),
                 a40("M1", "999^^^^MR", "12345^^^^MR", facility="OSP_A"))
    found = adapter.owners()
    assert found["VISIT-A"] == found["VISIT-A1"]


# ------------------------------------------------------------- patient contacts


def adt(trigger: str, control_id: str, *, version: str = "2.5", pid13: str = "", pid14: str = "", pid15: str = "it",
        pid40: str = "", pid3: str = "777^^^OSP_TEST^MR", sent: datetime = NOW) -> bytes:
    """An ADT message about one patient; PID-40 (v2.7+ telecom) is written only when given."""
    pid = f"PID|1||{pid3}||Rossi^Mario^^^^^L||19800101|M|||||{pid13}|{pid14}|{pid15}" + ("|" * 25 + pid40 if pid40 else "")
    return (f"MSH|^~\\&|PAS|OSP_TEST|ADAPTER|NOTIFY|{ts(sent)}||ADT^{trigger}^ADT_A01|{control_id}|P|{version}"
            f"||||||UNICODE UTF-8\rEVN|{trigger}|{ts(sent)}\r{pid}\r").encode()


def test_a_v2_8_update_with_the_new_mobile_in_pid_40_replaces_the_old_one(adapter):
    adapter.feed(siu("S12", "M1", "APPT1"),
                 adt("A08", "U1", version="2.8", pid40="^PRN^CP^^^^^^^^^+39 347 555 1234", sent=NOW + timedelta(minutes=1)))
    assert adapter.active_phones(adapter.owners()["APPT1"]) == ["+393475551234"]


def test_a_number_past_its_expiration_date_xtn_14_is_no_longer_messaged(adapter):
    adapter.feed(siu("S12", "M1", "APPT1"),
                 adt("A08", "U1", version="2.8", sent=NOW + timedelta(minutes=1),
                     pid40="^PRN^CP^^^^^^^^^3331234567^20200101^20260301~^PRN^CP^^^^^^^^^3475551234^20260301~"
                           "^PRN^CP^^^^^^^^^3485551234^20260301^20271231"))
    assert sorted(adapter.active_phones(adapter.owners()["APPT1"])) == ["+393475551234", "+393485551234"]


@pytest.mark.parametrize("pid13", ['""', "^PRN^CP^^^^^^^^^3331234567^20200101^20260301", "^EMR^CP^^^^^^^^^3475551234"],
                         ids=["HL7 null", "expired", "emergency number only"])
def test_an_update_listing_no_number_of_the_patients_own_in_use_leaves_none_in_use(adapter, pid13):
    adapter.feed(siu("S12", "M1", "APPT1"), adt("A08", "U1", pid13=pid13, sent=NOW + timedelta(minutes=1)))
    assert adapter.active_phones(adapter.owners()["APPT1"]) == []


def test_an_update_without_numbers_or_with_an_empty_template_keeps_those_in_use(adapter):
    adapter.feed(siu("S12", "M1", "APPT1"), adt("A08", "U1", sent=NOW + timedelta(minutes=1)),
                 adt("A08", "U2", pid13="^PRN^CP", sent=NOW + timedelta(minutes=2)))
    assert adapter.active_phones(adapter.owners()["APPT1"]) == ["+393331234567"]


def test_an_e_mail_address_in_xtn_4_without_the_net_or_internet_codes_is_kept(adapter):
    # v2.5 makes XTN-2 and XTN-3 optional: PRN by habit, no equipment, the address in XTN-4.
    adapter.feed(siu("S12", "M1", "APPT1"),
                 adt("A08", "U1", pid13="^PRN^CP^^^^^^^^^3331234567~^PRN^^Mario.Rossi@example.it~^^^m.rossi@example.org",
                     sent=NOW + timedelta(minutes=1)))
    assert sorted(adapter.active_phones(adapter.owners()["APPT1"])) == [
        "+393331234567", "m.rossi@example.org", "mario.rossi@example.it"]


def test_a_mobile_number_sent_with_the_generic_telephone_equipment_ph_is_messaged_and_a_landline_is_not(adapter):
    adapter.feed(siu("S12", "M1", "APPT1"),
                 adt("A08", "U1", pid13="^PRN^PH^^^^^^^^^06 1234 5678~^PRN^PH^^^^^^^^^347 555 1234",
                     sent=NOW + timedelta(minutes=1)))
    assert adapter.active_phones(adapter.owners()["APPT1"]) == ["+393475551234"]


def test_an_emergency_or_answering_service_number_is_not_used_to_message_the_patient(adapter):
    # A landline at home, and a relative's mobile to call in an emergency: nothing about the visit goes to the relative.
    adapter.feed(adt("A04", "R1", pid13="^PRN^PH^^^^^^^^^06 1234 5678~^EMR^CP^^^^^^^^^347 555 1234~"
                                        "^ASN^CP^^^^^^^^^348 555 1234"),
                 siu("S12", "M1", "APPT1", phone="", sent=NOW + timedelta(minutes=1)))
    assert adapter.active_phones(adapter.owners()["APPT1"]) == []


# ------------------------------------------------------------- repeated and out-of-order SIU


def booked_notices(appointment: str, start: datetime, status: str = "scheduled") -> list[tuple[str, str, str, datetime]]:
    """What config/rules.yaml plans for a booking made at ``NOW`` (follow-up: 10:00 Rome the day after)."""
    follow_up = (start + timedelta(days=1)).replace(hour=9, minute=0)
    return [(appointment, "booking-confirmation", status, NOW), (appointment, "reminder-24h", status, start - timedelta(hours=24)),
            (appointment, "reminder-2h", status, start - timedelta(hours=2)), (appointment, "follow-up", status, follow_up)]


def test_a_booking_resent_with_a_new_control_id_plans_its_notices_once(adapter):
    adapter.feed(siu("S12", "M1", "APPT1"), siu("S12", "M2", "APPT1"),
                 siu("S12", "M3", "APPT1", sent=NOW + timedelta(minutes=5)))
    assert adapter.notices() == booked_notices("APPT1", START)


def test_a_booking_resent_later_with_another_start_is_told_as_a_reschedule(adapter):
    moved = START + timedelta(days=2)
    adapter.feed(siu("S12", "M1", "APPT1"), siu("S12", "M2", "APPT1", moved, sent=NOW + timedelta(hours=1)))
    assert adapter.appointments() == {"APPT1": ("booked", moved)}
    confirmation, *timed = booked_notices("APPT1", START)
    assert adapter.notices() == [
        confirmation, *[(ref, rule, "cancelled", at) for ref, rule, _, at in timed],
        ("APPT1", "reschedule-notice", "scheduled", NOW), *booked_notices("APPT1", moved)[1:]]


def test_a_booking_that_arrives_after_its_cancellation_does_not_revive_it(adapter):
    adapter.feed(siu("S15", "M2", "APPT1", status="Cancelled"), siu("S12", "M1", "APPT1"))
    assert adapter.appointments() == {"APPT1": ("cancelled", START)}
    assert [rule for _, rule, _, _ in adapter.notices()] == ["cancellation-notice"]


def test_a_booking_that_arrives_after_its_reschedule_does_not_put_the_old_time_back(adapter):
    moved = START + timedelta(days=2)
    adapter.feed(siu("S13", "M2", "APPT1", moved, sent=NOW), siu("S12", "M1", "APPT1", START, sent=NOW - timedelta(hours=1)))
    assert adapter.appointments() == {"APPT1": ("booked", moved)}
    assert adapter.notices() == booked_notices("APPT1", moved)


def test_an_older_reschedule_arriving_late_does_not_undo_a_newer_one(adapter):
    early, late = START + timedelta(days=1), START + timedelta(days=2)
    adapter.feed(siu("S12", "M1", "APPT1", sent=NOW - timedelta(hours=2)),
                 siu("S13", "M3", "APPT1", late, sent=NOW),
                 siu("S13", "M2", "APPT1", early, sent=NOW - timedelta(hours=1)))
    assert adapter.appointments() == {"APPT1": ("booked", late)}
    assert [at for _, rule, status, at in adapter.notices() if status == "scheduled" and rule == "reminder-24h"] == [
        late - timedelta(hours=24)]


def without_times(message: bytes, start: datetime = START) -> bytes:
    """``message`` with no appointment time left (SCH-11 empty, no AIS): a cancellation that only names
    the appointment, as senders write them (SCH-11 is withdrawn in v2.7, the resource segments optional)."""
    segments = [segment for segment in message.split(b"\r") if not segment.startswith(b"AIS|")]
    return b"\r".join(segments).replace(f"|^^^{ts(start)}|".encode(), b"||")


@pytest.mark.parametrize(("trigger", "status", "stored", "reason"), [
    ("S15", "Cancelled", "cancelled", "appointment cancelled"), ("S17", "Deleted", "cancelled", "appointment deleted"),
    ("S26", "Noshow", "noshow", "patient did not show")])
def test_a_cancellation_deletion_or_no_show_that_names_the_appointment_without_its_time_applies_to_it(
        adapter, trigger, status, stored, reason):
    adapter.feed(siu("S12", "M1", "APPT1"),
                 without_times(siu(trigger, "M2", "APPT1", status=status, sent=NOW + timedelta(minutes=1))))
    assert adapter.appointments() == {"APPT1": (stored, START)}
    with transaction(adapter.container.sessions) as session:
        rows = session.execute(select(Notification.rule_id, Notification.status, Notification.reason)
                               .order_by(Notification.id)).all()
    assert rows[:4] == [(rule, "cancelled", reason) for rule in ("booking-confirmation", "reminder-24h", "reminder-2h",
                                                                 "follow-up")]


def test_a_cancellation_without_a_time_of_an_appointment_never_booked_here_tells_nobody(adapter):
    adapter.feed(without_times(siu("S15", "M1", "APPT1", status="Cancelled")))
    assert adapter.appointments() == {} and adapter.notices() == []
    with transaction(adapter.container.sessions) as session:
        assert session.scalar(select(InboundMessage.status)) == "processed"


def with_null_times(message: bytes, start: datetime = START) -> bytes:
    """``message`` with its start (SCH-11.4, AIS-4) sent as the HL7 null ``""``."""
    return message.replace(f"|^^^{ts(start)}|".encode(), b'|^^^""|').replace(f"|{ts(start)}|0|".encode(), b'|""|0|')


def test_a_cancellation_whose_start_is_the_hl7_null_applies_to_the_appointment_as_one_without_it(adapter):
    adapter.feed(siu("S12", "M1", "APPT1"),
                 with_null_times(siu("S15", "M2", "APPT1", status="Cancelled", sent=NOW + timedelta(minutes=1))))
    assert adapter.appointments() == {"APPT1": ("cancelled", START)}


@pytest.mark.parametrize("times", [with_null_times, without_times], ids=["HL7 null", "absent"])
def test_a_booking_whose_start_is_the_hl7_null_goes_to_the_error_store_as_one_without_a_start(adapter, times):
    adapter.feed(times(siu("S12", "M1", "APPT1")))
    with transaction(adapter.container.sessions) as session:
        assert session.execute(select(InboundMessage.status, InboundMessage.error)).one() == (
            "error", "no appointment start time in SCH-11, AIS-4, TQ1-7")


def test_an_appointment_whose_filler_id_is_the_hl7_null_is_known_by_its_placer_id(adapter):
    # Two bookings before the filler (the hospital's scheduling system) has given them an id.
    first, second = (siu("S12", f"M{n}", "APPTX", START + timedelta(days=n), pid3=f"{n}^^^OSP_TEST^MR",
                         phone=f"347555000{n}").replace(b"SCH||APPTX^OSP_TEST|", f'SCH|PL{n}^CUP|""|'.encode())
                     for n in (1, 2))
    adapter.feed(first, second)
    assert sorted(adapter.appointments()) == ["PL1", "PL2"]
    assert len(set(adapter.owners().values())) == 2


def test_a_location_sent_as_the_hl7_null_is_no_location(adapter):
    adapter.feed(siu("S12", "M1", "APPT1").replace(b"\rAIS|", b'\rAIL|1||""\rAIS|'))
    with transaction(adapter.container.sessions) as session:
        assert session.scalar(select(Appointment.location)) == ""


def test_an_appointment_of_several_services_starts_at_the_earliest_whatever_the_order_of_its_ais(adapter):
    # OSP_SLUCA reads the start in AIS-4 first; SCH-11 is left empty, as v2.7 withdrew it.
    services = ["AIS|1||PREP^Accettazione^L", f"AIS|2||ECG^Elettrocardiogramma^L|{ts(START + timedelta(minutes=30))}",
                f"AIS|3||CARD01^Visita^L|{ts(START)}|0|min|30|min"]
    booking = siu("S12", "M1", "APPT1", facility="OSP_SLUCA").replace(f"|^^^{ts(START)}|".encode(), b"||")
    booking = booking.replace(f"AIS|1||CARD01^Visita^L|{ts(START)}|0|min|30|min".encode(), "\r".join(services).encode())
    adapter.feed(booking)
    assert adapter.appointments() == {"APPT1": ("booked", START)}


@pytest.mark.parametrize("moved", [timedelta(0), timedelta(days=1)], ids=["same start", "new start"])
def test_a_modification_giving_the_appointment_to_another_patient_moves_the_pending_notices_to_them(adapter, moved):
    adapter.feed(siu("S12", "M1", "APPT1", pid3="111^^^OSP_TEST^MR"),
                 siu("S14", "M2", "APPT1", START + moved, pid3="222^^^OSP_TEST^MR", phone="3472222222",
                     sent=NOW + timedelta(minutes=1)))
    owner = adapter.owners()["APPT1"]
    assert adapter.active_phones(owner) == ["+393472222222"]
    with transaction(adapter.container.sessions) as session:
        pending = session.execute(select(Notification.patient_id, Notification.rule_id)
                                  .where(Notification.status == "scheduled").order_by(Notification.id)).all()
    assert pending == [(owner, rule) for rule in ("booking-confirmation", "reminder-24h", "reminder-2h", "follow-up")]
    assert [status for _, _, status, _ in adapter.notices()][:4] == ["cancelled"] * 4


# ------------------------------------------------------------- ORU panels

ROUTINE = ("OBR|{n}|ORD-{ref}^CUP|{ref}^LIS|24323-8^Pannello metabolico^LN|||20260310080000+0100|||||||||||||||"
           "20260310120000+0100||CH|{status}\rOBX|1|NM|2345-7^Glucosio^LN||95|mg/dL|70-99|N|||F")
HIV = ("OBR|{n}|ORD-{ref}^CUP|{ref}^LIS|7917-8^HIV 1 Ab^LN|||20260310080000+0100|||||||||||||||"
       "20260310120000+0100||SR|{status}\rOBX|1|ST|7917-8^HIV 1 Ab^LN||NEG||||||F")


def oru(control_id: str, *orders: tuple[str, str, str]) -> bytes:
    """An ORU^R01 for patient 501 with one OBR per (template, order id, OBR-25 status)."""
    obrs = [template.format(n=n, ref=ref, status=status) for n, (template, ref, status) in enumerate(orders, start=1)]
    return (f"MSH|^~\\&|LIS|LAB_X|ADAPTER|NOTIFY|{ts(NOW)}||ORU^R01^ORU_R01|{control_id}|P|2.5||||||UNICODE UTF-8\r"
            "PID|1||501^^^LAB_X^MR||Rossi^Mario||19800101|M|||||^PRN^CP^^39^333^1234567||it\r"
            + "\r".join(obrs) + "\r").encode()


def consenting_to_online_reports(adapter: Adapter) -> None:
    adapter.feed(f"MSH|^~\\&|PAS|LAB_X|ADAPTER|NOTIFY|{ts(NOW)}||ADT^A04^ADT_A01|R1|P|2.5||||||UNICODE UTF-8\r"
                 f"EVN|A04|{ts(NOW)}\rPID|1||501^^^LAB_X^MR||Rossi^Mario||19800101|M|||||^PRN^CP^^39^333^1234567||it\r"
                 .encode())
    with transaction(adapter.container.sessions) as session:
        [patient_id] = session.scalars(select(Patient.id)).all()
        record_consent(session, patient_id=patient_id, purpose="report_notice", channel="*", decision="permit",
                       source="api", at=NOW)


@pytest.mark.parametrize("panel", [[(ROUTINE, "LAB-R", "F"), (HIV, "LAB-H", "F")],
                                   [(HIV, "LAB-H", "F"), (ROUTINE, "LAB-R", "F")]], ids=["routine first", "HIV first"])
def test_a_panel_with_an_excluded_result_notifies_the_rest_whatever_the_order_of_its_obr(adapter, panel):
    consenting_to_online_reports(adapter)
    adapter.feed(oru("O1", *panel))
    with transaction(adapter.container.sessions) as session:
        rows = session.execute(select(Notification.subject_ref, Notification.status, Notification.reason)).all()
    assert sorted((ref.rsplit(":", 1)[1], status, reason) for ref, status, reason in rows) == [
        ("LAB-H", "suppressed", EXCLUDED_REASON), ("LAB-R", "scheduled", None)]


def test_withdrawing_one_report_of_a_panel_keeps_the_notice_for_the_one_still_final(adapter):
    consenting_to_online_reports(adapter)
    adapter.feed(oru("O1", (ROUTINE, "LAB-1", "F"), (ROUTINE, "LAB-2", "F")))
    assert [(ref, status) for ref, _, status, _ in adapter.notices()] == [("LAB-1", "scheduled")]
    adapter.feed(oru("O2", (ROUTINE, "LAB-1", "X")))
    assert [(ref, status) for ref, _, status, _ in adapter.notices()] == [("LAB-2", "scheduled")]
    adapter.feed(oru("O3", (ROUTINE, "LAB-2", "X")))
    assert [(ref, status) for ref, _, status, _ in adapter.notices()] == [("LAB-2", "cancelled")]


def test_reports_whose_filler_order_number_is_the_hl7_null_are_each_known_by_their_placer_number(adapter):
    consenting_to_online_reports(adapter)
    no_filler = ROUTINE.replace("|{ref}^LIS|", '|""|')
    adapter.feed(oru("O1", (no_filler, "A", "F")), oru("O2", (no_filler, "B", "F")))
    assert [(ref, status) for ref, _, status, _ in adapter.notices()] == [("ORD-A", "scheduled"), ("ORD-B", "scheduled")]


# ------------------------------------------------------------- A40 merges


def test_an_a40_whose_mrg1_also_lists_the_shared_fiscal_code_merges_the_record_its_mrn_names(adapter):
    fiscal = "RSSMRA80A01F205X^^^NNITA^NN"  # OSP_SLUCA keys patients by fiscal code first
    adapter.feed(siu("S12", "A1", "APPT-A", facility="OSP_SLUCA", pid3="111^^^OSP_SLUCA^MR"),
                 siu("S12", "B1", "APPT-B", facility="OSP_SLUCA", pid3=f"222^^^OSP_SLUCA^MR~{fiscal}"),
                 a40("M1", f"222^^^OSP_SLUCA^MR~{fiscal}", f"111^^^OSP_SLUCA^MR~{fiscal}", facility="OSP_SLUCA"))
    found = adapter.owners()
    assert found["APPT-A"] == found["APPT-B"]
    with transaction(adapter.container.sessions) as session:
        assert session.scalar(select(Patient.merged_into).where(Patient.id != found["APPT-B"])) == found["APPT-B"]


def test_an_a40_merging_a_patient_into_itself_goes_to_the_error_store_with_the_reason(adapter):
    adapter.feed(siu("S12", "A1", "APPT1", pid3="111^^^OSP_TEST^MR"), a40("M1", "111^^^OSP_TEST^MR", "111^^^OSP_TEST^MR"))
    with transaction(adapter.container.sessions) as session:
        status, error = session.execute(select(InboundMessage.status, InboundMessage.error)
                                        .where(InboundMessage.control_id == "M1")).one()
    assert (status, error) == ("error", "MRG-1 lists only identifiers of the surviving patient (PID-3): no other record to merge")


# ------------------------------------------------------------- appointments already started


def test_an_appointment_booked_or_cancelled_after_its_start_gets_no_notice_but_its_follow_up(adapter):
    start = NOW - timedelta(hours=1)  # 09:00 Rome; the follow-up is 10:00 Rome the day after
    adapter.feed(siu("S12", "M1", "PAST1", start))
    started = "the appointment had already started when the event arrived"
    passed = "its time had already passed when the event arrived"
    with transaction(adapter.container.sessions) as session:
        rows = session.execute(select(Notification.rule_id, Notification.status, Notification.reason)
                               .order_by(Notification.id)).all()
    assert rows == [("booking-confirmation", "suppressed", started), ("reminder-24h", "suppressed", passed),
                    ("reminder-2h", "suppressed", passed), ("follow-up", "scheduled", None)]
    adapter.feed(siu("S15", "M2", "PAST1", start, status="Cancelled", sent=NOW + timedelta(minutes=1)))
    with transaction(adapter.container.sessions) as session:
        rows = session.execute(select(Notification.rule_id, Notification.status, Notification.reason)
                               .order_by(Notification.id)).all()
    assert rows[3:] == [("follow-up", "cancelled", "appointment cancelled"), ("cancellation-notice", "suppressed", started)]


@pytest.mark.parametrize("status", ["Pending", "Waitlist"])
def test_a_request_still_pending_or_on_the_waiting_list_is_not_announced_until_the_hospital_books_it(adapter, status):
    adapter.feed(siu("S12", "M1", "APPT1", status=status),
                 siu("S14", "M2", "APPT1", status=status, sent=NOW + timedelta(minutes=5)))
    assert adapter.notices() == []
    adapter.feed(siu("S14", "M3", "APPT1", status="Booked", sent=NOW + timedelta(minutes=10)))
    assert [rule for _, rule, _, _ in adapter.notices()] == [rule for _, rule, _, _ in booked_notices("APPT1", START)]


def test_a_waiting_list_entry_without_a_time_yet_is_processed_and_tells_nobody(adapter):
    adapter.feed(without_times(siu("S12", "M1", "APPT1", status="Waitlist")))
    with transaction(adapter.container.sessions) as session:
        assert list(session.scalars(select(InboundMessage.status))) == ["processed"]
    assert adapter.notices() == []


def test_an_appointment_given_by_its_day_only_is_announced_by_its_day_without_a_made_up_time(adapter):
    """SCH-11 ``20260313`` (TS of day precision) read as that day's 00:00, and the patient
    was told to come "alle 00:00"; a later cancellation naming it without a time kept that."""
    from adapter.models import OutboxMessage

    day_only = siu("S12", "M1", "APPT1").replace(f"^^^{ts(START)}|".encode(), b"^^^20260313|").replace(
        f"AIS|1||CARD01^Visita^L|{ts(START)}|".encode(), b"AIS|1||CARD01^Visita^L||")
    for message in (day_only, without_times(siu("S15", "M2", "APPT1", status="Cancelled", sent=NOW + timedelta(hours=1)))):
        adapter.feed(message)
        adapter.loop.run_until_complete(adapter.container.dispatcher.run_once())
    with transaction(adapter.container.sessions) as session:
        bodies = [adapter.container.vault.decrypt(session, row.body_enc).decode()
                  for row in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]
    assert [("venerdì 13 marzo" in body, "00:00" in body) for body in bodies] == [(True, False), (True, False)]


def test_an_appointment_given_by_its_day_only_and_booked_that_day_is_confirmed(adapter):
    """A booking made at 10:00 for today, given by its day only, counted as started at
    00:00: its confirmation was suppressed as "already started"."""
    today = NOW.strftime("%Y%m%d").encode()
    day_only = siu("S12", "M1", "APPT1").replace(f"^^^{ts(START)}|".encode(), b"^^^" + today + b"|").replace(
        f"AIS|1||CARD01^Visita^L|{ts(START)}|".encode(), b"AIS|1||CARD01^Visita^L||")
    adapter.feed(day_only)
    assert [(rule, status) for _, rule, status, _ in adapter.notices() if rule == "booking-confirmation"] == [
        ("booking-confirmation", "scheduled")]
