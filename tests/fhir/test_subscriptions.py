"""The subscription receiver against a fake source server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from sqlalchemy import select

from fhir.client import BACKPORT
from fhir.models import FhirSubscription
from fhir.settings import FhirSettings
from fhir.subscriptions import silent_subscriptions
from fhir import upstream as upstream_module
from fhir.upstream import subscribe
from tests.fhir.fake_upstream import FakeUpstream
from tests.fhir.conftest import sample
from tests.fhir.test_rest import issue


@pytest.fixture
def upstream(upstream_server) -> FakeUpstream:
    fake = FakeUpstream(url=upstream_server.url + "/fhir")
    upstream_server.holder.app = fake.app()
    return fake


def appointment(aid: str, status: str = "booked", start: str = "2030-12-01T08:30:00Z"):
    return {"resourceType": "Appointment", "id": aid, "status": status, "start": start,
            "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}]}


def subscribed(adapter, upstream) -> str:
    created = asyncio.run(subscribe(upstream.url, endpoint=adapter.base + "/$subscription-hook",
                                    sessions=adapter.sessions, service=adapter.service))
    return created[0].url.rsplit("/", 1)[-1]


def book(upstream, aid: str, version: int = 1, **kwargs) -> int:
    upstream.put(appointment(aid, **kwargs), version, f"2030-11-20T09:0{version}:00Z")
    return upstream.record_event(f"Appointment/{aid}")


def notify(adapter, bundle):
    return adapter.post("/$subscription-hook", bundle)


def state(adapter, sid: str) -> FhirSubscription:
    with adapter.sessions() as session:
        return session.scalars(select(FhirSubscription).where(
            FhirSubscription.url.endswith("/" + sid))).one()


def test_subscribe_creates_backport_subscriptions_for_appointments_and_reports(adapter, upstream):
    subscribed(adapter, upstream)
    created = list(upstream.subscriptions.values())
    filters = [s["_criteria"]["extension"][0]["valueString"] for s in created]
    assert filters == ["Appointment?", "DiagnosticReport?"]
    channel = created[0]["channel"]
    assert channel["type"] == "rest-hook" and channel["endpoint"].endswith("/$subscription-hook")
    assert channel["_payload"]["extension"][0] == {
        "url": BACKPORT + "backport-payload-content", "valueCode": "id-only"}
    with adapter.sessions() as session:
        assert len(session.scalars(select(FhirSubscription)).all()) == 2


def test_a_handshake_activates_the_subscription_and_publishes_nothing(adapter, upstream):
    sid = subscribed(adapter, upstream)
    response = notify(adapter, upstream.notification(sid, "handshake", [], full=False))
    assert response.status_code == 200, response.text
    assert state(adapter, sid).status == "active" and adapter.events == []


def test_a_full_resource_notification_stores_the_resource_and_publishes_booked(adapter, upstream):
    sid = subscribed(adapter, upstream)
    number = book(upstream, "a1")
    response = notify(adapter, upstream.notification(sid, "event-notification", [number],
                                                     full=True))
    assert response.status_code == 200, response.text
    assert adapter.kinds() == ["AppointmentBooked"]
    assert adapter.events[0].origin.sender == upstream.url
    assert not any(r.startswith("GET /fhir/Appointment") for r in upstream.requests)
    assert state(adapter, sid).last_event_number == 1


def test_an_id_only_notification_fetches_the_resource_from_the_source_server(adapter, upstream):
    sid = subscribed(adapter, upstream)
    number = book(upstream, "a1")
    response = notify(adapter, upstream.notification(sid, "event-notification", [number],
                                                     full=False))
    assert response.status_code == 200, response.text
    assert "GET /fhir/Appointment/a1?" in upstream.requests
    assert adapter.kinds() == ["AppointmentBooked"]
    assert adapter.get("/Appointment/a1").json()["status"] == "booked"


def test_an_r4b_subscription_notification_bundle_is_understood(adapter, upstream):
    sid = subscribed(adapter, upstream)
    number = book(upstream, "a1")
    bundle = {"resourceType": "Bundle", "type": "subscription-notification", "entry": [
        {"resource": {"resourceType": "SubscriptionStatus", "status": "active",
                      "type": "event-notification",
                      "eventsSinceSubscriptionStart": str(number),
                      "notificationEvent": [{"eventNumber": str(number),
                                             "focus": {"reference": "Appointment/a1"}}],
                      "subscription": {"reference": f"Subscription/{sid}"},
                      "topic": "https://adapter.example.org/topic"}},
        {"fullUrl": f"{upstream.url}/Appointment/a1",
         "resource": upstream.resources["Appointment/a1"]}]}
    response = notify(adapter, bundle)
    assert response.status_code == 200, response.text
    assert adapter.kinds() == ["AppointmentBooked"]


def test_the_same_notification_twice_is_processed_once(adapter, upstream):
    sid = subscribed(adapter, upstream)
    bundle = upstream.notification(sid, "event-notification", [book(upstream, "a1")], full=True)
    assert notify(adapter, bundle).status_code == 200
    assert notify(adapter, bundle).status_code == 200
    assert adapter.kinds() == ["AppointmentBooked"]
    assert adapter.get("/Appointment/a1").headers["etag"] == 'W/"1"'


def test_a_gap_in_the_event_counter_is_recovered_with_events(adapter, upstream):
    sid = subscribed(adapter, upstream)
    book(upstream, "a1")
    book(upstream, "a2")
    third = book(upstream, "a3")
    response = notify(adapter, upstream.notification(sid, "event-notification", [third],
                                                     full=True))
    assert response.status_code == 200, response.text
    assert any("$events" in r and "eventsSinceNumber=1" in r for r in upstream.requests)
    assert sorted(e.appointment.ref for e in adapter.events) == [
        "Appointment/a1", "Appointment/a2", "Appointment/a3"]
    assert state(adapter, sid).events_recovered == 2


def test_without_events_a_gap_is_recovered_by_a_last_updated_search(adapter, upstream):
    upstream.events_supported = False
    sid = subscribed(adapter, upstream)
    book(upstream, "a1")
    third = book(upstream, "a2", version=2)
    response = notify(adapter, upstream.notification(sid, "event-notification", [third],
                                                     full=True))
    assert response.status_code == 200, response.text
    assert any(r.startswith("GET /fhir/Appointment?") and "_lastUpdated=ge" in r
               for r in upstream.requests)
    assert sorted(e.appointment.ref for e in adapter.events) == [
        "Appointment/a1", "Appointment/a2"]


def test_a_heartbeat_whose_counter_moved_on_recovers_the_missed_events(adapter, upstream):
    sid = subscribed(adapter, upstream)
    book(upstream, "a1")
    response = notify(adapter, upstream.notification(sid, "heartbeat", [], full=False))
    assert response.status_code == 200, response.text
    assert adapter.kinds() == ["AppointmentBooked"]
    assert state(adapter, sid).last_event_number == 1


def test_a_later_status_change_from_the_source_publishes_the_transition(adapter, upstream):
    sid = subscribed(adapter, upstream)
    notify(adapter, upstream.notification(sid, "event-notification", [book(upstream, "a1")],
                                          full=True))
    second = book(upstream, "a1", version=2, status="cancelled")
    notify(adapter, upstream.notification(sid, "event-notification", [second], full=True))
    assert adapter.kinds() == ["AppointmentBooked", "AppointmentCancelled"]


@pytest.mark.parametrize("where", ["in the request's thread", "in a helper process"])
def test_an_invalid_resource_in_a_recovered_gap_refuses_the_notification_and_stores_nothing(
        adapter, upstream, helper_pool, where):
    if where == "in a helper process":
        adapter.service.validator = helper_pool
    sid = subscribed(adapter, upstream)
    book(upstream, "a1")
    book(upstream, "a2", status="bogus")  # the source server holds an invalid version
    third = book(upstream, "a3")
    response = notify(adapter, upstream.notification(sid, "event-notification", [third],
                                                     full=True))
    assert response.status_code == 400, response.text
    assert issue(response)["expression"] == ["Appointment.status"]
    assert adapter.events == []  # all or nothing: a1 is not stored either
    assert state(adapter, sid).last_event_number == 0  # the next notification tries again


def test_a_notification_for_an_unknown_subscription_is_refused(adapter, upstream):
    upstream.subscriptions["sub-9"] = {}
    response = notify(adapter, upstream.notification("sub-9", "handshake", [], full=False))
    assert response.status_code == 404 and issue(response)["code"] == "not-found"


def test_a_notification_from_a_trusted_server_registers_its_subscription(make_adapter, upstream):
    adapter = make_adapter(FhirSettings(trusted_servers=(upstream.url,)))
    response = notify(adapter, upstream.notification("sub-7", "handshake", [], full=False))
    assert response.status_code == 200
    assert state(adapter, "sub-7").server == upstream.url


def test_a_bundle_that_is_not_a_notification_is_refused(adapter, upstream):
    response = notify(adapter, {"resourceType": "Bundle", "type": "history", "entry": [
        {"resource": {"resourceType": "Patient"}}]})
    assert response.status_code == 400
    assert issue(response)["expression"] == ["Bundle.entry[0].resource"]


def test_a_subscription_that_goes_silent_is_reported_until_it_calls_again(adapter, upstream):
    sid = subscribed(adapter, upstream)  # heartbeat every 300 s
    with adapter.sessions() as session:
        assert silent_subscriptions(session, adapter.clock()) == []
    adapter.clock.advance(seconds=601)
    with adapter.sessions() as session:
        silent = silent_subscriptions(session, adapter.clock())
    assert len(silent) == 2 and silent[0].expected_every.total_seconds() == 600
    notify(adapter, upstream.notification(sid, "heartbeat", [], full=False))
    with adapter.sessions() as session:
        assert [s.url for s in silent_subscriptions(session, adapter.clock())] == [
            f"{upstream.url}/Subscription/sub-2"]


def test_sample_notification_bundle_is_kept_in_samples():
    from tests.fhir.conftest import SAMPLES
    bundle = json.loads((SAMPLES / "notification-backport-id-only.json").read_text())
    from fhir.subscriptions import parse_notification
    note = parse_notification(bundle)
    assert note.kind == "event-notification" and note.events[0].number == 12


def test_the_patient_of_a_notified_appointment_is_read_from_the_source_server_so_their_contacts_are_known(
        adapter, upstream):
    upstream.put({**sample("patient.json"), "id": "p1"},
                 1, "2030-11-20T09:00:00Z")
    sid = subscribed(adapter, upstream)
    number = book(upstream, "a1")
    response = notify(adapter, upstream.notification(sid, "event-notification", [number], full=False))
    assert response.status_code == 200, response.text
    assert "GET /fhir/Patient/p1?" in upstream.requests
    [booked] = [e for e in adapter.events if type(e).__name__ == "AppointmentBooked"]
    assert booked.patient.telecom[0].value == "+393331234567" and booked.patient.language == "it"


def test_a_patient_the_notification_carries_is_taken_from_it_and_not_read_again(adapter, upstream):
    patient = upstream.put({**sample("patient.json"), "id": "p1"},
                           1, "2030-11-20T09:00:00Z")
    sid = subscribed(adapter, upstream)
    bundle = upstream.notification(sid, "event-notification", [book(upstream, "a1")], full=True)
    bundle["entry"].append({"fullUrl": f"{upstream.url}/Patient/p1", "resource": patient})
    assert notify(adapter, bundle).status_code == 200
    assert not any(r.startswith("GET /fhir/Patient") for r in upstream.requests)
    assert adapter.events[-1].patient.telecom[0].value == "+393331234567"


def test_a_patient_a_notification_brings_without_the_language_it_had_clears_it(adapter, upstream):
    """What the source server gives is the whole Patient (an update, FHIR R4 §3.1.0.4): one
    that no longer has the ``communication`` its previous version had states no language."""
    upstream.put({**sample("patient.json"), "id": "p1"}, 1, "2030-11-20T09:00:00Z")
    sid = subscribed(adapter, upstream)
    assert notify(adapter, upstream.notification(sid, "event-notification", [book(upstream, "a1")],
                                                 full=False)).status_code == 200
    without = {k: v for k, v in sample("patient.json").items() if k != "communication"}
    upstream.put({**without, "id": "p1"}, 2, "2030-11-20T09:05:00Z")
    number = book(upstream, "a1", version=2, start="2030-12-02T08:30:00Z")
    assert notify(adapter, upstream.notification(sid, "event-notification", [number], full=False)).status_code == 200
    [updated] = [e for e in adapter.events if type(e).__name__ == "PatientUpdated"][-1:]
    assert updated.patient.cleared == {"language"} and updated.patient.language == ""


def test_a_notification_of_a_deleted_appointment_calls_it_off_instead_of_failing_forever(adapter, upstream):
    """A notification about a resource the source server deleted was answered 424 every
    time (its read answers 410): the server retried forever, the subscription stalled,
    and the deleted appointment's reminders kept going out. The deletion is applied."""
    sid = subscribed(adapter, upstream)
    assert notify(adapter, upstream.notification(sid, "event-notification", [book(upstream, "a1")],
                                                 full=False)).status_code == 200
    number = upstream.delete("Appointment/a1", 2)
    with_entry = upstream.notification(sid, "event-notification", [number], full=False)
    bare = json.loads(json.dumps(with_entry))
    del bare["entry"][1]["request"], bare["entry"][1]["response"]  # id-only: its read answers 410
    response = notify(adapter, bare)
    assert response.status_code == 200, response.text
    assert adapter.kinds()[-1] == "AppointmentCancelled" and adapter.events[-1].reason == "deleted"
    assert adapter.get("/Appointment/a1").status_code == 410
    assert state(adapter, sid).last_event_number == number
    adapter.events.clear()
    assert notify(adapter, with_entry).status_code == 200  # the history entry says so: no read
    assert adapter.events == [] and upstream.requests[-1].startswith("GET /fhir/Appointment/a1")


def test_a_history_entry_deleting_an_appointment_is_applied_without_a_read_and_ordered_by_its_version(
        adapter, upstream):
    sid = subscribed(adapter, upstream)
    first = book(upstream, "a1")
    assert notify(adapter, upstream.notification(sid, "event-notification", [first], full=True)).status_code == 200
    number = upstream.delete("Appointment/a1", 3)
    reads = len(upstream.requests)
    response = notify(adapter, upstream.notification(sid, "event-notification", [number], full=True))
    assert response.status_code == 200, response.text
    assert len(upstream.requests) == reads and adapter.kinds()[-1] == "AppointmentCancelled"
    adapter.events.clear()
    late = upstream.put(appointment("a1"), 2, "2030-11-20T09:02:00Z")  # version 2, after its deletion (3)
    upstream.resources.pop("Appointment/a1")
    stale = {"resourceType": "Bundle", "type": "history", "entry": [
        upstream.notification(sid, "event-notification", [], full=False, total=number + 1)["entry"][0],
        {"fullUrl": f"{upstream.url}/Appointment/a1", "resource": late}]}
    stale["entry"][0]["resource"]["parameter"].append({"name": "notification-event", "part": [
        {"name": "event-number", "valueString": str(number + 1)},
        {"name": "focus", "valueReference": {"reference": f"{upstream.url}/Appointment/a1"}}]})
    assert notify(adapter, stale).status_code == 200
    assert adapter.events == [] and adapter.get("/Appointment/a1").status_code == 410


def test_a_404_for_a_resource_we_stored_is_its_deletion_and_for_one_we_never_had_still_an_error(adapter, upstream):
    sid = subscribed(adapter, upstream)
    assert notify(adapter, upstream.notification(sid, "event-notification", [book(upstream, "a1")],
                                                 full=False)).status_code == 200
    number = upstream.delete("Appointment/a1", 2, forget=True)
    note = upstream.notification(sid, "event-notification", [number], full=False)
    del note["entry"][1]["request"], note["entry"][1]["response"]
    assert notify(adapter, note).status_code == 200
    assert adapter.kinds()[-1] == "AppointmentCancelled"
    upstream.forgotten.add("Appointment/never")
    upstream.deleted["Appointment/never"] = "1"
    number = upstream.record_event("Appointment/never")
    note = upstream.notification(sid, "event-notification", [number], full=False)
    del note["entry"][1]["request"], note["entry"][1]["response"]
    assert notify(adapter, note).status_code == 424


def a_deletion_missed_then_a_booking(adapter, upstream, *, first_full: bool) -> tuple[str, int]:  # noqa: ANN001
    """Appointment a1 notified, then deleted on the server (event 2, never notified), then a2
    booked and notified (event 3): the gap is recovered. The subscription's id and the last
    event's number."""
    sid = subscribed(adapter, upstream)
    assert notify(adapter, upstream.notification(sid, "event-notification", [book(upstream, "a1")],
                                                 full=first_full)).status_code == 200
    upstream.delete("Appointment/a1", 2)
    number = book(upstream, "a2")
    response = notify(adapter, upstream.notification(sid, "event-notification", [number], full=True))
    assert response.status_code == 200, response.text
    return sid, number


def test_a_deletion_among_missed_events_is_recovered_with_events(adapter, upstream):
    sid, _ = a_deletion_missed_then_a_booking(adapter, upstream, first_full=False)
    assert adapter.kinds()[-2:] == ["AppointmentCancelled", "AppointmentBooked"]
    assert state(adapter, sid).events_recovered == 1


def test_without_events_an_appointment_deleted_in_a_gap_is_called_off_from_the_type_history(adapter, upstream):
    """Recovered by a ``_lastUpdated`` search alone, a gap never showed what the server
    deleted meanwhile (a search does not return it): the appointment stayed booked and its
    reminders went out. The type's ``_history`` lists the deletion; it is applied as a
    pushed DELETE is."""
    upstream.events_supported = False
    sid, number = a_deletion_missed_then_a_booking(adapter, upstream, first_full=True)
    assert any(r.startswith("GET /fhir/Appointment/_history?") and "_since=" in r for r in upstream.requests)
    cancelled = [e for e in adapter.events if type(e).__name__ == "AppointmentCancelled"]
    assert [(e.appointment.ref, e.reason) for e in cancelled] == [("Appointment/a1", "deleted")]
    assert adapter.get("/Appointment/a1").status_code == 410
    assert adapter.get("/Appointment/a2").status_code == 200
    assert state(adapter, sid).last_event_number == number


@pytest.mark.parametrize("status", [405, 501])
def test_without_events_nor_history_a_gap_is_recovered_by_search_alone_and_that_is_said_once(
        adapter, upstream, caplog, monkeypatch, status):
    monkeypatch.setattr(upstream_module, "_WITHOUT_HISTORY", set())  # said once a process
    upstream.events_supported, upstream.history_status = False, status
    sid = subscribed(adapter, upstream)
    with caplog.at_level(logging.WARNING, logger="fhir.upstream"):
        for aid in ("a1", "a2"):
            book(upstream, aid)  # missed
            number = book(upstream, aid + "-seen")
            response = notify(adapter, upstream.notification(sid, "event-notification", [number], full=True))
            assert response.status_code == 200, response.text
    assert sorted(e.appointment.ref for e in adapter.events) == [
        "Appointment/a1", "Appointment/a1-seen", "Appointment/a2", "Appointment/a2-seen"]
    said = [r.getMessage() for r in caplog.records if "_history" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{upstream.url} answered {status} to Appointment/_history")


def test_without_events_a_history_that_fails_otherwise_refuses_the_notification_for_a_retry(adapter, upstream):
    upstream.events_supported, upstream.history_status = False, 503
    sid = subscribed(adapter, upstream)
    book(upstream, "a1")  # missed
    number = book(upstream, "a2")
    response = notify(adapter, upstream.notification(sid, "event-notification", [number], full=True))
    assert response.status_code == 502
    assert adapter.events == [] and state(adapter, sid).last_event_number == 0
    upstream.history_status = 200  # the server's retry
    assert notify(adapter, upstream.notification(sid, "event-notification", [number], full=True)).status_code == 200
    assert sorted(e.appointment.ref for e in adapter.events) == ["Appointment/a1", "Appointment/a2"]
