"""From Invoice versions to InvoiceIssued / InvoiceSettled (pure: plain values)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from adapter.events import InvoiceIssued, InvoiceSettled, Origin
from fhir import mapping
from fhir.settings import PAGOPA_NOTICE_SYSTEM

NOW = datetime(2030, 11, 20, tzinfo=UTC)
ORIGIN = Origin("fhir", "billing")
NOTICE = "301000000000012345"


def invoice(status="issued", gross=35.0, **changes):
    return {"resourceType": "Invoice", "id": "i1", "status": status, "date": "2030-11-02T09:15:00+01:00",
            "identifier": [{"system": "https://fatture.example.it/numero", "value": "2030/000123"},
                           {"system": PAGOPA_NOTICE_SYSTEM, "value": NOTICE}],
            "subject": {"reference": "Patient/p1"}, "issuer": {"reference": "Organization/sanluca"},
            "lineItem": [{"chargeItemCodeableConcept": {"text": "Visita cardiologica"}}],
            "totalNet": {"value": 30.0, "currency": "EUR"}, "totalGross": {"value": gross, "currency": "EUR"},
            **changes}


def events(new, previous=None):
    return mapping.events_for("Invoice", new, previous, origin=ORIGIN, now=NOW, patient=None,
                              notice_systems=(PAGOPA_NOTICE_SYSTEM,))


def test_an_issued_invoice_is_due_with_its_gross_total_number_notice_code_and_issue_moment():
    [event] = events(invoice())
    assert isinstance(event, InvoiceIssued)
    due = event.invoice
    assert (due.ref, due.amount, due.currency) == ("Invoice/i1", Decimal("35.0"), "EUR")
    assert (due.number, due.notice_code, due.issuer) == ("2030/000123", NOTICE, "Organization/sanluca")
    assert due.issued_at == datetime(2030, 11, 2, 8, 15, tzinfo=UTC)
    assert (event.patient.key.system, event.patient.key.value) == ("fhir:Patient", "p1")
    assert "Visita" not in repr(event)  # line items name services: they never reach an event


def test_without_a_gross_total_the_net_total_is_due_and_without_a_notice_code_none_is_made_up():
    body = invoice(identifier=[{"system": "https://fatture.example.it/numero", "value": "7"}])
    del body["totalGross"]
    [event] = events(body)
    assert (event.invoice.amount, event.invoice.number, event.invoice.notice_code) == (Decimal("30.0"), "7", "")


@pytest.mark.parametrize("status, reason", [
    ("balanced", "balanced"), ("cancelled", "cancelled"), ("entered-in-error", "entered-in-error"),
])
def test_an_invoice_paid_cancelled_or_in_error_settles_the_one_due(status, reason):
    [event] = events(invoice(status), invoice())
    assert isinstance(event, InvoiceSettled)
    assert (event.invoice_ref, event.reason) == ("Invoice/i1", reason)


@pytest.mark.parametrize("status", ["draft", "balanced", "cancelled", "entered-in-error"])
def test_an_invoice_first_seen_not_due_announces_nothing(status):
    assert events(invoice(status)) == []


def test_a_draft_becoming_issued_is_due_and_the_same_version_again_announces_nothing():
    assert [type(e) for e in events(invoice(), invoice("draft"))] == [InvoiceIssued]
    assert events(invoice(), invoice()) == []


def test_a_new_total_while_due_is_announced_with_the_new_amount():
    [event] = events(invoice(gross=42.5), invoice())
    assert isinstance(event, InvoiceIssued) and event.invoice.amount == Decimal("42.5")


def test_an_invoice_someone_else_pays_asks_the_patient_nothing_and_settles_what_was_due():
    other = invoice(recipient={"reference": "Organization/asl"})
    assert events(other) == []
    [event] = events(other, invoice())
    assert isinstance(event, InvoiceSettled) and event.reason == "not-due"


def test_the_recipient_patient_is_the_one_asked_to_pay():
    [event] = events(invoice(recipient={"reference": "Patient/parent"}))
    assert event.patient.key.value == "parent"


def test_a_zero_total_asks_nothing():
    assert events(invoice(gross=0)) == []


def test_deleting_a_due_invoice_settles_it():
    [event] = mapping.deletion_events("Invoice", invoice(), origin=ORIGIN, now=NOW, patient=None)
    assert isinstance(event, InvoiceSettled) and event.reason == "deleted"
