"""Pipeline.handle_many: a batch of messages applied as handle() applies each, every
message all or nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from adapter import events as ev
from adapter.db import transaction
from adapter.errors import UnknownAppointment
from adapter.models import Appointment, Contact, Notification, Patient
from compliance.errors import PersonalDataInAudit
from compliance.models import AuditEntry
from tests.harness import SqliteSteps, migrated_container, settings_for

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
START = NOW + timedelta(days=3)


def booking(mrn: str, appointment: str, *, start: datetime = START, ref: str = "", rescheduled: bool = False) -> ev.Event:
    kind = ev.AppointmentRescheduled if rescheduled else ev.AppointmentBooked
    return kind(
        origin=ev.Origin("hl7", "CUP^OSP_TEST", ref or f"C-{mrn}-{appointment}"), occurred_at=NOW,
        patient=ev.PatientDetails(key=ev.Identifier("OSP_TEST", mrn, "MR"), given_name="Nicolò", family_name="D'Alò",
                                  language="it", telecom=(ev.ContactPoint("phone", "+393331234567", "mobile"),)),
        appointment=ev.Appointment(ref=f"hl7:CUP^OSP_TEST:{appointment}", start=start, location="Ambulatorio 2"),
    )


def copy_scheduled(connection, times: int, after: datetime | None = None) -> None:  # noqa: ANN001
    """On SQLite, ``times`` copies of every scheduled notification (scheduled after
    ``after``, when given), each under an appointment of its own."""
    from sqlalchemy import text

    connection.execute(text(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :times) "
        "INSERT INTO notification (patient_id, kind, rule_id, subject_ref, scheduled_for, status, urgent,"
        " idempotency_key, status_at, created_at, tried_channels, attempts, decision)"
        " SELECT patient_id, kind, rule_id, 'other:' || i || ':' || id, scheduled_for, status, urgent,"
        " lower(hex(randomblob(16))), status_at, created_at, tried_channels, attempts, decision"
        " FROM notification, n WHERE status = 'scheduled' AND scheduled_for > :after"),
        {"times": times, "after": (after or datetime(1970, 1, 1, tzinfo=UTC)).strftime("%Y-%m-%d %H:%M:%S")})


def container_for(tmp_path, database_url):  # noqa: ANN001, ANN201
    return migrated_container(settings_for(tmp_path, database_url))


def shape(session, mrn_prefix: str) -> list[tuple]:  # noqa: ANN001
    """Per notification of the patients, what a reader of /why would see, without ids."""
    rows = session.execute(select(Notification.subject_ref, Notification.kind, Notification.rule_id, Notification.status,
                                  Notification.reason, Notification.scheduled_for)
                           .where(Notification.subject_ref.like(f"%:{mrn_prefix}%")).order_by(Notification.id))
    return [(ref.split(":")[-1][len(mrn_prefix):], *rest) for ref, *rest in rows]


def why_records(session, mrn_prefix: str) -> list[dict]:  # noqa: ANN001
    """The why-record of each notification of the patients (consent decision included),
    the message it came from named without the prefix."""
    rows = session.scalars(select(Notification.decision).where(Notification.subject_ref.like(f"%:{mrn_prefix}%"))
                           .order_by(Notification.id))
    return [{**why, "event": {**why["event"], "message_ref": why["event"]["message_ref"].replace(mrn_prefix, "")}}
            for why in rows]


def test_new_patients_booked_in_one_batch_get_what_they_get_one_by_one_and_the_audit_verifies(tmp_path, database_url):
    container = container_for(tmp_path, database_url)
    try:
        pipeline = container.pipeline
        with transaction(container.sessions) as session:
            outcomes = pipeline.handle_many(session, [[booking(f"T{i}", f"T{i}")] for i in range(5)], now=NOW)
        with transaction(container.sessions) as session:
            for i in range(5):
                pipeline.handle(session, [booking(f"S{i}", f"S{i}")], now=NOW)
        with transaction(container.sessions) as session:
            assert [len(ids) for ids in outcomes] == [4] * 5
            assert shape(session, "T") == shape(session, "S") and len(shape(session, "T")) == 20
            assert why_records(session, "T") == why_records(session, "S")
            assert session.scalar(select(func.count()).select_from(Patient)) == 10
            assert session.scalar(select(func.count()).select_from(Contact)) == 10
            per_subject = Counter(session.scalars(select(AuditEntry.action)))
            assert per_subject == {"received": 10, "scheduled": 40}
            patient = session.scalar(select(Notification.patient_id).where(Notification.id == outcomes[2][0]))
            assert [a for a in session.scalars(select(AuditEntry.action).where(AuditEntry.subject == f"patient:{patient}")
                                               .order_by(AuditEntry.seq))] == ["received"] + ["scheduled"] * 4
            assert container.audit.verify(session).ok
            # Ids and idempotency keys are time-ordered (UUID version 7): new rows go to
            # the end of their indexes, in the order they were made.
            assert [uuid.UUID(pid).version for pid in session.scalars(select(Patient.id))] == [7] * 10
            keys = list(session.scalars(select(Notification.idempotency_key).order_by(Notification.id)))
            assert keys == sorted(keys) and {uuid.UUID(k).version for k in keys} == {7}
    finally:
        container.engine.dispose()


def test_a_batch_with_one_failing_message_keeps_the_others(tmp_path, database_url):
    container = container_for(tmp_path, database_url)
    try:
        batch = [[booking("F1", "F1")], [booking("F2", "F2", ref="nicolo.dalo@example.it")], [booking("F3", "F3")]]
        with transaction(container.sessions) as session:
            outcomes = container.pipeline.handle_many(session, batch, now=NOW)
        assert isinstance(outcomes[1], PersonalDataInAudit)
        assert [len(outcomes[0]), len(outcomes[2])] == [4, 4]
        with transaction(container.sessions) as session:
            refs = set(session.scalars(select(Appointment.ref)))
            assert refs == {"hl7:CUP^OSP_TEST:F1", "hl7:CUP^OSP_TEST:F3"}
            assert session.scalar(select(func.count()).select_from(Patient)) == 2
            assert session.scalar(select(func.count()).select_from(Notification)) == 8
            assert session.scalar(select(func.count()).select_from(AuditEntry)) == 10
            assert container.audit.verify(session).ok
    finally:
        container.engine.dispose()


def test_messages_of_a_batch_about_the_same_patient_or_appointment_apply_in_order(tmp_path, database_url):
    container = container_for(tmp_path, database_url)
    try:
        with transaction(container.sessions) as session:
            container.pipeline.handle(session, [booking("K1", "K1")], now=NOW)
        later = START + timedelta(days=1)
        batch = [
            [booking("O1", "O1")],
            [booking("O1", "O1", start=later, rescheduled=True, ref="C-moved")],  # the same appointment, moved
            [booking("K1", "K2")],  # a patient the database knows
            [booking("N1", "N1")], [booking("N1", "N2")],  # one new patient, two bookings
        ]
        with transaction(container.sessions) as session:
            outcomes = container.pipeline.handle_many(session, batch, now=NOW)
        assert [len(ids) for ids in outcomes] == [4, 4, 4, 4, 4]  # the reschedule: notice + 3 timed
        with transaction(container.sessions) as session:
            moved = session.execute(select(Notification.rule_id, Notification.status).where(
                Notification.subject_ref == "hl7:CUP^OSP_TEST:O1").order_by(Notification.id)).all()
            assert [status for _, status in moved] == ["scheduled", "cancelled", "cancelled", "cancelled",
                                                       "scheduled", "scheduled", "scheduled", "scheduled"]
            owners = dict(session.execute(select(Appointment.ref, Appointment.patient_id)).all())
            assert owners["hl7:CUP^OSP_TEST:K1"] == owners["hl7:CUP^OSP_TEST:K2"]
            assert owners["hl7:CUP^OSP_TEST:N1"] == owners["hl7:CUP^OSP_TEST:N2"]
            assert session.scalar(select(func.count()).select_from(Patient)) == 3
            assert container.audit.verify(session).ok
    finally:
        container.engine.dispose()


def test_updates_applied_together_keep_the_others_when_one_fails(tmp_path, database_url):
    """Messages about known patients go in one savepoint; when one fails, that savepoint
    is undone and each goes again on its own: the failure stays its own, nothing twice."""
    container = container_for(tmp_path, database_url)
    try:
        with transaction(container.sessions) as session:
            for mrn in ("U1", "U2", "U3"):
                container.pipeline.handle(session, [booking(mrn, mrn)], now=NOW)
        later = START + timedelta(days=1)
        batch = [[booking("U1", "U1", start=later, rescheduled=True, ref="C-U1-moved")],
                 [booking("U2", "U2", start=later, rescheduled=True, ref="nicolo.dalo@example.it")],  # refused by the audit
                 [booking("U3", "U3", start=later, rescheduled=True, ref="C-U3-moved")]]
        with transaction(container.sessions) as session:
            outcomes = container.pipeline.handle_many(session, batch, now=NOW)
        assert isinstance(outcomes[1], PersonalDataInAudit)
        assert [len(outcomes[0]), len(outcomes[2])] == [4, 4]
        with transaction(container.sessions) as session:
            starts = dict(session.execute(select(Appointment.ref, Appointment.start)).all())
            assert [starts[f"hl7:CUP^OSP_TEST:U{n}"].astimezone(UTC) for n in (1, 2, 3)] == [later, START, later]
            statuses = Counter(session.execute(select(Notification.subject_ref, Notification.status)).all())
            assert statuses[("hl7:CUP^OSP_TEST:U1", "cancelled")] == statuses[("hl7:CUP^OSP_TEST:U3", "cancelled")] == 3
            assert statuses[("hl7:CUP^OSP_TEST:U2", "cancelled")] == 0
            assert Counter(session.scalars(select(AuditEntry.action)))["received"] == 5  # 3 bookings, 2 moves: once each
            assert container.audit.verify(session).ok
    finally:
        container.engine.dispose()


def cancellation_without_patient(appointment: str, ref: str) -> ev.Event:
    """An HL7 SIU^S15 without PID: it names the appointment only."""
    return ev.AppointmentCancelled(origin=ev.Origin("hl7", "CUP^OSP_TEST", ref), occurred_at=NOW, patient=None,
                                   appointment=ev.Appointment(ref=f"hl7:CUP^OSP_TEST:{appointment}", start=None),
                                   reason="cancelled")


def test_cancellations_without_patient_apply_to_the_appointments_patient_and_an_unknown_one_fails_alone(
        tmp_path, database_url, caplog):
    """In one batch: a cancellation of an appointment the database knows, one of an
    appointment booked earlier in the batch, and one of an appointment nobody knows. The
    last fails alone, found before the others are applied together: they are not applied
    again one by one."""
    container = container_for(tmp_path, database_url)
    try:
        with transaction(container.sessions) as session:
            container.pipeline.handle(session, [booking("W1", "W1")], now=NOW)
        batch = [[cancellation_without_patient("W1", "X1")],
                 [booking("W2", "W2")], [cancellation_without_patient("W2", "X2")],
                 [cancellation_without_patient("NOPE", "X3")],
                 [booking("W1", "W3", rescheduled=True)]]
        with transaction(container.sessions) as session:
            outcomes = container.pipeline.handle_many(session, batch, now=NOW)
        assert isinstance(outcomes[3], UnknownAppointment) and outcomes[3].ref == "hl7:CUP^OSP_TEST:NOPE"
        assert [len(outcomes[n]) for n in (0, 1, 2, 4)] == [1, 4, 1, 4]  # a cancellation notice each
        assert "one by one" not in caplog.text
        with transaction(container.sessions) as session:
            appointments = {ref.rsplit(":", 1)[1]: (status, patient) for ref, status, patient in session.execute(
                select(Appointment.ref, Appointment.status, Appointment.patient_id))}
            assert {name: status for name, (status, _) in appointments.items()} == {
                "W1": "cancelled", "W2": "cancelled", "W3": "booked"}
            notices = session.execute(select(Notification.subject_ref, Notification.patient_id).where(
                Notification.rule_id == "cancellation-notice")).all()
            assert sorted(notices) == [(f"hl7:CUP^OSP_TEST:{name}", appointments[name][1]) for name in ("W1", "W2")]
            assert session.scalar(select(func.count()).select_from(Patient)) == 2
            assert container.audit.verify(session).ok
    finally:
        container.engine.dispose()


def test_a_reschedule_reads_its_own_notifications_not_every_scheduled_one(tmp_path):
    """Withdrawing what waits for a moved appointment finds it by the appointment: the
    SQLite work of a reschedule stays the same with 20,000 other notifications scheduled."""
    from sqlalchemy import text

    container = container_for(tmp_path, None)
    steps = SqliteSteps(container.engine)
    try:
        def reschedule(mrn: str, days: int) -> int:
            with transaction(container.sessions) as session:
                container.pipeline.handle(session, [booking(mrn, mrn)], now=NOW)
            steps.reset()
            with transaction(container.sessions) as session:
                moved = booking(mrn, mrn, start=START + timedelta(days=days), rescheduled=True, ref=f"C-{mrn}-moved")
                container.pipeline.handle(session, [moved], now=NOW)
            return steps.count

        few = reschedule("R1", 1)
        with container.engine.begin() as connection:  # 20,000 scheduled notifications of other appointments
            copy_scheduled(connection, 5000)
            assert connection.scalar(text("SELECT count(*) FROM notification WHERE status = 'scheduled'")) > 20_000
        many = reschedule("R2", 2)
        assert few > 0 and many < 2 * few, (few, many)
    finally:
        container.engine.dispose()


def test_a_consent_withdrawal_applies_to_the_messages_after_it_in_the_same_batch(tmp_path, database_url):
    """The consent histories of a batch's known patients are read ahead, once for the
    batch: a message of the batch that withdraws a patient's consent still counts for
    the patient's later messages of it, as when each message is applied alone."""
    container = container_for(tmp_path, database_url)
    try:
        with transaction(container.sessions) as session:
            for mrn in ("W1", "W2"):
                container.pipeline.handle(session, [booking(mrn, mrn)], now=NOW)
        withdrawal = ev.ConsentChanged(
            origin=ev.Origin("hl7", "CUP^OSP_TEST", "C-W1-consent"), occurred_at=NOW,
            patient=ev.PatientDetails(key=ev.Identifier("OSP_TEST", "W1", "MR")), consent_ref="consent-W1",
            active=True, provisions=(ev.ConsentProvision("deny"),))
        later = START + timedelta(days=1)
        batch = [[withdrawal]] + [[booking(mrn, mrn, start=later, rescheduled=True, ref=f"C-{mrn}-moved")]
                                  for mrn in ("W1", "W2")]
        with transaction(container.sessions) as session:
            outcomes = container.pipeline.handle_many(session, batch, now=NOW)
        assert [len(ids) for ids in outcomes] == [0, 4, 4]
        with transaction(container.sessions) as session:
            statuses = {mrn: Counter(session.scalars(select(Notification.status).where(
                Notification.id.in_(ids)))) for mrn, ids in zip(("W1", "W2"), outcomes[1:], strict=True)}
        assert statuses == {"W1": {"suppressed": 4}, "W2": {"scheduled": 4}}
    finally:
        container.engine.dispose()
