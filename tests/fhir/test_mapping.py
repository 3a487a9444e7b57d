"""mapping.events_for and validate, with plain values (no I/O)."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from adapter.db import Base, make_engine, make_sessionmaker, transaction
from adapter.events import Origin
from fhir import capability, history, mapping, outcome, service, subscriptions, validate
from fhir.errors import FhirError
from fhir.models import TABLES
from fhir.store import append
from tests.fhir.conftest import AesGcmCodec

NOW = datetime(2030, 11, 20, tzinfo=UTC)
ORIGIN = Origin("fhir", "test")


def appt(status, start="2030-12-01T09:00:00Z"):
    return {"resourceType": "Appointment", "id": "a", "status": status, "start": start,
            "participant": [{"actor": {"reference": "Patient/p"}, "status": "accepted"}]}


def kinds(new, previous=None, kind="Appointment"):
    return [type(e).__name__ for e in mapping.events_for(
        kind, new, previous, origin=ORIGIN, now=NOW, patient=None)]


@pytest.mark.parametrize("before, after, expected", [
    (None, "booked", ["AppointmentBooked"]),
    ("proposed", "booked", ["AppointmentBooked"]),
    (None, "proposed", []),
    ("booked", "cancelled", ["AppointmentCancelled"]),
    (None, "cancelled", []),
    ("cancelled", "entered-in-error", []),
    ("booked", "noshow", ["AppointmentNoShow"]),
    ("arrived", "fulfilled", ["AppointmentFulfilled"]),
    ("fulfilled", "fulfilled", []),
    ("booked", "arrived", []),
])
def test_appointment_events_follow_status_transitions(before, after, expected):
    assert kinds(appt(after), appt(before) if before else None) == expected


def test_without_a_stored_patient_the_key_falls_back_to_the_fhir_logical_id():
    event = mapping.events_for("Appointment", appt("booked"), None, origin=ORIGIN, now=NOW,
                               patient=None)[0]
    assert (event.patient.key.system, event.patient.key.value) == ("fhir:Patient", "p")


def fhir_patient(language: str | None = None, phone: str = "+393331234567") -> dict:
    return {"resourceType": "Patient", "id": "p", "telecom": [{"system": "phone", "value": phone}],
            **({"communication": [{"language": {"coding": [{"code": language}]}}]} if language else {})}


@pytest.mark.parametrize("before, after, cleared", [
    ("en", None, {"language"}),  # an update replaces the whole resource: the language stated is withdrawn
    (None, None, set()),  # nothing stated before: nothing to withdraw (HL7 may have set one)
    ("en", "it", set()),
])
def test_a_patient_version_without_the_language_the_one_before_stated_clears_it(before, after, cleared):
    events = mapping.events_for("Patient", fhir_patient(after, phone="+393479876543"), fhir_patient(before),
                                origin=ORIGIN, now=NOW, patient=None)
    assert [set(e.patient.cleared) for e in events] == [cleared]


def test_a_first_patient_version_without_a_language_clears_nothing():
    """A create replaces no version: saying nothing of the language says nothing of it."""
    [event] = mapping.events_for("Patient", fhir_patient(), None, origin=ORIGIN, now=NOW, patient=None)
    assert event.patient.cleared == frozenset()


def named(given: list[str] | None, family: str | None) -> dict:
    return {**fhir_patient(), "name": [{"use": "official", **({"given": given} if given else {}),
                                        **({"family": family} if family else {})}]}


@pytest.mark.parametrize("before, after, cleared", [
    (named(["Nicolò"], "D'Alò"), fhir_patient(), {"given_name", "family_name"}),  # no name: withdrawn
    (named(["Nicolò"], "D'Alò"), named(None, "D'Alò"), {"given_name"}),
    (named(["Nicolò"], "D'Alò"), named(["Nicolò"], "Bertè"), set()),  # a new name: an update, nothing cleared
])
def test_a_patient_version_with_another_name_or_none_updates_the_patient(before, after, cleared):
    """A name changed alone (a marriage, a correction) used to make no event: the
    patient kept being greeted by the old name until a new booking."""
    [event] = mapping.events_for("Patient", after, before, origin=ORIGIN, now=NOW, patient=None)
    assert set(event.patient.cleared) == cleared
    assert event.patient.family_name == (after["name"][0].get("family", "") if "name" in after else "")


def test_a_patient_version_that_changes_nothing_the_adapter_uses_makes_no_event():
    assert mapping.events_for("Patient", named(["Nicolò"], "D'Alò"), named(["Nicolò"], "D'Alò"),
                              origin=ORIGIN, now=NOW, patient=None) == []


@pytest.mark.parametrize("before, after, expected", [
    (None, "preliminary", []),
    ("preliminary", "final", ["ReportReady"]),
    ("final", "final", []),
    ("final", "appended", []),
    ("final", "entered-in-error", ["ReportWithdrawn"]),
    (None, "entered-in-error", []),
])
def test_report_events_follow_status_transitions(before, after, expected):
    report = lambda s: {"resourceType": "DiagnosticReport", "id": "r", "status": s,  # noqa: E731
                        "subject": {"reference": "Patient/p"}}
    assert kinds(report(after), report(before) if before else None,
                 "DiagnosticReport") == expected


def test_nested_consent_provisions_inherit_and_intersect_periods():
    consent = {"status": "active", "provision": {
        "type": "permit", "period": {"end": "2031-01-01T00:00:00Z"},
        "provision": [{"type": "deny", "period": {"start": "2030-06-01T00:00:00Z",
                                                  "end": "2032-01-01T00:00:00Z"},
                       "actor": [{"role": {"coding": [
                           {"system": mapping.CHANNEL_CODESYSTEM, "code": "whatsapp"}]},
                                  "reference": {"reference": "Patient/p"}}]}]}}
    base, nested = mapping.flatten_consent(consent)
    assert (base.decision, base.channel) == ("permit", "*")
    assert (nested.decision, nested.purpose, nested.channel) == ("deny", "*", "whatsapp")
    assert nested.start == datetime(2030, 6, 1, tzinfo=UTC)
    assert nested.end == datetime(2031, 1, 1, tzinfo=UTC)


def test_an_unknown_telecom_system_is_a_binding_error():
    with pytest.raises(FhirError) as caught:
        validate.parse_resource(b'{"resourceType":"Patient","telecom":[{"system":"pigeon",'
                                b'"value":"x"}]}')
    assert caught.value.issues[0].expression == "Patient.telecom[0].system"


def test_the_database_refuses_the_same_source_version_twice(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'u.db'}")
    Base.metadata.create_all(engine, tables=TABLES)
    codec, sessions = AesGcmCodec(), make_sessionmaker(engine)
    row = dict(resource={"resourceType": "Patient", "id": "p"}, last_updated=NOW,
               patient_id="p", source_version="3", source_last_updated=None, sender="x")
    with transaction(sessions) as session:
        append(session, codec, version_id=1, **row)
    with pytest.raises(IntegrityError), transaction(sessions) as session:
        append(session, codec, version_id=2, **row)


@pytest.mark.parametrize("module", [capability, history, mapping, outcome, service, subscriptions,
                                    validate])
def test_the_docstring_examples_hold(module):
    assert doctest.testmod(module).failed == 0


def test_a_proposed_appointment_cancelled_before_it_was_booked_tells_nobody():
    """No confirmation went out for it: a cancellation notice would be the patient's
    first word of an appointment they never had."""
    assert kinds(appt("cancelled"), appt("proposed")) == []
    assert kinds(appt("cancelled"), appt("pending")) == []
    assert kinds(appt("cancelled"), appt("booked")) == ["AppointmentCancelled"]


def test_a_booked_appointment_given_to_another_patient_is_announced_for_them():
    """Same start, same status, another Patient participant: the core withdraws what
    the first was still to get and books it for the second (it did nothing)."""
    other = appt("booked")
    other["participant"] = [{"actor": {"reference": "Patient/q"}, "status": "accepted"}]
    assert kinds(other, appt("booked")) == ["AppointmentRescheduled"]
    assert kinds(appt("booked"), appt("booked")) == []


@pytest.mark.parametrize("end, in_use", [("2099-12-31", True), ("2020-01-01T00:00:00Z", False),
                                         (NOW.strftime("%Y-%m-%d"), True)])
def test_a_phone_is_in_use_until_its_period_ends(end, in_use):
    patient = {"resourceType": "Patient", "id": "p",
               "telecom": [{"system": "phone", "use": "mobile", "value": "+393331234567", "period": {"end": end}}]}
    details = mapping.patient_details(patient, "p", now=NOW)
    assert [t.value for t in details.telecom] == (["+393331234567"] if in_use else [])


@pytest.mark.parametrize("start, end, first, last", [
    ("2030-01", "2030-12", datetime(2030, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC)),
    ("2030", "2030", datetime(2030, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC)),
    ("2030-11-20", "2030-11-20", datetime(2030, 11, 20, tzinfo=UTC), datetime(2030, 11, 21, tzinfo=UTC)),
])
def test_a_consent_period_given_as_a_year_a_month_or_a_day_covers_all_of_it(start, end, first, last):
    """Valid R4 dateTimes: a deny "from 2030-01" made the processing fail and the
    patient got the messages the Consent refused."""
    consent = {"resourceType": "Consent", "status": "active", "patient": {"reference": "Patient/p"},
               "provision": {"type": "deny", "period": {"start": start, "end": end}}}
    (provision,) = mapping.flatten_consent(consent)
    assert (provision.start, provision.end) == (first, last)


def test_the_service_code_is_the_first_coded_service_type_as_system_and_code():
    coded = {**appt("booked"), "serviceType": [
        {"text": "Ecografia"},
        {"coding": [{"system": "urn:oid:2.16.840.1.113883.2.9.6.1.11", "code": "88.74.1", "display": "Eco addome"}]}]}
    [event] = mapping.events_for("Appointment", coded, None, origin=ORIGIN, now=NOW, patient=None)
    assert event.appointment.service_code == "urn:oid:2.16.840.1.113883.2.9.6.1.11|88.74.1"
    bare = {**appt("booked"), "serviceType": [{"coding": [{"code": "ECO-ADD"}]}]}
    [event] = mapping.events_for("Appointment", bare, None, origin=ORIGIN, now=NOW, patient=None)
    assert event.appointment.service_code == "ECO-ADD"
    [event] = mapping.events_for("Appointment", appt("booked"), None, origin=ORIGIN, now=NOW, patient=None)
    assert event.appointment.service_code == ""
