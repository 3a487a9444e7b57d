"""Invoices from a billing system's FHIR server: a Subscription for them, its
notifications, and polling with the deletions of the type's history."""

from __future__ import annotations

import asyncio

from fhir.upstream import poll_once, subscribe
from tests.fhir.conftest import sample
from tests.fhir.test_subscriptions import notify, upstream  # noqa: F401 - fixture


def invoice(iid: str, status: str = "issued") -> dict:
    return {**sample("invoice.json", PATIENT_ID="p1"), "id": iid, "status": status}


def test_a_billing_server_is_subscribed_to_for_invoices_and_its_notifications_are_applied(adapter, upstream):
    created = asyncio.run(subscribe(upstream.url, endpoint=adapter.base + "/$subscription-hook",
                                    sessions=adapter.sessions, service=adapter.service,
                                    resource_types=("Invoice",)))
    [subscription] = upstream.subscriptions.values()
    assert subscription["criteria"].endswith("invoice-changed")
    sid = created[0].url.rsplit("/", 1)[-1]
    upstream.put(invoice("i1"), 1, "2030-11-20T09:01:00Z")
    number = upstream.record_event("Invoice/i1")
    response = notify(adapter, upstream.notification(sid, "event-notification", [number], full=True))
    assert response.status_code == 200, response.text
    assert adapter.kinds() == ["InvoiceIssued"]
    assert adapter.get("/Invoice/i1").json()["status"] == "issued"


def test_polling_a_billing_server_stores_invoices_and_applies_their_deletions(adapter, upstream):
    upstream.put(invoice("i1"), 1, "2030-11-20T09:00:00Z")
    upstream.put(invoice("i2"), 1, "2030-11-20T09:01:00Z")

    def poll():
        return asyncio.run(poll_once(upstream.url, sessions=adapter.sessions, service=adapter.service,
                                     resource_types=("Invoice",)))
    assert poll().stored == 2
    upstream.put(invoice("i1", "balanced"), 2, "2030-11-20T10:00:00Z")
    upstream.delete("Invoice/i2", 2, at="2030-11-20T10:01:00Z")
    result = poll()
    assert (result.stored, result.deleted) == (1, 1)
    settled = [(e.invoice_ref, e.reason) for e in adapter.events if type(e).__name__ == "InvoiceSettled"]
    assert sorted(settled) == [("Invoice/i1", "balanced"), ("Invoice/i2", "deleted")]
