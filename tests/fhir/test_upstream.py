"""Polling a source server and authenticating to it (bearer, SMART Backend Services)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhir.client import BearerToken, FhirClient, SmartBackendAuth
from fhir.errors import UpstreamError
from fhir import upstream as upstream_module
from fhir.upstream import poll_once
from tests.fhir.conftest import sample
from tests.fhir.fake_upstream import FakeUpstream
from tests.fhir.test_subscriptions import appointment, upstream  # noqa: F401 - fixture


def seed(upstream, count: int) -> None:
    for i in range(count):
        upstream.put(appointment(f"a{i}"), 1, f"2030-11-20T09:{i:02d}:00Z")


def poll(adapter, upstream, **kwargs):
    return asyncio.run(poll_once(upstream.url, sessions=adapter.sessions,
                                 service=adapter.service, page_size=2, **kwargs))


def test_polling_pages_through_a_last_updated_search_and_stores_each_resource(adapter, upstream):
    seed(upstream, 5)
    result = poll(adapter, upstream, resource_types=("Appointment",))
    assert result.stored == 5 and not result.rejected
    assert sum("_page=" in r for r in upstream.requests) == 2
    assert adapter.kinds() == ["AppointmentBooked"] * 5


def test_the_next_poll_starts_at_the_cursor_and_processes_only_what_changed(adapter, upstream):
    seed(upstream, 3)
    poll(adapter, upstream, resource_types=("Appointment",))
    upstream.put(appointment("a1", status="cancelled"), 2, "2030-11-20T10:00:00Z")
    upstream.requests.clear()
    result = poll(adapter, upstream, resource_types=("Appointment",))
    assert "_lastUpdated=ge2030-11-20T09%3A02%3A00Z" in upstream.requests[0]
    assert result.stored == 1 and result.unchanged == 1  # a2 again: the cursor is inclusive
    assert adapter.kinds()[-1] == "AppointmentCancelled"


def test_an_invalid_resource_from_the_source_is_reported_and_skipped(adapter, upstream):
    seed(upstream, 1)
    upstream.put({**appointment("bad"), "status": "bogus"}, 1, "2030-11-20T09:30:00Z")
    result = poll(adapter, upstream, resource_types=("Appointment",))
    assert result.stored == 1 and result.rejected[0].startswith("Appointment/bad")


def test_a_bearer_token_is_sent_to_the_source_server(adapter, upstream):
    upstream.public_key = object()  # any token check on
    seed(upstream, 1)
    with pytest.raises(UpstreamError):
        poll(adapter, upstream, resource_types=("Appointment",))
    result = poll(adapter, upstream, resource_types=("Appointment",),
                  auth=BearerToken("token-1"))
    assert result.stored == 1


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_smart_backend_services_gets_a_token_with_a_signed_assertion_and_reuses_it(
        algorithm, adapter, upstream):
    key = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
           if algorithm == "RS384" else ec.generate_private_key(ec.SECP384R1()))
    upstream.public_key = key.public_key()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    token_url = upstream.url.removesuffix("/fhir") + "/token"
    auth = SmartBackendAuth(token_url=token_url, client_id="adapter", private_key_pem=pem,
                            algorithm=algorithm, key_id="k1")
    seed(upstream, 3)
    result = poll(adapter, upstream, resource_types=("Appointment",), auth=auth)
    assert result.stored == 3 and upstream.tokens_issued == 1


def test_the_client_refuses_to_follow_a_reference_to_another_server(upstream):
    async def go():
        async with FhirClient(upstream.url) as client:
            await client.read("https://elsewhere.example.org/fhir/Patient/1")
    with pytest.raises(UpstreamError):
        asyncio.run(go())


def test_fake_upstream_is_a_plain_fixture_type():
    assert FakeUpstream(url="x").events == []


def test_polling_reads_the_patient_an_appointment_names_once_so_their_contacts_are_known(adapter, upstream):
    upstream.put({**sample("patient.json"), "id": "p1"},
                 1, "2030-11-20T08:00:00Z")
    seed(upstream, 3)  # three appointments of Patient/p1
    result = poll(adapter, upstream, resource_types=("Appointment",))
    assert result.stored == 3
    assert sum(r.startswith("GET /fhir/Patient/p1") for r in upstream.requests) == 1
    booked = [e for e in adapter.events if type(e).__name__ == "AppointmentBooked"]
    assert len(booked) == 3 and all(e.patient.telecom[0].value == "+393331234567" for e in booked)


def test_polling_applies_the_deletions_of_the_type_history_which_no_search_returns(adapter, upstream):
    """A search never returns a deleted resource: polling kept a deleted appointment, and
    its reminders went out. The type's history lists the deletion; it is applied as a
    pushed DELETE is (called off, reason ``deleted``; a read here answers 410)."""
    seed(upstream, 3)
    poll(adapter, upstream, resource_types=("Appointment",))
    upstream.put(appointment("a2", start="2030-12-02T08:30:00Z"), 2, "2030-11-20T10:00:00Z")
    upstream.delete("Appointment/a1", 2, at="2030-11-20T10:01:00Z")
    upstream.requests.clear()
    result = poll(adapter, upstream, resource_types=("Appointment",))
    assert (result.stored, result.deleted, result.failed) == (1, 1, False)
    assert any("/Appointment/_history?_since=2030-11-20T09%3A02%3A00Z" in r for r in upstream.requests)
    assert sum("/_history?" in r and "_page=" in r for r in upstream.requests) >= 1  # paged, page_size 2
    cancelled = [e for e in adapter.events if type(e).__name__ == "AppointmentCancelled"]
    assert [(e.appointment.ref, e.reason) for e in cancelled] == [("Appointment/a1", "deleted")]
    assert adapter.get("/Appointment/a1").status_code == 410
    assert adapter.get("/Appointment/a2").json()["start"] == "2030-12-02T08:30:00Z"

    adapter.events.clear()
    again = poll(adapter, upstream, resource_types=("Appointment",))  # the cursor is inclusive
    assert (again.stored, again.deleted) == (0, 0) and adapter.events == []


@pytest.mark.parametrize("versioned", [True, False])
def test_a_deletion_the_resource_was_put_back_after_is_not_applied(adapter, upstream, versioned):
    seed(upstream, 1)
    poll(adapter, upstream, resource_types=("Appointment",))
    upstream.delete("Appointment/a0", 2, at="2030-11-20T10:00:00Z")
    if not versioned:  # a bare DELETE entry: only the history's order (newest first) tells
        upstream.history[-1]["response"] = {"status": "410 Gone"}
    upstream.put(appointment("a0"), 3, "2030-11-20T10:05:00Z")
    result = poll(adapter, upstream, resource_types=("Appointment",))
    assert result.deleted == 0 and not result.failed
    assert "AppointmentCancelled" not in adapter.kinds()
    assert adapter.get("/Appointment/a0").status_code == 200


@pytest.mark.parametrize("status", [405, 501])  # 501 Not Implemented: what some servers answer
def test_a_server_without_history_is_polled_by_search_and_says_so_once(adapter, upstream, caplog, monkeypatch, status):
    monkeypatch.setattr(upstream_module, "_WITHOUT_HISTORY", set())  # said once a process
    upstream.history_status = status
    seed(upstream, 2)
    poll(adapter, upstream, resource_types=("Appointment",))
    upstream.put(appointment("a1", status="cancelled"), 2, "2030-11-20T10:00:00Z")
    with caplog.at_level(logging.WARNING, logger="fhir.upstream"):
        first = poll(adapter, upstream, resource_types=("Appointment",))
        upstream.put(appointment("a0", status="cancelled"), 2, "2030-11-20T10:10:00Z")
        upstream.requests.clear()
        second = poll(adapter, upstream, resource_types=("Appointment",))
    assert (first.stored, first.failed, second.stored, second.failed) == (1, False, 1, False)
    assert "_lastUpdated=ge2030-11-20T10%3A00%3A00Z" in upstream.requests[0]  # the cursor moved on
    said = [r.getMessage() for r in caplog.records if "_history" in r.getMessage()]
    assert said == [f"{upstream.url} answered {status} to Appointment/_history: deletions there are not seen when polling or recovering missed notifications"]


def test_a_history_that_fails_leaves_the_cursor_where_it_was(adapter, upstream):
    seed(upstream, 2)
    poll(adapter, upstream, resource_types=("Appointment",))
    upstream.put(appointment("a1", status="cancelled"), 2, "2030-11-20T10:00:00Z")
    upstream.history_status = 503
    failed = poll(adapter, upstream, resource_types=("Appointment",))
    assert failed.failed and failed.stored == 1
    upstream.history_status = 200
    upstream.delete("Appointment/a0", 2, at="2030-11-20T09:30:00Z")  # before what the search stored
    upstream.requests.clear()
    result = poll(adapter, upstream, resource_types=("Appointment",))
    assert "_lastUpdated=ge2030-11-20T09%3A01%3A00Z" in upstream.requests[0]
    assert (result.deleted, result.unchanged, result.failed) == (1, 1, False)
