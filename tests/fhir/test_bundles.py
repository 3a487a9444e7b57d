"""Transaction and batch Bundles at POST /."""

from __future__ import annotations

import uuid

import pytest

from tests.fhir.conftest import Adapter, sample
from tests.fhir.test_rest import booked, create_patient, issue


@pytest.fixture(params=["validated in the request's thread", "validated in a helper process"])
def adapter(request, make_adapter) -> Adapter:
    """Every Bundle test runs twice: its resources validated where the request
    runs, and in a helper process (as ``serve`` does on more than one core)."""
    made = make_adapter()
    if request.param.endswith("helper process"):
        made.service.validator = request.getfixturevalue("helper_pool")
    return made


def test_a_transaction_with_patient_and_appointment_by_urn_uuid_creates_both_and_publishes(
        adapter):
    response = adapter.post("/", sample("transaction-patient-appointment.json"))
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "transaction-response"
    patient_entry, appointment_entry = bundle["entry"]
    assert patient_entry["response"]["status"] == "201 Created"
    pid = patient_entry["resource"]["id"]
    appointment = appointment_entry["resource"]
    assert appointment["participant"][0]["actor"]["reference"] == f"Patient/{pid}"
    assert adapter.http.get(appointment_entry["response"]["location"]).status_code == 200
    assert adapter.kinds() == ["PatientUpdated", "AppointmentBooked"]
    assert adapter.events[1].patient.telecom[0].value == "+393339876543"
    assert adapter.events[1].patient.language == "en"
    # The new patient's key is made before anything is sealed for them, with the Bundle's others.
    assert adapter.codec.new == [f"patient:{pid}"]
    assert adapter.codec.subjects[0] == f"patient:{pid}"


def test_a_transaction_resolves_the_patient_even_when_the_appointment_comes_first(adapter):
    bundle = sample("transaction-patient-appointment.json")
    bundle["entry"].reverse()
    response = adapter.post("/", bundle)
    assert response.status_code == 200
    assert response.json()["entry"][0]["resource"]["resourceType"] == "Appointment"
    assert adapter.events[-1].patient.telecom[0].value == "+393339876543"


def test_one_invalid_entry_rolls_back_the_whole_transaction(adapter):
    bundle = sample("transaction-patient-appointment.json")
    bundle["entry"][1]["resource"]["status"] = "bogus"
    response = adapter.post("/", bundle)
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Bundle.entry[1].resource.status"]
    assert adapter.events == []
    from sqlalchemy import func, select

    from fhir.models import FhirResource
    with adapter.sessions() as session:
        assert session.scalar(select(func.count()).select_from(FhirResource)) == 0


def test_a_publish_failure_in_a_transaction_rolls_back_every_entry(adapter):
    adapter.fail_publish.append(ValueError("refused"))
    response = adapter.post("/", sample("transaction-patient-appointment.json"))
    assert response.status_code == 422
    adapter.fail_publish.clear()
    assert adapter.events == []


def test_a_transaction_can_update_by_put_and_read_by_get(adapter):
    pid = create_patient(adapter)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**booked(pid), "id": "a9"},
         "request": {"method": "PUT", "url": "Appointment/a9"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
    ]}
    response = adapter.post("/", bundle)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert entries[0]["response"]["status"] == "201 Created"
    assert entries[0]["response"]["etag"] == 'W/"1"'
    assert entries[1]["resource"]["id"] == pid


def test_a_conditional_create_sees_a_patient_created_earlier_in_the_same_transaction(adapter):
    patient = sample("patient.json")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7f0c5a0e-0000-4000-8000-000000000001", "resource": patient,
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient, "request": {
            "method": "POST", "url": "Patient",
            "ifNoneExist": "identifier=https://hospital.example.org/mrn|MRN-0001"}},
    ]}
    response = adapter.post("/", bundle)
    assert response.status_code == 200, response.text
    created, matched = response.json()["entry"]
    assert created["response"]["status"] == "201 Created"
    assert matched["response"]["status"] == "200 OK"
    assert matched["resource"]["id"] == created["resource"]["id"]


def _conditional_patient_then_appointment() -> dict:
    """A Patient POSTed with ifNoneExist under a urn:uuid, and an Appointment for it."""
    urn = "urn:uuid:7f0c5a0e-0000-4000-8000-0000000000c1"
    appointment = booked("placeholder")
    appointment["participant"][0]["actor"]["reference"] = urn
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": urn, "resource": sample("patient.json"), "request": {
            "method": "POST", "url": "Patient",
            "ifNoneExist": "identifier=https://hospital.example.org/mrn|MRN-0001"}},
        {"resource": appointment, "request": {"method": "POST", "url": "Appointment"}},
    ]}


def test_a_urn_uuid_of_a_conditional_create_names_the_existing_match(adapter):
    existing = create_patient(adapter)
    response = adapter.post("/", _conditional_patient_then_appointment())
    assert response.status_code == 200, response.text
    patient_entry, appointment_entry = response.json()["entry"]
    assert patient_entry["response"]["status"] == "200 OK"
    assert patient_entry["resource"]["id"] == existing
    assert appointment_entry["resource"]["participant"][0]["actor"]["reference"] == f"Patient/{existing}"


def test_a_urn_uuid_of_a_conditional_create_without_a_match_names_the_new_resource(adapter):
    response = adapter.post("/", _conditional_patient_then_appointment())
    assert response.status_code == 200, response.text
    patient_entry, appointment_entry = response.json()["entry"]
    assert patient_entry["response"]["status"] == "201 Created"
    created = patient_entry["resource"]["id"]
    assert appointment_entry["resource"]["participant"][0]["actor"]["reference"] == f"Patient/{created}"
    assert adapter.http.get(patient_entry["response"]["location"]).status_code == 200


def test_an_entry_failing_after_others_were_written_stores_none_of_them(adapter):
    from sqlalchemy import func, select

    from fhir.models import FhirIdentifier, FhirResource
    pid = create_patient(adapter)
    bundle = sample("transaction-patient-appointment.json")
    bundle["entry"].append({"resource": {**booked(pid), "id": "a1"},
                            "request": {"method": "PUT", "url": "Appointment/a1",
                                        "ifMatch": 'W/"3"'}})
    response = adapter.post("/", bundle)
    assert response.status_code == 412, response.text
    assert issue(response)["expression"] == ["Bundle.entry[2]"]
    with adapter.sessions() as session:
        assert session.scalar(select(func.count()).select_from(FhirResource)) == 1
        assert session.scalar(select(func.count()).select_from(FhirIdentifier)) == 4
    assert adapter.kinds() == ["PatientUpdated"]


def test_a_batch_answers_each_entry_and_keeps_the_good_ones(adapter):
    pid = create_patient(adapter)
    bad = booked(pid, status="bogus")
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": booked(pid), "request": {"method": "POST", "url": "Appointment"}},
        {"resource": bad, "request": {"method": "POST", "url": "Appointment"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
    ]}
    response = adapter.post("/", bundle)
    assert response.status_code == 200
    entries = response.json()["entry"]
    assert response.json()["type"] == "batch-response"
    assert entries[0]["response"]["status"] == "201 Created"
    assert entries[1]["response"]["status"] == "400"
    outcome = entries[1]["response"]["outcome"]["issue"][0]
    assert outcome["expression"] == ["Bundle.entry[1].resource.status"]
    assert entries[2]["response"]["status"] == "404"
    assert adapter.http.get(entries[0]["response"]["location"]).status_code == 200


def test_a_bundle_of_another_type_or_with_patch_or_a_conditional_delete_is_refused(adapter):
    response = adapter.post("/", {"resourceType": "Bundle", "type": "collection"})
    assert response.status_code == 400 and issue(response)["expression"] == ["Bundle.type"]
    response = adapter.post("/", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "PATCH", "url": "Patient/1"}}]})
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Bundle.entry[0].request.method"]
    response = adapter.post("/", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": "Patient?identifier=s|1"}}]})
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Bundle.entry[0].request.url"]


def test_a_transaction_deletes_first_and_calls_off_the_deleted_appointment(adapter):
    """R4 §3.1.0.11.2: DELETE entries, processed before the others. A transaction that
    deleted an Appointment was refused (400), and its reminders kept going out."""
    pid = create_patient(adapter)
    assert adapter.put("/Appointment/old", {**booked(pid), "id": "old"}).status_code == 201
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**booked(pid), "id": "new"}, "request": {"method": "PUT", "url": "Appointment/new"}},
        {"request": {"method": "DELETE", "url": "Appointment/old"}},
        {"request": {"method": "DELETE", "url": "Appointment/unknown"}},
    ]}
    adapter.events.clear()
    response = adapter.post("/", bundle)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert entries[0]["response"]["status"] == "201 Created"
    assert entries[1]["response"]["status"] == "200 OK" and entries[1]["response"]["etag"] == 'W/"2"'
    assert entries[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[2]["response"]["status"] == "200 OK" and "etag" not in entries[2]["response"]
    assert [(type(e).__name__, e.appointment.ref) for e in adapter.events] == [
        ("AppointmentCancelled", "Appointment/old"), ("AppointmentBooked", "Appointment/new")]
    assert adapter.events[0].reason == "deleted"
    assert adapter.get("/Appointment/old").status_code == 410


def test_a_transaction_that_deletes_and_writes_one_resource_is_refused_and_a_batch_deletes_per_entry(adapter):
    pid = create_patient(adapter)
    assert adapter.put("/Appointment/a1", {**booked(pid), "id": "a1"}).status_code == 201
    both = [{"request": {"method": "DELETE", "url": "Appointment/a1"}},
            {"resource": {**booked(pid), "id": "a1"}, "request": {"method": "PUT", "url": "Appointment/a1"}}]
    response = adapter.post("/", {"resourceType": "Bundle", "type": "transaction", "entry": both})
    assert response.status_code == 400 and issue(response)["expression"] == ["Bundle.entry[1].request.url"]
    assert adapter.get("/Appointment/a1").status_code == 200
    response = adapter.post("/", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": "Appointment/a1", "ifMatch": 'W/"9"'}},
        {"request": {"method": "DELETE", "url": "Patient/nobody"}}]}, Prefer="return=minimal")
    assert [e["response"]["status"] for e in response.json()["entry"]] == ["412", "204 No Content"]


def test_prefer_return_minimal_answers_written_entries_without_their_resource(adapter):
    pid = create_patient(adapter)
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": booked(pid), "request": {"method": "POST", "url": "Appointment"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
    ]}
    response = adapter.post("/", bundle, Prefer="return=minimal")
    assert response.status_code == 200, response.text
    written, read = response.json()["entry"]
    assert "resource" not in written
    assert written["response"]["status"] == "201 Created"
    assert written["response"]["etag"] == 'W/"1"'
    assert adapter.http.get(written["response"]["location"]).status_code == 200
    assert read["resource"]["id"] == pid  # a read's answer is its resource

    transaction = sample("transaction-patient-appointment.json")
    entries = adapter.post("/", transaction, Prefer="return=minimal").json()["entry"]
    assert [("resource" in e, e["response"]["status"]) for e in entries] == [(False, "201 Created")] * 2


def test_the_ids_the_server_assigns_are_time_ordered_uuids_in_the_order_of_the_entries(adapter):
    """Version 7 UUIDs (RFC 9562): a Bundle's new rows go to the end of the indexes
    keyed by id, not to as many random pages."""
    entries = [{"fullUrl": f"urn:uuid:0c7f3a1e-0000-4000-8000-{i:012d}",
                "resource": {"resourceType": "Patient", "name": [{"family": f"D'Alò {i}"}]},
                "request": {"method": "POST", "url": "Patient"}} for i in range(20)]
    first = adapter.post("/", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    later = adapter.post("/", {"resourceType": "Bundle", "type": "transaction", "entry": entries[:1]})
    assert first.status_code == later.status_code == 200, first.text
    ids = [e["resource"]["id"] for e in first.json()["entry"] + later.json()["entry"]]
    assert [uuid.UUID(i).version for i in ids] == [7] * 21
    assert ids == sorted(ids) and len(set(ids)) == 21
    created = adapter.post("/Patient", {"resourceType": "Patient", "name": [{"family": "Bertè"}]})
    assert created.json()["id"] > ids[-1]


def test_a_transaction_that_writes_one_resource_twice_is_refused_whole(adapter):
    """R4 §3.1.0.11.2: such a transaction SHALL fail. Both entries were applied, the
    second over the first, and a patient could be told of an appointment that had
    become another's in the same Bundle."""
    pid = create_patient(adapter)
    appointment = {**booked(pid), "id": "twice"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": appointment, "request": {"method": "PUT", "url": "Appointment/twice"}},
        {"resource": {**appointment, "status": "cancelled"}, "request": {"method": "PUT", "url": "Appointment/twice"}},
    ]}
    adapter.events.clear()
    response = adapter.post("/", bundle)
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Bundle.entry[1].request.url"]
    assert adapter.events == []
    assert adapter.get("/Appointment/twice").status_code == 404


@pytest.mark.parametrize("entries, where", [
    (["x"], "Bundle.entry[0]"),
    ({"a": 1}, "Bundle.entry"),
    ([{"request": "x"}], "Bundle.entry[0]"),
    ([{"request": {"method": "PUT", "url": "Patient/p", "ifMatch": 5}, "resource": {"resourceType": "Patient"}}],
     "Bundle.entry[0].request.ifMatch"),
])
def test_a_malformed_bundle_gets_a_400_operation_outcome_not_a_500(adapter, entries, where):
    response = adapter.post("/", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert response.status_code == 400, response.text
    assert issue(response)["expression"] == [where]


MRN = "identifier=https://hospital.example.org/mrn|MRN-0001"


def _conditional_update_then_appointment() -> dict:
    """An interface engine's booking: the Patient upserted by MRN (a conditional update)
    under a urn:uuid, and an Appointment for it."""
    urn = "urn:uuid:7f0c5a0e-0000-4000-8000-0000000000d1"
    appointment = booked("placeholder")
    appointment["participant"][0]["actor"]["reference"] = urn
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": urn, "resource": sample("patient.json"), "request": {"method": "PUT", "url": f"Patient?{MRN}"}},
        {"resource": appointment, "request": {"method": "POST", "url": "Appointment"}},
    ]}


@pytest.mark.parametrize("known", [True, False], ids=["patient known", "patient new"])
def test_a_urn_uuid_of_a_conditional_update_names_the_patient_it_updates_or_creates(adapter, known):
    existing = create_patient(adapter) if known else None
    response = adapter.post("/", _conditional_update_then_appointment())
    assert response.status_code == 200, response.text
    patient_entry, appointment_entry = response.json()["entry"]
    pid = patient_entry["resource"]["id"]
    assert pid == existing if known else patient_entry["response"]["status"] == "201 Created"
    assert appointment_entry["resource"]["participant"][0]["actor"]["reference"] == f"Patient/{pid}"
    assert adapter.kinds()[-1] == "AppointmentBooked"
    assert adapter.events[-1].patient.telecom[0].value == "+393331234567"


def test_a_conditional_reference_in_a_transaction_is_resolved_by_its_search(adapter):
    """R4 §3.1.0.11.2: a reference ``Patient?identifier=...`` names the one match."""
    pid = create_patient(adapter)
    appointment = booked("placeholder")
    appointment["participant"][0]["actor"]["reference"] = f"Patient?{MRN}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": appointment, "request": {"method": "POST", "url": "Appointment"}}]}
    response = adapter.post("/", bundle)
    assert response.status_code == 200, response.text
    assert response.json()["entry"][0]["resource"]["participant"][0]["actor"]["reference"] == f"Patient/{pid}"
    assert adapter.events[-1].patient.telecom[0].value == "+393331234567"

    appointment["participant"][0]["actor"]["reference"] = "Patient?identifier=https://hospital.example.org/mrn|NONE"
    refused = adapter.post("/", bundle)
    assert refused.status_code == 404
    assert issue(refused)["expression"] == ["Bundle.entry[0].resource.participant[0].actor.reference"]
