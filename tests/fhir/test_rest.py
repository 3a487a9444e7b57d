"""The REST facade through real HTTP: every interaction and every error answer."""

from __future__ import annotations

import json

from fhir.settings import FhirSettings
from tests.fhir.conftest import sample


def create_patient(adapter, **changes):
    response = adapter.post("/Patient", {**sample("patient.json"), **changes})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def booked(patient_id, **changes):
    return {**sample("appointment.json", PATIENT_ID=patient_id), **changes}


def issue(response):
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def test_create_answers_201_with_location_etag_and_server_assigned_version(adapter):
    response = adapter.post("/Patient", {**sample("patient.json"), "id": "ignored"})
    assert response.status_code == 201
    body = response.json()
    assert body["id"] != "ignored"
    assert body["meta"]["versionId"] == "1"
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"] == f"{adapter.base}/Patient/{body['id']}/_history/1"
    assert "last-modified" in response.headers


def test_read_returns_the_current_version_and_vread_any_earlier_one(adapter):
    pid = create_patient(adapter)
    changed = {**sample("patient.json"), "id": pid, "gender": "other"}
    assert adapter.put(f"/Patient/{pid}", changed).status_code == 200
    current = adapter.get(f"/Patient/{pid}")
    assert current.status_code == 200
    assert current.json()["gender"] == "other" and current.headers["etag"] == 'W/"2"'
    first = adapter.get(f"/Patient/{pid}/_history/1")
    assert first.status_code == 200 and first.json()["gender"] == "female"
    assert first.json()["meta"]["versionId"] == "1"


def test_reading_an_unknown_resource_or_version_is_a_404_operation_outcome(adapter):
    assert issue(adapter.get("/Patient/nobody"))["code"] == "not-found"
    pid = create_patient(adapter)
    response = adapter.get(f"/Patient/{pid}/_history/9")
    assert response.status_code == 404 and issue(response)["code"] == "not-found"
    beyond = adapter.get(f"/Patient/{pid}/_history/{2**80}")  # no 64-bit version id: was a 500
    assert beyond.status_code == 404 and issue(beyond)["code"] == "not-found"


def test_update_of_an_unknown_id_creates_it(adapter):
    response = adapter.put("/Patient/p-new", {**sample("patient.json"), "id": "p-new"})
    assert response.status_code == 201
    assert response.headers["location"].endswith("/Patient/p-new/_history/1")


def test_update_with_a_body_id_different_from_the_url_is_rejected(adapter):
    response = adapter.put("/Patient/a", {**sample("patient.json"), "id": "b"})
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Patient.id"]


def test_if_match_with_the_current_etag_updates_and_a_stale_one_gets_412(adapter):
    pid = create_patient(adapter)
    body = {**sample("patient.json"), "id": pid}
    ok = adapter.put(f"/Patient/{pid}", body, **{"If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.headers["etag"] == 'W/"2"'
    stale = adapter.put(f"/Patient/{pid}", body, **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412 and issue(stale)["code"] == "conflict"
    assert adapter.get(f"/Patient/{pid}").headers["etag"] == 'W/"2"'


def test_conditional_create_returns_the_existing_match_without_writing(adapter):
    condition = {"If-None-Exist": "identifier=https://hospital.example.org/mrn|MRN-0001"}
    first = adapter.post("/Patient", sample("patient.json"), **condition)
    again = adapter.post("/Patient", sample("patient.json"), **condition)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["etag"] == 'W/"1"'


def test_conditional_create_matching_several_resources_is_a_412(adapter):
    create_patient(adapter)
    create_patient(adapter)
    response = adapter.post("/Patient", sample("patient.json"),
                            **{"If-None-Exist": "identifier=MRN-0001"})
    assert response.status_code == 412


def test_conditional_create_on_another_parameter_is_not_supported(adapter):
    response = adapter.post("/Patient", sample("patient.json"),
                            **{"If-None-Exist": "family=Rossi"})
    assert response.status_code == 400 and issue(response)["code"] == "not-supported"


def test_conditional_update_creates_when_nothing_matches_then_updates_the_match(adapter):
    query = "/Patient?identifier=https://hospital.example.org/mrn|MRN-0001"
    created = adapter.put(query, sample("patient.json"))
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = adapter.put(query, {**sample("patient.json"), "gender": "male"})
    assert updated.status_code == 200
    assert updated.json()["id"] == pid and updated.json()["meta"]["versionId"] == "2"


def test_conditional_update_without_a_search_is_rejected(adapter):
    response = adapter.put("/Patient", sample("patient.json"))
    assert response.status_code == 400


def test_application_json_is_accepted_as_well_as_fhir_json(adapter):
    response = adapter.http.post(adapter.base + "/Patient", content=json.dumps(
        sample("patient.json")), headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 201


def test_xml_is_refused_with_415(adapter):
    response = adapter.http.post(adapter.base + "/Patient", content=b"<Patient/>",
                                 headers={"Content-Type": "application/fhir+xml"})
    assert response.status_code == 415 and issue(response)["code"] == "not-supported"
    assert "XML" in issue(response)["diagnostics"]


def test_a_body_over_the_configured_limit_is_refused_with_413(make_adapter):
    adapter = make_adapter(FhirSettings(max_body_bytes=200))
    response = adapter.post("/Patient", sample("patient.json"))
    assert response.status_code == 413 and issue(response)["code"] == "too-costly"


def test_malformed_json_is_a_400_structure_error(adapter):
    response = adapter.http.post(adapter.base + "/Patient", content=b"{not json",
                                 headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 400 and issue(response)["code"] == "structure"


def test_an_unknown_element_is_rejected_naming_the_element(adapter):
    body = sample("patient.json")
    body["telecom"][0]["favourite"] = True
    response = adapter.post("/Patient", body)
    assert response.status_code == 400
    found = issue(response)
    assert found["expression"] == ["Patient.telecom[0].favourite"]
    assert "Unknown element 'favourite'" in found["diagnostics"]


def test_a_bogus_appointment_status_is_rejected_at_appointment_status(adapter):
    pid = create_patient(adapter)
    response = adapter.post("/Appointment", booked(pid, status="bogus"))
    assert response.status_code == 400
    assert issue(response)["code"] == "code-invalid"
    assert issue(response)["expression"] == ["Appointment.status"]


def test_an_appointment_without_a_patient_participant_is_unprocessable(adapter):
    body = booked("x")
    body["participant"] = [body["participant"][1]]
    response = adapter.post("/Appointment", body)
    assert response.status_code == 422
    assert issue(response)["expression"] == ["Appointment.participant"]


def test_a_booked_appointment_without_a_start_is_unprocessable(adapter):
    body = booked(create_patient(adapter))
    del body["start"], body["end"]
    response = adapter.post("/Appointment", body)
    assert response.status_code == 422 and issue(response)["expression"] == ["Appointment.start"]


def test_a_resource_of_another_type_than_the_url_is_rejected(adapter):
    response = adapter.post("/Appointment", sample("patient.json"))
    assert response.status_code == 400 and issue(response)["expression"] == [
        "Appointment.resourceType"]


def test_an_unsupported_resource_type_answers_an_operation_outcome(adapter):
    response = adapter.get("/Observation/1")
    assert response.status_code == 404 and issue(response)["code"] == "not-supported"


def test_stored_content_is_encrypted_under_the_patients_subject(adapter):
    pid = create_patient(adapter)
    adapter.post("/Appointment", booked(pid))
    assert adapter.codec.subjects == [f"patient:{pid}", f"patient:{pid}"]
    with adapter.sessions() as session:
        from sqlalchemy import select

        from fhir.models import FhirResource
        for blob in session.scalars(select(FhirResource.content)):
            assert b"Rossi" not in blob and b"+39333" not in blob


def test_prefer_return_minimal_answers_without_a_body(adapter):
    response = adapter.post("/Patient", sample("patient.json"), Prefer="return=minimal")
    assert response.status_code == 201 and response.content == b""
    assert response.headers["location"]
