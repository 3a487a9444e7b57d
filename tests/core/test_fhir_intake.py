"""FHIR writes are answered once stored; their events are processed after, from
the stored versions (adapter/fhir_intake.py): nothing accepted is lost, nothing
is processed twice, failures land in the error store."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, event, func, select

from adapter.db import transaction
from adapter.models import InboundMessage, Notification, Patient
from fhir.models import FhirResource
from adapter.subject_rights import find_patient_id
from tests.core.test_end_to_end import FHIR, appointment, notifications, patient
from tests.harness import migrated_container, running_adapter, settings_for


def fhir_messages(adapter) -> list[dict]:
    response = adapter.client("officer").get("/api/messages", params={"source": "fhir", "limit": 1000})
    response.raise_for_status()
    return sorted(response.json()["items"], key=lambda m: m["id"])


def kinds(adapter) -> list[str]:
    return sorted(i["kind"] for i in notifications(adapter.client("officer")))


def test_versions_stored_before_a_crash_are_processed_at_the_next_start_and_only_once(tmp_path, database_url):
    settings = settings_for(tmp_path, database_url)
    container = migrated_container(settings)
    start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    with transaction(container.sessions) as session:  # answered, then the process died
        container.fhir.service.write(session, patient("p1"))
        container.fhir.service.write(session, appointment("a1", "p1", start))
    container.engine.dispose()

    with running_adapter(settings) as adapter:
        adapter.fhir_processed()
        assert [(m["control_id"], m["status"]) for m in fhir_messages(adapter)] == [
            ("Patient/p1/_history/1", "processed"), ("Appointment/a1/_history/1", "processed")]
        first = kinds(adapter)
        assert first == ["booking_confirmation", "follow_up", "reminder", "reminder"]
        assert adapter.container.fhir.replay([m["id"] for m in fhir_messages(adapter)]) == {
            m["id"]: "processed" for m in fhir_messages(adapter)}
    with running_adapter(settings) as adapter:  # another start: nothing is processed again
        adapter.fhir_processed()
        assert kinds(adapter) == first


def test_a_version_that_cannot_be_processed_lands_in_the_error_store_with_its_reason(tmp_path):
    settings = settings_for(tmp_path)
    container = migrated_container(settings)
    start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    with transaction(container.sessions) as session:
        container.fhir.service.write(session, patient("p1"))
    assert container.fhir.process_pending() == 1
    with transaction(container.sessions) as session:  # stored, not yet processed
        container.fhir.service.write(session, appointment("a1", "p1", start))
    with transaction(container.sessions) as session:  # the stored version goes missing meanwhile
        session.execute(delete(FhirResource).where(FhirResource.resource_type == "Appointment"))
    container.engine.dispose()

    with running_adapter(settings) as adapter:
        adapter.fhir_processed()
        failed = fhir_messages(adapter)[-1]
        assert failed["control_id"] == "Appointment/a1/_history/1"
        assert failed["status"] == "error" and "missing" in failed["error"]
        assert notifications(adapter.client("officer")) == []
        assert adapter.container.fhir.replay([failed["id"]]) == {failed["id"]: "error"}


def test_a_transaction_with_one_invalid_entry_stores_and_records_nothing(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:0c7f3a1e-0000-4000-8000-000000000001", "resource": patient("p1"),
             "request": {"method": "PUT", "url": "Patient/p1"}},
            {"resource": {**appointment("a1", "p1", datetime.now(UTC) + timedelta(days=3)), "status": "bogus"},
             "request": {"method": "PUT", "url": "Appointment/a1"}},
        ]}
        response = adapter.client("ehr").post("/fhir/R4", json=bundle, headers=FHIR)
        assert response.status_code == 400
        assert response.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.status"]
        assert adapter.client("ehr").get("/fhir/R4/Patient/p1").status_code == 404
        assert fhir_messages(adapter) == []


def test_a_transaction_records_its_versions_in_processing_order_or_none_of_them(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr = adapter.client("ehr")
        ref = "urn:uuid:0c7f3a1e-0000-4000-8000-000000000002"
        start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        new_appointment = {**appointment("a0", "p0", start), "participant": [{"actor": {"reference": ref},
                                                                              "status": "accepted"}]}
        entries = [  # the Patient is written first: the Appointment's events need it
            {"resource": new_appointment, "request": {"method": "POST", "url": "Appointment"}},
            {"fullUrl": ref, "resource": patient("p0"), "request": {"method": "POST", "url": "Patient"}},
        ]
        failing = [*entries, {"resource": appointment("a9", "p9", start),
                              "request": {"method": "PUT", "url": "Appointment/a9", "ifMatch": 'W/"2"'}}]
        response = ehr.post("/fhir/R4", json={"resourceType": "Bundle", "type": "transaction", "entry": failing},
                            headers=FHIR)
        assert response.status_code == 412, response.text
        assert fhir_messages(adapter) == []

        response = ehr.post("/fhir/R4", json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                            headers=FHIR)
        assert response.status_code == 200, response.text
        booked, created = (e["resource"] for e in response.json()["entry"])
        assert booked["participant"][0]["actor"]["reference"] == f"Patient/{created['id']}"
        assert ehr.get(response.json()["entry"][0]["response"]["location"]).status_code == 200
        adapter.fhir_processed()
        assert [(m["control_id"], m["status"]) for m in fhir_messages(adapter)] == [
            (f"Patient/{created['id']}/_history/1", "processed"),
            (f"Appointment/{booked['id']}/_history/1", "processed")]
        assert kinds(adapter) == ["booking_confirmation", "follow_up", "reminder", "reminder"]


def test_an_older_version_replayed_after_a_newer_one_was_processed_is_ignored(tmp_path):
    settings = settings_for(tmp_path)
    container = migrated_container(settings)
    start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    with transaction(container.sessions) as session:
        container.fhir.service.write(session, patient("p1"))
        container.fhir.service.write(session, appointment("a1", "p1", start))
        container.fhir.service.write(session, appointment("a1", "p1", start, "cancelled"))
    container.fhir.process_pending()
    container.engine.dispose()

    with running_adapter(settings) as adapter:
        booked = fhir_messages(adapter)[1]
        assert booked["control_id"] == "Appointment/a1/_history/1" and booked["status"] == "processed"
        with transaction(adapter.container.sessions) as session:  # as if it had failed
            from adapter.models import InboundMessage

            session.get(InboundMessage, booked["id"]).status = "error"
        assert adapter.container.fhir.replay([booked["id"]]) == {booked["id"]: "ignored"}
        assert "superseded by version 2" in fhir_messages(adapter)[1]["error"]
        assert not [i for i in notifications(adapter.client("officer")) if i["status"] == "scheduled"]


def test_inline_processing_publishes_the_events_before_answering(tmp_path):
    settings = settings_for(tmp_path, fhir_processing="inline")
    with running_adapter(settings) as adapter:
        ehr = adapter.client("ehr")
        start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        assert ehr.put("/fhir/R4/Patient/p1", json=patient("p1"), headers=FHIR).status_code == 201
        assert ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", start), headers=FHIR).status_code == 201
        # processed before the answer: no waiting
        assert kinds(adapter) == ["booking_confirmation", "follow_up", "reminder", "reminder"]
        assert [m["status"] for m in fhir_messages(adapter)] == ["processed", "processed"]


def test_versions_are_processed_in_chunks_only_while_requests_are_quiet(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    sizes: list[int] = []
    derive = container.fhir._derive
    container.fhir._derive = lambda ids: (sizes.append(len(ids)), derive(ids))[1]

    def store(first: int) -> None:
        with transaction(container.sessions) as session:
            for n in range(first, first + 20):
                container.fhir.service.write(session, patient(f"q{n}"))

    store(0)
    assert container.fhir.process_pending(quiet_s=lambda: 0.0) == 20
    assert sizes == [1] * 20  # a request arrived a moment ago: one at a time
    sizes.clear()
    store(20)
    assert container.fhir.process_pending(quiet_s=lambda: float("inf")) == 20
    assert sizes == [16, 4]
    with transaction(container.sessions) as session:
        statuses = set(session.scalars(select(InboundMessage.status).where(InboundMessage.source == "fhir")))
    assert statuses == {"processed"}
    container.engine.dispose()


def test_a_version_s_events_are_derived_without_the_write_lock_so_an_hl7_ack_never_waits_for_it(tmp_path):
    """While a stored version's events are derived (a chunk of Bundle entries held the
    write lock 40-90 ms), an HL7 message is stored, as its ACK needs, at once."""
    from hl7.header import read_header
    from tests.core.test_end_to_end import siu

    container = migrated_container(settings_for(tmp_path))
    with transaction(container.sessions) as session:
        container.fhir.service.write(session, patient("derived"))
    raw = siu("S12", "MEANWHILE", datetime.now(UTC) + timedelta(days=2))
    storing = threading.Thread(target=container.intake.writer.write, args=([(read_header(raw), raw)],))
    stored_meanwhile: list[bool] = []
    service = container.fhir.service
    derive = service.events_of

    def derive_while_an_hl7_message_is_stored(*args, **kwargs):
        if not stored_meanwhile:
            storing.start()
            storing.join(timeout=5)  # a guard only: with the write lock held it waits for this
            stored_meanwhile.append(not storing.is_alive())
        return derive(*args, **kwargs)

    service.events_of = derive_while_an_hl7_message_is_stored
    assert container.fhir.process_pending() == 1
    storing.join()
    assert stored_meanwhile == [True]
    with transaction(container.sessions) as session:
        statuses = dict(session.execute(select(InboundMessage.source, InboundMessage.status)).all())
    assert statuses == {"fhir": "processed", "hl7": "stored"}
    container.engine.dispose()


def test_a_transaction_creating_patients_seals_everything_before_it_takes_the_write_lock(tmp_path):
    """SQLite has one writer: a Bundle that creates patients makes their keys and
    seals every resource first, then takes the write lock for its inserts only."""
    with running_adapter(settings_for(tmp_path)) as adapter:
        happened: list[tuple[int, str]] = []
        vault = adapter.container.vault
        seal = vault.encrypt

        def sealing(*args, **kwargs):
            happened.append((threading.get_ident(), "seal"))
            return seal(*args, **kwargs)

        def statement(_conn, _cursor, sql, *_):
            happened.append((threading.get_ident(), sql.split("(")[0].strip()))

        vault.encrypt = sealing
        event.listen(adapter.container.engine, "before_cursor_execute", statement)
        ref = "urn:uuid:0c7f3a1e-0000-4000-8000-000000000003"
        start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        booking = {**appointment("a0", "p0", start), "participant": [{"actor": {"reference": ref},
                                                                      "status": "accepted"}]}
        response = adapter.client("ehr").post("/fhir/R4", headers=FHIR, json={
            "resourceType": "Bundle", "type": "transaction", "entry": [
                {"fullUrl": ref, "resource": patient("p0"), "request": {"method": "POST", "url": "Patient"}},
                {"resource": booking, "request": {"method": "POST", "url": "Appointment"}}]})
        event.remove(adapter.container.engine, "before_cursor_execute", statement)
        vault.encrypt = seal
        assert response.status_code == 200, response.text
        request_thread = next(t for t, what in happened if what == "INSERT INTO fhir_resource")
        steps = [what for t, what in happened if t == request_thread]
        write = len(steps) - 1 - steps[::-1].index("BEGIN IMMEDIATE")
        assert steps[write - 2:write] == ["seal", "seal"]  # the Patient and the Appointment
        assert "seal" not in steps[write:]
        assert steps[write + 1] == "INSERT INTO data_key"  # the new patient's key, with the rest
        assert all(s.startswith("INSERT INTO") for s in steps[write + 1:])


def test_patients_whose_identifier_has_no_system_are_never_fused(tmp_path):
    """An identifier without a system is unique only within whoever assigned it: two
    EHRs (or two wards) may both send ``{"value": "12345"}`` for different people.
    Matching on it made one patient of two, and one's reminders went to the other's
    phone. It is not used to match: each stays their own patient."""
    from tests.core.test_end_to_end import wait_for

    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr = adapter.client("ehr")
        start = datetime.now(UTC) + timedelta(days=3)
        for pid, phone in (("pa", "+393331111111"), ("pb", "+393332222222")):
            body = patient(pid, phone=phone)
            body["identifier"] = [{"value": "12345"}]
            assert ehr.put(f"/fhir/R4/Patient/{pid}", json=body, headers=FHIR).status_code in (200, 201)
            booked = ehr.put(f"/fhir/R4/Appointment/a-{pid}", json=appointment(f"a-{pid}", pid, start), headers=FHIR)
            assert booked.status_code in (200, 201), booked.text

        def owners() -> set[str]:
            with transaction(adapter.container.sessions) as session:
                return set(session.scalars(select(Notification.patient_id).where(
                    Notification.kind == "booking_confirmation")))
        wait_for(lambda: len(fhir_messages(adapter)) >= 4 and all(
            m["status"] != "stored" for m in fhir_messages(adapter)))
        with transaction(adapter.container.sessions) as session:
            assert session.scalar(select(func.count()).select_from(Patient).where(Patient.merged_into.is_(None))) == 2
        assert len(owners()) == 2


def test_a_patient_whose_every_number_has_ended_is_no_longer_messaged_on_the_old_one(tmp_path):
    """A Patient PUT replaces the resource: when every ContactPoint it lists has ended
    (``use: old``, or a ``period.end`` past), the hospital has said the patient has none
    in use. That used to read as "telecom not sent", so the number just retired stayed
    active and kept getting reminders. A Patient with no ``telecom`` at all still leaves
    the contacts alone."""
    from adapter.models import Contact
    from tests.core.test_end_to_end import wait_for

    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr = adapter.client("ehr")

        def put(body: dict) -> None:
            assert ehr.put("/fhir/R4/Patient/p1", json=body, headers=FHIR).status_code in (200, 201)
            wait_for(lambda: all(m["status"] != "stored" for m in fhir_messages(adapter)))

        def active() -> int:
            with transaction(adapter.container.sessions) as session:
                return session.scalar(select(func.count()).select_from(Contact).where(Contact.active))

        body = patient("p1")
        put(body)
        assert active() == 1
        put({**body, "telecom": [{**body["telecom"][0], "use": "old"}]})
        assert active() == 0
        put({key: value for key, value in body.items() if key != "telecom"} | {"gender": "female"})
        assert active() == 0
        put(body)
        assert active() == 1
        put({key: value for key, value in body.items() if key != "telecom"} | {"gender": "male"})
        assert active() == 1


def test_a_deleted_appointment_calls_off_its_reminders_and_reads_as_gone_until_put_again(tmp_path, database_url):
    """``DELETE [base]/Appointment/{id}`` (FHIR R4 §3.1.0.7) used to be refused (405): the
    EHR could not delete, and the reminders of the appointment kept going out. The
    deletion is stored as a version of its own and processed like any write: the
    pending notices are called off and the patient is told, as for entered-in-error."""
    with running_adapter(settings_for(tmp_path, database_url)) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        assert ehr.put("/fhir/R4/Patient/p1", json=patient("p1"), headers=FHIR).status_code == 201
        assert ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", start), headers=FHIR).status_code == 201
        adapter.fhir_processed()
        assert [i["status"] for i in notifications(officer) if i["kind"] == "reminder"] == ["scheduled"] * 2

        deleted = ehr.delete("/fhir/R4/Appointment/a1")
        assert deleted.status_code == 200, deleted.text
        assert deleted.headers["etag"] == 'W/"2"'
        adapter.fhir_processed()
        assert fhir_messages(adapter)[-1]["control_id"] == "Appointment/a1/_history/2"
        assert fhir_messages(adapter)[-1]["status"] == "processed"
        items = notifications(officer)
        assert not [i for i in items if i["kind"] == "reminder" and i["status"] == "scheduled"]
        assert any("deleted" in (i["reason"] or "") for i in items if i["kind"] == "reminder")
        assert [i["kind"] for i in items].count("cancellation_notice") == 1

        assert ehr.get("/fhir/R4/Appointment/a1").status_code == 410
        assert ehr.get("/fhir/R4/Appointment/a1/_history/2").status_code == 410
        assert ehr.get("/fhir/R4/Appointment/a1/_history/1").status_code == 200
        again = ehr.delete("/fhir/R4/Appointment/a1")  # idempotent, stores nothing
        assert again.status_code == 200 and ehr.delete("/fhir/R4/Appointment/never").status_code == 200
        assert len(fhir_messages(adapter)) == 3

        back = ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", start), headers=FHIR)
        assert back.status_code == 201 and back.headers["etag"] == 'W/"3"'
        adapter.fhir_processed()
        assert [i["status"] for i in notifications(officer) if i["kind"] == "reminder"].count("scheduled") == 2


def test_an_appointment_deleted_on_a_polled_server_calls_off_its_reminders_as_a_pushed_delete_does(tmp_path):
    """Polling searches by ``_lastUpdated``, and a search never returns a deleted
    resource: the adapter never learned of the deletion and the reminders went out.
    The type's ``_history`` lists it; the deletion is applied as a pushed DELETE is."""
    import asyncio

    from channels.fakes import start_fake
    from fhir.upstream import poll_once
    from tests.fhir.fake_upstream import FakeUpstream

    fake = FakeUpstream(url="")
    base, stop = start_fake(fake.app())
    fake.url = f"{base}/fhir"
    try:
        with running_adapter(settings_for(tmp_path)) as adapter:
            officer = adapter.client("officer")

            def poll():
                return asyncio.run(poll_once(fake.url, sessions=adapter.container.sessions,
                                             service=adapter.container.fhir.service))

            now = datetime.now(UTC).replace(microsecond=0)
            start = now + timedelta(days=3)
            fake.put(patient("p1"), 1, now.isoformat())
            fake.put(appointment("a1", "p1", start), 1, now.isoformat())
            assert poll().stored == 1
            adapter.fhir_processed()
            assert [i["status"] for i in notifications(officer) if i["kind"] == "reminder"] == ["scheduled"] * 2

            fake.delete("Appointment/a1", 2, at=(now + timedelta(seconds=5)).isoformat())
            result = poll()
            adapter.fhir_processed()
            items = notifications(officer)
            assert not [i for i in items if i["kind"] == "reminder" and i["status"] == "scheduled"]
            assert (result.deleted, result.failed) == (1, False)
            assert fhir_messages(adapter)[-1]["control_id"] == "Appointment/a1/_history/2"
            assert all("deleted" in i["reason"] for i in items if i["kind"] == "reminder")
            assert [i["kind"] for i in items].count("cancellation_notice") == 1
            audit = officer.get("/api/audit", params={"limit": 1000}).json()["items"]
            withdrawn = [e["reason"] for e in audit if e["action"] == "cancelled"]
            cancelled = [i for i in items if i["status"] == "cancelled"]
            assert len(cancelled) >= 2 and withdrawn == ["appointment deleted"] * len(cancelled)
    finally:
        stop()


def test_an_appointment_deleted_in_a_subscription_gap_calls_off_its_reminders_without_events(tmp_path):
    """A server without ``$events`` has missed notifications recovered by a ``_lastUpdated``
    search, which never returns a deleted resource: an appointment deleted during the gap
    kept its reminders, and they went out. The type's ``_history`` lists the deletion."""
    import asyncio

    from channels.fakes import start_fake
    from fhir.upstream import subscribe
    from tests.fhir.fake_upstream import FakeUpstream

    fake = FakeUpstream(url="", events_supported=False)
    base, stop = start_fake(fake.app())
    fake.url = f"{base}/fhir"
    try:
        with running_adapter(settings_for(tmp_path)) as adapter:
            ehr, officer = adapter.client("ehr"), adapter.client("officer")
            [created, _] = asyncio.run(subscribe(fake.url, endpoint=adapter.base_url + "/fhir/R4/$subscription-hook",
                                                 sessions=adapter.container.sessions,
                                                 service=adapter.container.fhir.service))
            sid = created.url.rsplit("/", 1)[-1]

            def notify(number: int) -> None:
                note = fake.notification(sid, "event-notification", [number], full=True)
                response = ehr.post("/fhir/R4/$subscription-hook", json=note, headers=FHIR)
                assert response.status_code == 200, response.text
                adapter.fhir_processed()

            now = datetime.now(UTC).replace(microsecond=0)
            start = now + timedelta(days=3)
            fake.put(patient("p1"), 1, now.isoformat())
            fake.put(appointment("a1", "p1", start), 1, now.isoformat())
            notify(fake.record_event("Appointment/a1"))
            assert [i["status"] for i in notifications(officer) if i["kind"] == "reminder"] == ["scheduled"] * 2

            fake.delete("Appointment/a1", 2, at=(now + timedelta(seconds=5)).isoformat())  # its event is missed
            fake.put(appointment("a2", "p1", start + timedelta(days=1)), 1, (now + timedelta(seconds=6)).isoformat())
            notify(fake.record_event("Appointment/a2"))
            items = notifications(officer)
            withdrawn = [i for i in items if i["kind"] == "reminder" and i["subject"] == "Appointment/a1"]
            assert [i["status"] for i in withdrawn] == ["cancelled"] * 2
            assert all("deleted" in i["reason"] for i in withdrawn)
            assert [i["status"] for i in items if i["kind"] == "reminder" and i["subject"] == "Appointment/a2"] \
                == ["scheduled"] * 2
            assert ehr.get("/fhir/R4/Appointment/a1").status_code == 410
    finally:
        stop()


def test_an_ehr_sending_an_erased_patient_again_is_answered_and_the_patient_starts_afresh(tmp_path):
    """After an erasure the EHR still has the patient, and sends them again at the next
    change. That PUT used to answer 500: the new first version's id took the kept queue
    row of the erased one (``Patient/p1/_history/1``)."""
    from tests.core.test_end_to_end import wait_for

    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr = adapter.client("ehr")
        start = datetime.now(UTC) + timedelta(days=3)
        assert ehr.put("/fhir/R4/Patient/p1", json=patient("p1"), headers=FHIR).status_code == 201
        assert ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", start), headers=FHIR).status_code == 201
        wait_for(lambda: len(fhir_messages(adapter)) == 2 and all(m["status"] == "processed" for m in fhir_messages(adapter)))
        with transaction(adapter.container.sessions) as session:
            internal = find_patient_id(session, adapter.container, identifier="p1")
        assert adapter.client("admin").delete(f"/api/patients/{internal}").status_code == 200

        again = ehr.put("/fhir/R4/Patient/p1", json=patient("p1"), headers=FHIR)
        assert again.status_code == 201, again.text
        booked = ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", start), headers=FHIR)
        assert booked.status_code == 201, booked.text
        wait_for(lambda: all(m["status"] == "processed" for m in fhir_messages(adapter)))
        assert kinds(adapter).count("booking_confirmation") == 1  # the erased one's went with them


def test_fhir_versions_accepted_are_counted_in_the_messages_received_metric(tmp_path):
    """``adapter_messages_received_total`` has a ``source`` label, but counted HL7 only:
    an EHR posting FHIR showed as receiving nothing. A write refused counts nothing."""
    from adapter.metrics import REGISTRY

    def received() -> float:
        return REGISTRY.get_sample_value("adapter_messages_received_total", {"source": "fhir", "outcome": "accepted"}) or 0

    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr = adapter.client("ehr")
        before = received()
        assert ehr.put("/fhir/R4/Patient/p1", json=patient("p1"), headers=FHIR).status_code == 201
        assert ehr.put("/fhir/R4/Patient/p2", json={"resourceType": "Patient", "gender": "x"}, headers=FHIR).status_code >= 400
        assert received() - before == 1


def _patient_sent_again(ehr, how: str, body: dict):
    """``body`` (Patient/p1, identifier urn:demo:mrn|p1) sent to the adapter ``how``."""
    if how == "PUT":
        return ehr.put("/fhir/R4/Patient/p1", json=body, headers=FHIR)
    if how == "transaction Bundle":
        return ehr.post("/fhir/R4", headers=FHIR, json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": body, "request": {"method": "PUT", "url": "Patient/p1"}}]})
    if how == "conditional PUT":
        return ehr.put("/fhir/R4/Patient", params={"identifier": "urn:demo:mrn|p1"}, json=body, headers=FHIR)
    return ehr.post("/fhir/R4/Patient", json={k: v for k, v in body.items() if k != "id"}, headers=FHIR)


@pytest.mark.parametrize("how, reminder_in", [
    ("PUT", "it"), ("transaction Bundle", "it"), ("conditional PUT", "it"),
    ("create", "en"),  # another Patient resource naming the same person: it replaces nothing
])
def test_a_patient_updated_without_communication_gets_pending_reminders_in_the_default_language(tmp_path, how, reminder_in):
    """An update replaces the whole resource (FHIR R4 §3.1.0.4): a Patient sent without the
    ``communication`` its previous version had no longer states a language, and the patient's
    next messages go out in the clinic's default (settings.default_language, "it"). The
    language was kept, and the reminder went out in English."""
    from adapter.clock import FrozenClock
    from tests.core.test_end_to_end import wait_for
    from tests.core.test_hl7_flows import templates_used

    now = datetime.now(UTC).replace(microsecond=0)
    clock = FrozenClock(now)
    with running_adapter(settings_for(tmp_path), clock=clock) as adapter:
        ehr = adapter.client("ehr")
        start = now + timedelta(days=3)
        assert ehr.put("/fhir/R4/Patient/p1", json=patient("p1", language="en"), headers=FHIR).status_code == 201
        assert ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", start), headers=FHIR).status_code == 201
        wait_for(lambda: templates_used(adapter, "booking_confirmation") == ["en/booking_confirmation"])

        without = {k: v for k, v in patient("p1", language="en").items() if k != "communication"}
        sent = _patient_sent_again(ehr, how, without)
        assert sent.status_code in (200, 201), sent.text
        adapter.fhir_processed()
        with transaction(adapter.container.sessions) as session:
            assert session.scalar(select(Patient.language)) == ("" if reminder_in == "it" else "en")
        clock.set(start - timedelta(hours=24))
        assert wait_for(lambda: templates_used(adapter, "reminder")) == [f"{reminder_in}/reminder"]


def test_a_patient_whose_name_alone_changed_is_greeted_by_the_new_name_in_pending_reminders(tmp_path):
    """A Patient update that changes the name only (a marriage, a corrected spelling) made
    no event: the reminder already scheduled still greeted the patient by the old name."""
    from adapter.clock import FrozenClock
    from tests.core.test_end_to_end import wait_for
    from tests.core.test_hl7_flows import outbox_bodies

    now = datetime.now(UTC).replace(microsecond=0)
    clock = FrozenClock(now)
    with running_adapter(settings_for(tmp_path), clock=clock) as adapter:
        ehr = adapter.client("ehr")
        start = now + timedelta(days=3)
        assert ehr.put("/fhir/R4/Patient/p1", json=patient("p1"), headers=FHIR).status_code == 201
        assert ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", start), headers=FHIR).status_code == 201
        wait_for(lambda: len(outbox_bodies(adapter)) == 1)
        assert "Nicolò" in outbox_bodies(adapter)[0]

        renamed = patient("p1")
        renamed["name"] = [{"use": "official", "family": "Bertè", "given": ["Noè"]}]
        assert ehr.put("/fhir/R4/Patient/p1", json=renamed, headers=FHIR).status_code == 200
        adapter.fhir_processed()
        clock.set(start - timedelta(hours=24))
        reminder = wait_for(lambda: outbox_bodies(adapter)[1:])[0]
    assert "Noè" in reminder and "Nicolò" not in reminder
