"""Payment reminders from a billing system's FHIR Invoices, through the public surfaces:
FHIR over real HTTP, a real database (SQLite and PostgreSQL), the sandbox outbox, a
frozen clock moved to each reminder's moment."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from adapter import events as ev
from adapter.clock import FrozenClock
from adapter.db import transaction
from adapter.models import Invoice, Notification
from adapter.scheduler import claim_due
from tests.core.test_end_to_end import FHIR, notifications, patient, wait_for
from tests.core.test_hl7_flows import outbox_bodies
from tests.fhir.conftest import sample
from tests.harness import migrated_container, running_adapter, settings_for

ROME = ZoneInfo("Europe/Rome")
NOW = datetime(2030, 11, 4, 8, 0, tzinfo=UTC)  # two days after the invoice's date
FIRST = datetime(2030, 11, 16, 10, 0, tzinfo=ROME)  # 14 days after 2 November, at 10:00
SECOND = datetime(2030, 12, 2, 10, 0, tzinfo=ROME)  # 30 days after


def invoice(iid: str, pid: str, status: str = "issued", gross: float = 35.0) -> dict:
    return {**sample("invoice.json", PATIENT_ID=pid), "id": iid, "status": status,
            "totalGross": {"value": gross, "currency": "EUR"}}


def reminders(officer) -> list[dict]:
    return sorted((i for i in notifications(officer, kind="payment_reminder")), key=lambda i: i["scheduled_for"])


def issue_invoice(adapter, language: str = "it") -> None:
    ehr = adapter.client("ehr")
    assert ehr.put("/fhir/R4/Patient/p1", json=patient("p1", language=language), headers=FHIR).status_code == 201
    assert ehr.put("/fhir/R4/Invoice/i1", json=invoice("i1", "p1"), headers=FHIR).status_code == 201
    adapter.fhir_processed()


@pytest.mark.parametrize("language, amount, number", [("it", "35,00 €", "n. 2030/000123"),
                                                      ("en", "€35.00", "no. 2030/000123")])
def test_an_issued_invoice_is_reminded_14_and_30_days_on_with_amount_number_and_link(
        tmp_path, database_url, language, amount, number):
    clock = FrozenClock(NOW)
    with running_adapter(settings_for(tmp_path, database_url), clock=clock) as adapter:
        issue_invoice(adapter, language)
        officer = adapter.client("officer")
        planned = reminders(officer)
        assert [(datetime.fromisoformat(i["scheduled_for"]), i["status"]) for i in planned] == [
            (FIRST, "scheduled"), (SECOND, "scheduled")]
        assert outbox_bodies(adapter) == []

        clock.set(FIRST)
        [body] = wait_for(lambda: outbox_bodies(adapter))
        assert body.startswith("Gentile Nicolò," if language == "it" else "Dear Nicolò,")
        assert amount in body and number in body and "Poliambulatorio San Luca" in body
        assert "https://pagamenti.example.org/avviso/301000000000012345" in body
        assert "Visita" not in body and "cardiologica" not in body  # the invoice's line item
        wait_for(lambda: [i["status"] for i in reminders(officer)] == ["sent", "scheduled"])
        sent = officer.get(f"/api/notifications/{reminders(officer)[0]['id']}/why").json()
        assert sent["decision"]["at_send"]["template"] == f"{language}/payment_reminder"
        assert sent["decision"]["at_send"]["consent"]["purpose"] == "administrative"


def test_a_paid_invoice_withdraws_its_pending_reminders_with_the_reason(tmp_path, database_url):
    clock = FrozenClock(NOW)
    with running_adapter(settings_for(tmp_path, database_url), clock=clock) as adapter:
        issue_invoice(adapter)
        paid = adapter.client("ehr").put("/fhir/R4/Invoice/i1", json=invoice("i1", "p1", "balanced"), headers=FHIR)
        assert paid.status_code == 200
        adapter.fhir_processed()
        officer = adapter.client("officer")
        assert [(i["status"], i["reason"]) for i in reminders(officer)] == [("cancelled", "invoice paid")] * 2
        clock.set(SECOND + timedelta(hours=1))
        assert outbox_bodies(adapter) == []


def test_a_reminder_already_claimed_when_the_invoice_is_paid_is_suppressed_at_send(tmp_path, database_url):
    """What a worker holds is not withdrawn (only what waits is): the dispatcher reads the
    invoice as it stands when it sends, and a paid one ends the reminder, with the reason."""
    clock = FrozenClock(NOW)
    with running_adapter(settings_for(tmp_path, database_url), clock=clock, embedded_worker=False) as adapter:
        issue_invoice(adapter)
        container = adapter.container
        clock.set(FIRST)
        lease = container.dispatcher.lease
        with transaction(container.sessions) as session:
            claimed = claim_due(session, now=clock.now(), limit=10, lease=lease)
        leased_until = clock.now() + lease
        assert len(claimed) == 1
        assert adapter.client("ehr").put("/fhir/R4/Invoice/i1", json=invoice("i1", "p1", "balanced"),
                                         headers=FHIR).status_code == 200
        adapter.fhir_processed()
        asyncio.run(container.dispatcher.deliver(claimed, leased_until))
        officer = adapter.client("officer")
        [first, second] = reminders(officer)
        assert (first["status"], first["reason"]) == ("suppressed", "the invoice had been paid when it was due to be sent")
        why = officer.get(f"/api/notifications/{first['id']}/why").json()["decision"]
        assert why["at_send"] == {"invoice": "the invoice had been paid when it was due to be sent"}
        assert (second["status"], second["reason"]) == ("cancelled", "invoice paid")
        assert outbox_bodies(adapter) == []


def test_a_new_total_is_the_amount_the_pending_reminder_asks_for(tmp_path, database_url):
    clock = FrozenClock(NOW)
    with running_adapter(settings_for(tmp_path, database_url), clock=clock) as adapter:
        issue_invoice(adapter)
        officer = adapter.client("officer")
        before = [i["id"] for i in reminders(officer)]
        corrected = adapter.client("ehr").put("/fhir/R4/Invoice/i1", json=invoice("i1", "p1", gross=42.5), headers=FHIR)
        assert corrected.status_code == 200
        adapter.fhir_processed()
        assert [i["id"] for i in reminders(officer)] == before  # the same reminders, not planned twice
        clock.set(FIRST)
        [body] = wait_for(lambda: outbox_bodies(adapter))
        assert "42,50 €" in body and "35,00" not in body
        with transaction(adapter.container.sessions) as session:
            stored = session.scalar(select(Invoice).where(Invoice.ref == "Invoice/i1"))
            assert b"42.5" not in stored.details_enc  # sealed under the patient's key
        admin = adapter.client("admin")
        [exported] = admin.get(f"/api/patients/{stored.patient_id}/export").json()["invoice"]
        assert '"amount": "42.5"' in exported["details"] and exported["status"] == "issued"
        assert admin.delete(f"/api/patients/{stored.patient_id}").status_code == 200
        with transaction(adapter.container.sessions) as session:
            assert session.scalar(select(Invoice)) is None  # erased with the patient


def test_an_objection_to_administrative_messages_suppresses_payment_reminders(tmp_path, database_url):
    clock = FrozenClock(NOW)
    objection = {**sample("consent.json", PATIENT_ID="p1"), "id": "c1",
                 "provision": {"type": "deny", "purpose": [
                     {"system": "https://adapter.example.org/fhir/CodeSystem/purpose", "code": "administrative"}]}}
    with running_adapter(settings_for(tmp_path, database_url), clock=clock) as adapter:
        ehr = adapter.client("ehr")
        assert ehr.put("/fhir/R4/Patient/p1", json=patient("p1"), headers=FHIR).status_code == 201
        assert ehr.put("/fhir/R4/Consent/c1", json=objection, headers=FHIR).status_code == 201
        assert ehr.put("/fhir/R4/Invoice/i1", json=invoice("i1", "p1"), headers=FHIR).status_code == 201
        adapter.fhir_processed()
        officer = adapter.client("officer")
        planned = reminders(officer)
        assert [i["status"] for i in planned] == ["suppressed", "suppressed"]
        assert all("administrative" in i["reason"] or "object" in i["reason"] for i in planned), planned
        clock.set(SECOND + timedelta(hours=1))
        assert outbox_bodies(adapter) == []


def test_a_merge_moves_the_invoice_to_the_surviving_patient_resealed_under_their_key(tmp_path, database_url):
    """HL7 A40 folds a patient into another: their invoice and its reminders go with them,
    its details sealed again under the survivor's key (erasing one never breaks the other)."""
    container = migrated_container(settings_for(tmp_path, database_url), FrozenClock(NOW))
    try:
        origin = ev.Origin("hl7", "ADT^OSP_TEST")
        retired = ev.PatientDetails(key=ev.Identifier("urn:mrn", "OLD"))
        survivor = ev.PatientDetails(key=ev.Identifier("urn:mrn", "NEW"))
        due = ev.Invoice("Invoice/i9", NOW, Decimal("35.00"), "EUR", "2030/9")
        with transaction(container.sessions) as session:
            container.pipeline.handle(session, [ev.InvoiceIssued(origin, NOW, retired, due)], now=NOW)
            old_id = session.scalar(select(Invoice.patient_id))
        with transaction(container.sessions) as session:
            container.pipeline.handle(session, [ev.PatientsMerged(origin, NOW, survivor, retired.key)], now=NOW)
        with transaction(container.sessions) as session:
            stored = session.scalar(select(Invoice))
            assert stored.patient_id != old_id
            assert set(session.scalars(select(Notification.patient_id))) == {stored.patient_id}
            assert '"number": "2030/9"' in container.vault.decrypt_str(session, stored.details_enc)
            container.vault.destroy(session, f"patient:{old_id}")
        with transaction(container.sessions) as session:
            assert '"number": "2030/9"' in container.vault.decrypt_str(session, session.scalar(select(Invoice.details_enc)))
    finally:
        container.engine.dispose()


def test_a_reminder_falling_on_a_public_holiday_waits_for_the_next_working_morning(tmp_path):
    """Not urgent: 14 days after 24 November 2030 is 8 December (Immacolata, a Sunday too)."""
    from datetime import time

    settings = settings_for(tmp_path, sending_window_start=time(8, 0), sending_window_end=time(21, 0),
                            send_on_holidays=False)
    with running_adapter(settings, clock=FrozenClock(datetime(2030, 11, 25, 9, 0, tzinfo=UTC))) as adapter:
        ehr = adapter.client("ehr")
        assert ehr.put("/fhir/R4/Patient/p1", json=patient("p1"), headers=FHIR).status_code == 201
        late = {**invoice("i1", "p1"), "date": "2030-11-24T11:00:00+01:00"}
        assert ehr.put("/fhir/R4/Invoice/i1", json=late, headers=FHIR).status_code == 201
        adapter.fhir_processed()
        first = reminders(adapter.client("officer"))[0]
        assert datetime.fromisoformat(first["scheduled_for"]) == datetime(2030, 12, 9, 8, 0, tzinfo=ROME)


def test_an_hl7_charge_posting_is_refused_no_payment_state_comes_from_hl7_v2(tmp_path):
    """DFT^P03 posts charges; it says nothing of an invoice issued or paid (README)."""
    dft = "\r".join([
        "MSH|^~\\&|BILL|OSP_TEST|ADAPTER|NOTIFY|20301104090000||DFT^P03^DFT_P03|D1|P|2.5",
        "EVN|P03|20301104090000",
        "PID|1||0012345^^^OSP_TEST^MR||D'Alò^Nicolò",
        "FT1|1|||20301104|20301104|CG|VIS01^Visita^L|||1|35.00",
    ]) + "\r"
    with running_adapter(settings_for(tmp_path)) as adapter:
        response = adapter.client("ehr").post("/hl7/v2", content=dft.encode(),
                                              headers={"Content-Type": "application/hl7-v2"})
        assert "MSA|AR|D1" in response.text and "ERR|" in response.text
        assert notifications(adapter.client("officer")) == []
