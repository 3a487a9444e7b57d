"""Events published by REST writes: transitions, ordering, duplicates, publish failures."""

from __future__ import annotations

from datetime import UTC, datetime

from adapter.events import Identifier
from fhir.settings import FhirSettings
from tests.fhir.conftest import sample
from tests.fhir.test_rest import booked, create_patient, issue


def put_appointment(adapter, aid, pid, **changes):
    response = adapter.put(f"/Appointment/{aid}", {**booked(pid, **changes), "id": aid})
    assert response.status_code in (200, 201), response.text
    return response


def test_a_booked_appointment_publishes_booked_with_the_stored_patients_details(adapter):
    pid = create_patient(adapter)
    adapter.events.clear()
    response = adapter.post("/Appointment", booked(pid))
    assert adapter.kinds() == ["AppointmentBooked"]
    event = adapter.events[0]
    assert event.patient.key == Identifier("fhir:Patient", pid)
    assert event.patient.telecom[0].value == "+393331234567"
    assert event.patient.language == "it"
    assert event.appointment.ref == f"Appointment/{response.json()['id']}"
    assert event.appointment.start == datetime(2030, 12, 1, 8, 30, tzinfo=UTC)
    assert event.appointment.location == "Ambulatorio 3"
    assert event.origin.source == "fhir"
    assert event.origin.message_ref.endswith("/_history/1")


def test_the_patient_key_is_the_identifier_the_settings_name(make_adapter):
    adapter = make_adapter(FhirSettings(patient_key_systems=("https://hospital.example.org/mrn",)))
    pid = create_patient(adapter)
    adapter.post("/Appointment", booked(pid))
    assert adapter.events[-1].patient.key.value == "MRN-0001"
    assert adapter.events[-1].patient.key.kind == "MR"


def test_moving_the_start_of_a_booked_appointment_publishes_rescheduled(adapter):
    pid = create_patient(adapter)
    put_appointment(adapter, "a1", pid)
    put_appointment(adapter, "a1", pid, start="2030-12-02T09:30:00+01:00",
                    end="2030-12-02T10:00:00+01:00")
    assert adapter.kinds()[-2:] == ["AppointmentBooked", "AppointmentRescheduled"]
    assert adapter.events[-1].previous_start == datetime(2030, 12, 1, 8, 30, tzinfo=UTC)


def test_resending_an_unchanged_appointment_publishes_nothing(adapter):
    pid = create_patient(adapter)
    put_appointment(adapter, "a1", pid)
    put_appointment(adapter, "a1", pid)
    assert adapter.kinds().count("AppointmentBooked") == 1
    assert len(adapter.kinds()) == 2  # PatientUpdated, AppointmentBooked


def test_cancelled_entered_in_error_noshow_and_fulfilled_each_publish_their_event(adapter):
    pid = create_patient(adapter)
    for aid, status, kind in [("c", "cancelled", "AppointmentCancelled"),
                              ("e", "entered-in-error", "AppointmentCancelled"),
                              ("n", "noshow", "AppointmentNoShow"),
                              ("f", "fulfilled", "AppointmentFulfilled")]:
        put_appointment(adapter, aid, pid)
        put_appointment(adapter, aid, pid, status=status)
        assert adapter.kinds()[-1] == kind
    cancels = [e for e in adapter.events if type(e).__name__ == "AppointmentCancelled"]
    assert [e.reason for e in cancels] == ["cancelled", "entered-in-error"]


def test_an_older_version_arriving_late_never_undoes_the_newer_one(adapter):
    pid = create_patient(adapter)
    newer = {"versionId": "5", "lastUpdated": "2030-11-20T10:00:00Z"}
    older = {"versionId": "4", "lastUpdated": "2030-11-20T09:00:00Z"}
    put_appointment(adapter, "a1", pid, status="cancelled", meta=newer)
    late = put_appointment(adapter, "a1", pid, status="booked", meta=older)
    assert late.json()["status"] == "cancelled"
    assert adapter.get("/Appointment/a1").json()["status"] == "cancelled"
    assert "AppointmentBooked" not in adapter.kinds()


def test_the_same_source_version_twice_is_processed_once(adapter):
    pid = create_patient(adapter)
    meta = {"versionId": "7", "lastUpdated": "2030-11-20T10:00:00Z"}
    first = put_appointment(adapter, "a1", pid, meta=meta)
    again = put_appointment(adapter, "a1", pid, status="cancelled", meta=meta)
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["etag"] == 'W/"1"'
    assert adapter.kinds().count("AppointmentBooked") == 1
    assert "AppointmentCancelled" not in adapter.kinds()


def test_report_final_publishes_ready_and_preliminary_nothing(adapter):
    pid = create_patient(adapter)
    report = {**sample("diagnostic-report.json", PATIENT_ID=pid), "id": "r1"}
    adapter.put("/DiagnosticReport/r1", report)
    assert adapter.kinds() == ["PatientUpdated"]
    adapter.put("/DiagnosticReport/r1", {**report, "status": "final"})
    assert adapter.kinds()[-1] == "ReportReady"
    assert adapter.events[-1].codes == ("http://loinc.org|58410-2",)
    assert adapter.events[-1].amended is False
    adapter.put("/DiagnosticReport/r1", {**report, "status": "amended"})
    assert adapter.kinds()[-1] == "ReportReady" and adapter.events[-1].amended is True
    adapter.put("/DiagnosticReport/r1", {**report, "status": "entered-in-error"})
    assert adapter.kinds()[-1] == "ReportWithdrawn"
    assert adapter.events[-1].report_ref == "DiagnosticReport/r1"


def test_the_amended_report_notice_can_be_switched_off(make_adapter):
    adapter = make_adapter(FhirSettings(announce_amended_reports=False))
    pid = create_patient(adapter)
    report = {**sample("diagnostic-report.json", PATIENT_ID=pid), "id": "r1", "status": "final"}
    adapter.put("/DiagnosticReport/r1", report)
    adapter.put("/DiagnosticReport/r1", {**report, "status": "corrected"})
    assert adapter.kinds() == ["PatientUpdated", "ReportReady"]


def test_patient_telecom_language_or_name_change_publishes_patient_updated_and_the_same_again_not(adapter):
    pid = create_patient(adapter)
    body = {**sample("patient.json"), "id": pid}
    adapter.put(f"/Patient/{pid}", body)
    assert adapter.kinds() == ["PatientUpdated"]  # the create; the same again changes nothing
    renamed = {**body, "name": [{"family": "Rossi", "given": ["Mara"]}]}
    adapter.put(f"/Patient/{pid}", renamed)  # the greeting uses the name
    assert adapter.kinds() == ["PatientUpdated"] * 2
    assert adapter.events[-1].patient.given_name == "Mara"
    adapter.put(f"/Patient/{pid}", {**renamed, "telecom": [{"system": "sms", "value": "+39333000"}]})
    assert adapter.kinds() == ["PatientUpdated"] * 3
    adapter.put(f"/Patient/{pid}", {**renamed, "telecom": [{"system": "sms", "value": "+39333000"}], "communication": [
        {"language": {"coding": [{"code": "en-GB"}]}}]})
    assert adapter.kinds() == ["PatientUpdated"] * 4
    assert adapter.events[-1].patient.language == "en"


def test_a_consent_publishes_consent_changed_with_flattened_provisions(adapter):
    pid = create_patient(adapter)
    adapter.events.clear()
    response = adapter.post("/Consent", sample("consent.json", PATIENT_ID=pid))
    assert response.status_code == 201, response.text
    event = adapter.events[-1]
    assert type(event).__name__ == "ConsentChanged" and event.active
    assert [(p.decision, p.purpose, p.channel) for p in event.provisions] == [
        ("deny", "*", "*"), ("permit", "reminder", "sms")]
    assert event.provisions[1].end == datetime(2031, 1, 1, tzinfo=UTC)


def test_a_consent_with_a_bogus_provision_type_is_rejected_at_that_provision(adapter):
    body = sample("consent.json", PATIENT_ID="p")
    body["provision"]["provision"][0]["type"] = "maybe"
    response = adapter.post("/Consent", body)
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Consent.provision.provision[0].type"]


def test_a_value_error_from_publish_rolls_back_the_write_and_answers_422(adapter):
    pid = create_patient(adapter)
    adapter.fail_publish.append(ValueError("no rule for this clinic"))
    response = adapter.put("/Appointment/a1", {**booked(pid), "id": "a1"})
    assert response.status_code == 422 and issue(response)["code"] == "processing"
    assert "no rule for this clinic" in issue(response)["diagnostics"]
    assert adapter.get("/Appointment/a1").status_code == 404


def test_any_other_publish_failure_rolls_back_and_answers_500(adapter):
    pid = create_patient(adapter)
    adapter.fail_publish.append(RuntimeError("broker down"))
    response = adapter.put("/Appointment/a1", {**booked(pid), "id": "a1"})
    assert response.status_code == 500 and issue(response)["code"] == "exception"
    assert "broker" not in response.text
    adapter.fail_publish.clear()
    assert adapter.get("/Appointment/a1").status_code == 404
    assert put_appointment(adapter, "a1", pid).status_code == 201


def participants(pid: str, patient_status: str) -> list[dict]:
    return [{"actor": {"reference": f"Patient/{pid}"}, "status": patient_status},
            {"actor": {"reference": "Location/amb-3", "display": "Ambulatorio 3"}, "status": "accepted"}]


def test_a_patient_who_declined_a_booked_appointment_is_not_told_of_it_and_a_decline_calls_off_what_was_planned(
        adapter):
    pid = create_patient(adapter)
    adapter.events.clear()
    put_appointment(adapter, "d1", pid, participant=participants(pid, "declined"))
    assert adapter.kinds() == []  # R4 ParticipationStatus declined: will not attend

    put_appointment(adapter, "d2", pid)
    put_appointment(adapter, "d2", pid, participant=participants(pid, "declined"))
    assert adapter.kinds() == ["AppointmentBooked", "AppointmentCancelled"]
    assert adapter.events[-1].reason == "declined"

    put_appointment(adapter, "d2", pid)  # the patient changed their mind
    assert adapter.kinds()[-1] == "AppointmentBooked"


def test_every_patient_of_an_appointment_is_told_of_it_each_under_their_own_details_and_declining_alone(adapter):
    first = create_patient(adapter)
    second = create_patient(adapter, telecom=[{"system": "phone", "use": "mobile", "value": "+393339999999"}],
                            identifier=[{"system": "https://hospital.example.org/mrn", "value": "MRN-0002"}])
    both = [{"actor": {"reference": f"Patient/{first}"}, "status": "accepted"},
            {"actor": {"reference": f"Patient/{second}"}, "status": "accepted"},
            {"actor": {"reference": "Location/amb-3", "display": "Ambulatorio 3"}, "status": "accepted"}]
    adapter.events.clear()
    put_appointment(adapter, "g1", first, participant=both)
    booked_events = [e for e in adapter.events if type(e).__name__ == "AppointmentBooked"]
    assert [e.patient.key.value for e in booked_events] == [first, second]
    assert booked_events[1].patient.telecom[0].value == "+393339999999"
    assert len({e.appointment.ref for e in booked_events}) == 2  # each patient's own notices

    adapter.events.clear()
    put_appointment(adapter, "g1", first, participant=[both[0], {**both[1], "status": "declined"}, both[2]])
    assert [(type(e).__name__, e.patient.key.value) for e in adapter.events] == [("AppointmentCancelled", second)]

    adapter.events.clear()
    put_appointment(adapter, "g1", first, participant=[both[0], {**both[1], "status": "declined"}, both[2]],
                    status="cancelled")
    assert [(type(e).__name__, e.patient.key.value) for e in adapter.events] == [("AppointmentCancelled", first)]


def test_a_patient_taken_off_a_group_appointment_has_what_was_planned_called_off_and_the_others_keep_theirs(adapter):
    first = create_patient(adapter)
    second = create_patient(adapter, identifier=[{"system": "https://hospital.example.org/mrn", "value": "MRN-0002"}])
    patients = [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"} for pid in (first, second)]
    put_appointment(adapter, "g2", first, participant=patients)
    adapter.events.clear()
    put_appointment(adapter, "g2", first, participant=patients[:1])
    assert [(type(e).__name__, e.reason, e.patient.key.value) for e in adapter.events] == [
        ("AppointmentCancelled", "removed", second)]

    put_appointment(adapter, "g2", first, participant=patients)
    adapter.events.clear()
    put_appointment(adapter, "g2", first, participant=patients[1:])  # the first leaves: the second is first now
    assert [(type(e).__name__, e.patient.key.value, e.appointment.ref) for e in adapter.events] == [
        ("AppointmentCancelled", second, f"Appointment/g2#Patient/{second}"),
        ("AppointmentRescheduled", second, "Appointment/g2")]  # the core books it for them, last


def delete(adapter, path, **headers):
    return adapter.http.delete(adapter.base + path, headers=headers)


def test_deleting_a_booked_appointment_calls_it_off_for_each_patient_as_entered_in_error_does(adapter):
    pid, other = create_patient(adapter), create_patient(adapter)
    group = booked(pid)
    group["participant"] = [*group["participant"], {"actor": {"reference": f"Patient/{other}"}, "status": "accepted"}]
    assert adapter.put("/Appointment/g1", {**group, "id": "g1"}).status_code == 201
    put_appointment(adapter, "c1", pid, status="cancelled")
    adapter.events.clear()
    answer = delete(adapter, "/Appointment/g1")
    assert answer.status_code == 200 and answer.headers["etag"] == 'W/"2"'
    assert answer.json()["issue"][0]["severity"] == "information"
    assert [(type(e).__name__, e.reason, e.appointment.ref) for e in adapter.events] == [
        ("AppointmentCancelled", "deleted", "Appointment/g1"),
        ("AppointmentCancelled", "deleted", f"Appointment/g1#Patient/{other}")]
    assert adapter.events[0].appointment.start is not None
    adapter.events.clear()
    assert delete(adapter, "/Appointment/c1").status_code == 200  # never announced: nothing to call off
    assert delete(adapter, "/Appointment/g1").status_code == 200  # deleted already: nothing again
    minimal = delete(adapter, "/Appointment/nobody", Prefer="return=minimal")
    assert minimal.status_code == 204 and adapter.events == []


def test_a_deleted_resource_reads_as_gone_keeps_its_history_and_an_update_brings_it_back(adapter):
    pid = create_patient(adapter)
    put_appointment(adapter, "a1", pid)
    assert delete(adapter, "/Appointment/a1", **{"If-Match": 'W/"5"'}).status_code == 412
    assert delete(adapter, "/Appointment/a1", **{"If-Match": 'W/"1"'}).status_code == 200
    gone = adapter.get("/Appointment/a1")
    assert gone.status_code == 410 and issue(gone)["code"] == "deleted"
    assert adapter.get("/Appointment/a1/_history/2").status_code == 410
    assert adapter.get("/Appointment/a1/_history/1").json()["status"] == "booked"
    adapter.events.clear()
    back = put_appointment(adapter, "a1", pid)
    assert back.status_code == 201 and back.headers["etag"] == 'W/"3"'
    assert adapter.kinds() == ["AppointmentBooked"]


def test_deleting_a_final_report_withdraws_it(adapter):
    pid = create_patient(adapter)
    report = {**sample("diagnostic-report.json", PATIENT_ID=pid), "id": "r1", "status": "final"}
    adapter.put("/DiagnosticReport/r1", report)
    assert adapter.kinds()[-1] == "ReportReady"
    assert delete(adapter, "/DiagnosticReport/r1").status_code == 200
    assert adapter.kinds()[-1] == "ReportWithdrawn" and adapter.events[-1].report_ref == "DiagnosticReport/r1"


def test_a_deleted_consent_stops_counting_and_a_deleted_patient_is_still_who_it_was(adapter):
    pid = create_patient(adapter, identifier=[{"system": "urn:mrn", "value": "M1"}])
    consent = adapter.post("/Consent", sample("consent.json", PATIENT_ID=pid)).json()["id"]
    adapter.events.clear()
    assert delete(adapter, f"/Patient/{pid}").status_code == 200
    assert adapter.events == []  # the person and their contacts stay
    assert adapter.post("/Patient", sample("patient.json"), **{"If-None-Exist": "identifier=urn:mrn|M1"}
                        ).status_code == 201  # no longer found by its identifier
    assert delete(adapter, f"/Consent/{consent}").status_code == 200
    event = adapter.events[-1]
    assert type(event).__name__ == "ConsentChanged" and not event.active and event.provisions == ()
    assert event.patient.given_name  # the deleted Patient's details
