"""SIU messages that name the appointment and not the patient: PID is optional in SIU
(HL7 v2.5 §10.6: SIU_S12 = MSH SCH ... [{PID ...}] {RGS ...}), and schedulers such as
samedi's HL7 gateway send reschedules, modifications, cancellations, deletions and
no-shows without it. Each is applied to the appointment it names, for the patient that
appointment was booked for, whose details it leaves as they are. Over a real MLLP socket
to a running adapter, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from adapter.db import transaction
from adapter.models import Appointment, Contact, InboundMessage, Notification, OutboxMessage, Patient
from hl7.client import send_messages
from hl7.message import parse
from tests.core.test_cli import cli
from tests.core.test_end_to_end import wait_for
from tests.harness import RunningAdapter, running_adapter, settings_for

FACILITY = "OSP_TEST"
START = (datetime.now(UTC) + timedelta(days=5)).replace(second=0, microsecond=0)
BOOKED_AT = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def siu(trigger: str, control_id: str, appointment: str, start: datetime | None = START, *, mrn: str | None = "0012345",
        phone: str = "1234567", status: str = "Booked", service: str = "CARD01", sent: datetime = BOOKED_AT) -> bytes:
    """An SIU message about ``appointment`` (SCH-2); ``mrn`` None: without PID, as samedi's
    gateway sends all but bookings (SCH, RGS, AIS/AIG, no patient group). ``start`` None:
    no time at all (a cancellation naming the appointment only)."""
    when = ts(start) if start is not None else ""
    segments = [
        f"MSH|^~\\&|CUP|{FACILITY}|ADAPTER|NOTIFY|{ts(sent)}||SIU^{trigger}^SIU_S12|{control_id}|P|2.5||||||UNICODE UTF-8",
        f"SCH||{appointment}^{FACILITY}|||||VIS^Visita||30|min|^^^{when}||||||||||||||{status}",
    ]
    if mrn is not None:
        segments.append(f"PID|1||{mrn}^^^{FACILITY}^MR||D'Alò^Nicolò||19800101|M|||||^PRN^CP^^39^333^{phone}||it")
    segments += ["RGS|1|A"] + ([f"AIS|1||{service}^Visita^L|{when}|0|min|30|min"] if start is not None else [])
    return ("\r".join(segments) + "\r").encode()


def later(minutes: int = 0) -> datetime:
    return BOOKED_AT + timedelta(minutes=30 + minutes)


def send(adapter: RunningAdapter, *messages: bytes) -> list[str]:
    """Send over one MLLP connection; each message's MSA-1."""
    return [r.code.value for r in asyncio.run(send_messages(list(messages), "127.0.0.1", adapter.mllp_port))]


def settled(adapter: RunningAdapter, control_id: str) -> dict:
    """The message's row in the message store once processed (or in the error store)."""
    officer = adapter.client("officer")

    def row() -> dict | None:
        items = officer.get("/api/messages", params={"control_id": control_id}).json()["items"]
        return items[0] if items and items[0]["status"] != "stored" else None

    return wait_for(row)


def appointment(adapter: RunningAdapter, ident: str) -> tuple[str, str, datetime]:
    """(status, patient id, start) of the appointment with SCH-2 ``ident``."""
    with transaction(adapter.container.sessions) as session:
        row = session.execute(select(Appointment.status, Appointment.patient_id, Appointment.start).where(
            Appointment.ref == f"hl7:CUP^{FACILITY}:{ident}")).one()
        return row.status, row.patient_id, row.start


def notices(adapter: RunningAdapter, ident: str) -> list[tuple[str, str, str, datetime, str | None]]:
    """(rule, status, patient id, scheduled for, reason) of the appointment's notifications, in order."""
    with transaction(adapter.container.sessions) as session:
        return [tuple(row) for row in session.execute(
            select(Notification.rule_id, Notification.status, Notification.patient_id, Notification.scheduled_for,
                   Notification.reason)
            .where(Notification.subject_ref == f"hl7:CUP^{FACILITY}:{ident}").order_by(Notification.id))]


def patient_record(adapter: RunningAdapter, patient_id: str) -> tuple:
    """Everything stored of the patient and their contacts, as stored."""
    with transaction(adapter.container.sessions) as session:
        patient = session.execute(select(Patient.__table__).where(Patient.id == patient_id)).one()
        contacts = session.execute(select(Contact.__table__).where(Contact.patient_id == patient_id)
                                   .order_by(Contact.id)).all()
        return tuple(patient), [tuple(c) for c in contacts]


def patient_count(adapter: RunningAdapter) -> int:
    with transaction(adapter.container.sessions) as session:
        return len(session.scalars(select(Patient.id)).all())


def test_a_cancellation_without_pid_tells_the_appointments_own_patient_and_withdraws_the_reminders(
        tmp_path, database_url):
    with running_adapter(settings_for(tmp_path, database_url)) as adapter:
        assert send(adapter, siu("S12", "B1", "FL1"), siu("S12", "B2", "FL2", mrn="0099999", phone="7654321"),
                    siu("S15", "X1", "FL1", mrn=None, status="Cancelled", sent=later())) == ["AA"] * 3
        assert settled(adapter, "X1")["status"] == "processed"

        status, owner, _ = appointment(adapter, "FL1")
        assert status == "cancelled"
        cancellation = [n for n in notices(adapter, "FL1") if n[0] == "cancellation-notice"]
        assert [(rule, patient) for rule, _, patient, _, _ in cancellation] == [("cancellation-notice", owner)]
        reminders = [n for n in notices(adapter, "FL1") if n[0].startswith("reminder")]
        assert len(reminders) == 2 and {n[1] for n in reminders} == {"cancelled"}
        # The other patient's appointment is untouched.
        assert appointment(adapter, "FL2")[0] == "booked" and appointment(adapter, "FL2")[1] != owner
        assert {n[1] for n in notices(adapter, "FL2") if n[0].startswith("reminder")} == {"scheduled"}
        assert patient_count(adapter) == 2  # no patient made up for the message

        def cancellation_sent() -> bool:
            with transaction(adapter.container.sessions) as session:
                return session.scalar(select(OutboxMessage.patient_id).join(
                    Notification, Notification.idempotency_key == OutboxMessage.idempotency_key).where(
                    Notification.rule_id == "cancellation-notice")) == owner
        wait_for(cancellation_sent)


def test_a_reschedule_without_pid_moves_the_appointment_and_leaves_the_patients_details_as_they_are(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        assert send(adapter, siu("S12", "B1", "FL1")) == ["AA"]
        assert settled(adapter, "B1")["status"] == "processed"
        _, owner, _ = appointment(adapter, "FL1")
        before = patient_record(adapter, owner)

        moved = START + timedelta(days=1, hours=2)
        assert send(adapter, siu("S13", "M1", "FL1", moved, mrn=None, sent=later())) == ["AA"]
        assert settled(adapter, "M1")["status"] == "processed"

        assert appointment(adapter, "FL1") == ("booked", owner, moved)
        rows = notices(adapter, "FL1")
        assert [(rule, patient) for rule, _, patient, _, _ in rows if rule == "reschedule-notice"] == [
            ("reschedule-notice", owner)]
        pending = sorted(at for rule, status, _, at, _ in rows if rule.startswith("reminder") and status == "scheduled")
        assert pending == [moved - timedelta(hours=24), moved - timedelta(hours=2)]
        assert patient_record(adapter, owner) == before  # names, language, updated_at, contacts: as they were


def test_a_completion_without_pid_fulfils_the_appointment_and_plans_the_yearly_recall(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        assert send(adapter, siu("S12", "B1", "FL1", service="OCU01"),
                    siu("S14", "F1", "FL1", None, mrn=None, status="Complete", sent=later())) == ["AA", "AA"]
        assert settled(adapter, "F1")["status"] == "processed"

        status, owner, _ = appointment(adapter, "FL1")
        assert status == "fulfilled"
        recall = [(status, patient) for rule, status, patient, _, _ in notices(adapter, "FL1") if rule == "yearly-recall"]
        assert recall == [("scheduled", owner)]


def test_a_no_show_without_pid_is_applied_as_one_with_pid(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        assert send(adapter, siu("S12", "B1", "WITH"), siu("S12", "B2", "WITHOUT"),
                    siu("S26", "N1", "WITH", status="Noshow", sent=later()),
                    siu("S26", "N2", "WITHOUT", mrn=None, status="Noshow", sent=later())) == ["AA"] * 4
        assert settled(adapter, "N1")["status"] == settled(adapter, "N2")["status"] == "processed"

        def outcome(ident: str) -> tuple:
            status, owner, start = appointment(adapter, ident)
            # Timed notices only: an immediate one may be sent or still on its way when read.
            return status, start, [(rule, state, reason) for rule, state, _, _, reason in notices(adapter, ident)
                                   if rule != "booking-confirmation"]

        with_pid, without_pid = outcome("WITH"), outcome("WITHOUT")
        assert with_pid[0] == "noshow" and ("follow-up", "cancelled", "patient did not show") in with_pid[2]
        assert without_pid == with_pid


def test_a_cancellation_without_pid_of_an_unknown_appointment_waits_in_the_error_store_until_its_booking(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        assert send(adapter, siu("S15", "X1", "FL404", mrn=None, status="Cancelled", sent=later())) == ["AA"]
        row = settled(adapter, "X1")
        assert row["status"] == "error"
        assert row["error"].startswith(f"no PID, and appointment hl7:CUP^{FACILITY}:FL404 is not known here"), row
        assert "replay" in row["error"] and "D'Al" not in row["error"]
        assert patient_count(adapter) == 0

        assert send(adapter, siu("S12", "B1", "FL404")) == ["AA"]
        assert settled(adapter, "B1")["status"] == "processed"
        replay = cli(tmp_path, "hl7", "replay", str(row["id"]))
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert settled(adapter, "X1")["status"] == "processed"
        status, owner, _ = appointment(adapter, "FL404")
        assert status == "cancelled"
        assert [patient for rule, _, patient, _, _ in notices(adapter, "FL404") if rule == "cancellation-notice"] == [owner]


def test_a_booking_without_pid_is_an_error_that_says_a_booking_must_carry_pid(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        assert send(adapter, siu("S12", "B1", "FL1", mrn=None)) == ["AA"]
        row = settled(adapter, "B1")
        assert row["status"] == "error" and "a booking must carry PID" in row["error"], row
        assert patient_count(adapter) == 0


def test_a_sender_answered_after_processing_gets_ae_with_unknown_key_for_an_unknown_appointment(tmp_path):
    config = tmp_path / "config"
    shutil.copytree("config", config)
    (config / "facilities.yaml").write_text("facilities:\n  default:\n    ack_timing: processed\n")
    ident = "FL404-6f1c2a9e-0d4b-4c1e-9a7e-3b2d5c8f1e07"  # as long as the UUIDs some schedulers send
    with running_adapter(settings_for(tmp_path, config_dir=config)) as adapter:
        (unknown,) = asyncio.run(send_messages([siu("S15", "X1", ident, mrn=None, status="Cancelled")],
                                               "127.0.0.1", adapter.mllp_port))
        err = parse(unknown.ack.decode()).segment("ERR")
        assert unknown.code.value == "AE" and err is not None and err.value(3, 1) == "204"  # unknown key identifier
        assert ident in err.value(8) and "hl7 replay" in err.value(8), err.value(8)  # within ERR's 200 characters
        assert send(adapter, siu("S12", "B1", "FL1"), siu("S15", "X2", "FL1", mrn=None, status="Cancelled",
                                                          sent=later())) == ["AA", "AA"]
        assert appointment(adapter, "FL1")[0] == "cancelled"
        with transaction(adapter.container.sessions) as session:
            assert session.scalar(select(InboundMessage.status).where(InboundMessage.control_id == "X2")) == "processed"


def test_a_message_without_pid_about_an_appointment_whose_patient_was_erased_says_so_and_is_not_for_replay(tmp_path):
    """It used to read "never booked through the adapter": the engineer waited for a booking
    that had come long ago, then replayed. Erasure leaves a keyed hash of each of the
    patient's appointment refs in the audit log, nothing that says whose it was."""
    from adapter.app_acks import verdict
    from adapter.error_store import ErrorFilter, find_errors, replay
    from adapter.subject_rights import erase_patient
    from hl7.ack import AckCode
    from hl7.header import read_header
    from tests.harness import migrated_container

    container = migrated_container(settings_for(tmp_path))

    def process(*messages: bytes) -> None:
        container.intake.writer.write([(read_header(m), m) for m in messages])
        container.intake.process_pending()

    process(siu("S12", "B1", "FL9"))
    with transaction(container.sessions) as session:
        erase_patient(session, container, session.scalar(select(Patient.id)), actor="cli", now=container.clock.now())
    process(siu("S15", "X1", "FL9", mrn=None, status="Cancelled", sent=later()),
            siu("S15", "X2", "FL10", mrn=None, status="Cancelled", sent=later()))

    with transaction(container.sessions) as session:
        rows = {row.control_id: row for row in session.scalars(select(InboundMessage))}
        erased, never = rows["X1"], rows["X2"]
        assert erased.status == "ignored", erased.error
        assert erased.error == (f"no PID, and appointment hl7:CUP^{FACILITY}:FL9 is no longer here: its patient was "
                                "erased (GDPR art. 17); nothing to apply, do not replay it")
        assert never.status == "error" and "not known here" in never.error and "erased" not in never.error
        assert [entry.control_id for entry in find_errors(session, ErrorFilter(), limit=10, newest=False)[1]] == ["X2"]
        assert container.audit.verify(session).ok
    assert verdict(erased.status, erased.error, erased.error_code)[0] is AckCode.AA  # nothing for the hospital to fix
    assert replay(container, [erased.id], actor="cli") == {
        erased.id: "not replayed: it is ignored, not in the error store"}
    container.engine.dispose()
