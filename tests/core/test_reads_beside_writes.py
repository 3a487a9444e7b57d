"""Reads over HTTP (authentication, operator lists, health, FHIR read) do not
queue behind a write transaction: on SQLite they run in read transactions that
take no write lock (adapter.db.read_transaction)."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text

from adapter.db import transaction
from tests.harness import running_adapter, settings_for

HOLD_S = 15.0


def test_reads_answer_while_a_long_write_transaction_holds_the_write_lock(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        created = adapter.client("ehr").post(
            "/fhir/R4/Patient", json={"resourceType": "Patient", "name": [{"family": "D'Alò"}]},
            headers={"Content-Type": "application/fhir+json"})
        assert created.status_code == 201
        patient_id = created.json()["id"]
        inside, leave = threading.Event(), threading.Event()

        def long_writer() -> None:
            with transaction(adapter.container.sessions) as session:
                session.execute(text("UPDATE inbound_message SET duplicates = duplicates"))
                inside.set()
                leave.wait(HOLD_S)

        writer = threading.Thread(target=long_writer)
        writer.start()
        try:
            assert inside.wait(10)
            officer, ehr = adapter.client("officer"), adapter.client("ehr")
            began = time.monotonic()
            answers = [
                officer.get("/api/messages").status_code,
                officer.get("/api/notifications").status_code,
                officer.get(f"/api/notifications/{10**9}/why").status_code,
                ehr.get(f"/fhir/R4/Patient/{patient_id}").status_code,
                ehr.get(f"/fhir/R4/Patient/{patient_id}/_history/1").status_code,
            ]
            took = time.monotonic() - began
        finally:
            leave.set()
            writer.join(HOLD_S + 5)
        assert answers == [200, 200, 404, 200, 200]
        assert took < HOLD_S / 2, f"reads waited {took:.1f} s behind the writer"
