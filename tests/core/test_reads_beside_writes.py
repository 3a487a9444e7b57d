"""Reads over HTTP (authentication, operator lists, health, FHIR read) do not
queue behind a write transaction: on SQLite they run in read transactions that
take no write lock (adapter.db.read_transaction)."""

from __future__ import annotations

import time

import httpx


from tests.harness import running_adapter, settings_for, write_lock_held

HOLD_S = 15.0


def test_reads_answer_while_a_long_write_transaction_holds_the_write_lock(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        created = adapter.client("ehr").post(
            "/fhir/R4/Patient", json={"resourceType": "Patient", "name": [{"family": "D'Alò"}]},
            headers={"Content-Type": "application/fhir+json"})
        assert created.status_code == 201
        patient_id = created.json()["id"]
        with write_lock_held(adapter.container.sessions, "UPDATE inbound_message SET duplicates = duplicates",
                             hold_s=HOLD_S):
            officer, ehr = adapter.client("officer"), adapter.client("ehr")
            began = time.monotonic()
            answers = [
                officer.get("/api/messages").status_code,
                officer.get("/api/notifications").status_code,
                officer.get(f"/api/notifications/{10**9}/why").status_code,
                ehr.get(f"/fhir/R4/Patient/{patient_id}").status_code,
                ehr.get(f"/fhir/R4/Patient/{patient_id}/_history/1").status_code,
                # A load balancer's probe every few seconds: it must not queue for the write lock.
                httpx.get(f"{adapter.base_url}/health/ready", timeout=HOLD_S).status_code,
                officer.get("/metrics").status_code,
            ]
            took = time.monotonic() - began
        assert answers == [200, 200, 404, 200, 200, 200, 200]
        assert took < HOLD_S / 2, f"reads waited {took:.1f} s behind the writer"
