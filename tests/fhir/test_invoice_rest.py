"""Invoice through the FHIR facade (a clinic's billing system pushing payment state):
create, update, read, in a transaction Bundle, and what is refused."""

from __future__ import annotations

from tests.fhir.conftest import sample
from tests.fhir.test_rest import create_patient, issue


def invoice(patient_id: str, **changes):
    return {**sample("invoice.json", PATIENT_ID=patient_id), **changes}


def test_an_invoice_is_created_updated_and_read_like_the_other_types(adapter):
    pid = create_patient(adapter)
    created = adapter.post("/Invoice", invoice(pid))
    assert created.status_code == 201, created.text
    iid = created.json()["id"]
    assert created.headers["location"].endswith(f"/Invoice/{iid}/_history/1")
    paid = adapter.put(f"/Invoice/{iid}", invoice(pid, id=iid, status="balanced"))
    assert paid.status_code == 200 and paid.headers["etag"] == 'W/"2"'
    current = adapter.get(f"/Invoice/{iid}")
    assert current.status_code == 200 and current.json()["status"] == "balanced"
    assert adapter.get(f"/Invoice/{iid}/_history/1").json()["status"] == "issued"
    assert adapter.codec.subjects[-1] == f"patient:{pid}"  # sealed under the patient's key
    assert adapter.kinds() == ["PatientUpdated", "InvoiceIssued", "InvoiceSettled"]
    assert adapter.events[1].invoice.notice_code == "301000000000012345"  # the configured system's


def test_an_invoice_in_a_transaction_bundle_names_the_patient_created_with_it(adapter):
    bundle = sample("transaction-patient-appointment.json")
    patient_entry = bundle["entry"][0]
    bundle["entry"] = [patient_entry, {
        "fullUrl": "urn:uuid:0c3a6c5e-9f1e-4d53-9a55-2b8d7a1f0003",
        "resource": invoice("x", subject={"reference": patient_entry["fullUrl"]}),
        "request": {"method": "POST", "url": "Invoice"},
    }]
    response = adapter.post("", bundle)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["201", "201"]
    pid = entries[0]["response"]["location"].split("/Patient/")[1].split("/")[0]
    stored = adapter.http.get(entries[1]["response"]["location"])
    assert stored.json()["subject"]["reference"] == f"Patient/{pid}"


def test_a_bogus_invoice_status_is_rejected_at_invoice_status(adapter):
    pid = create_patient(adapter)
    response = adapter.post("/Invoice", invoice(pid, status="paid"))
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Invoice.status"]


def test_an_issued_invoice_without_a_total_is_unprocessable(adapter):
    pid = create_patient(adapter)
    body = invoice(pid)
    del body["totalGross"], body["totalNet"]
    response = adapter.post("/Invoice", body)
    assert response.status_code == 422 and issue(response)["code"] == "business-rule"
    assert adapter.post("/Invoice", {**body, "status": "draft"}).status_code == 201
    undated = invoice(pid)
    del undated["date"]
    response = adapter.post("/Invoice", undated)
    assert response.status_code == 422 and issue(response)["expression"] == ["Invoice.date"]


def test_an_invoice_for_no_patient_is_unprocessable(adapter):
    response = adapter.post("/Invoice", invoice("x", subject={"reference": "Group/g1"}))
    assert response.status_code == 422 and issue(response)["expression"] == ["Invoice.subject"]


def test_the_capability_statement_lists_invoice(adapter):
    types = [r["type"] for r in adapter.get("/metadata").json()["rest"][0]["resource"]]
    assert "Invoice" in types
