"""HL7 v2 messages written the way other systems and toolkits write them
(tests/samples/hl7/realworld/, README.md there says who writes each quirk and where it
was seen): each is sent over a real MLLP socket to a running adapter with the shipped
config/facilities.yaml, and what became of it is read back from ``/api/messages``; the
events it maps to are checked with ``map_message`` on the same bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapter.events import AnyEvent
from hl7.client import send_messages
from hl7.facilities import load_facilities
from hl7.header import decode, read_header
from hl7.mapping import map_message
from tests.core.test_end_to_end import wait_for
from tests.harness import running_adapter, settings_for

ROOT = Path(__file__).resolve().parents[2]
REALWORLD = ROOT / "tests" / "samples" / "hl7" / "realworld"
RECEIVED = datetime(2027, 1, 10, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Expect:
    status: str = "processed"
    error: str = ""  # a part of the error store's reason
    events: Callable[[list[AnyEvent]], object] | None = None  # asserts on map_message's events


def _one(kind: str, **checks: object) -> Callable[[list[AnyEvent]], None]:
    def check(events: list[AnyEvent]) -> None:
        assert [type(e).__name__ for e in events] == [kind]
        for name, want in checks.items():
            got = _value(events[0], name)
            assert got == want, f"{name}: {got!r}, want {want!r}"
    return check


def _value(event: AnyEvent, name: str) -> object:
    patient = getattr(event, "patient", None)
    if name == "key":
        return (patient.key.system, patient.key.value)
    if name == "telecom":
        return [(c.system, c.value) for c in patient.telecom]
    if name in ("language", "given_name", "family_name"):
        return getattr(patient, name)
    if name == "start":
        return event.appointment.start
    if name == "ref":
        return event.appointment.ref
    return getattr(event, name)


CASES: dict[str, Expect] = {
    "siu_s12_numeric_control_id.hl7": Expect(events=_one(
        "AppointmentBooked", key=("POLI_VERDI", "M000045567"), start=datetime(2027, 12, 12, 8, 30, tzinfo=UTC))),
    "adt_a08_numeric_facility.hl7": Expect(events=_one(
        "PatientUpdated", key=("18802555", "500036547"), telecom=[("phone", "+393331234567")], language="it")),
    "siu_s12_start_in_sch11_1.hl7": Expect(events=_one(
        "AppointmentBooked", start=datetime(2027, 12, 13, 8, 45, tzinfo=UTC))),
    "siu_s12_v27_start_in_tq1.hl7": Expect(events=_one(
        "AppointmentBooked", start=datetime(2027, 12, 3, 9, 15, tzinfo=UTC), telecom=[("phone", "+393477654321")])),
    "siu_s12_patient_id_type_pi.hl7": Expect(events=_one(
        "AppointmentBooked", key=("www.praxis-esempio.it", "s1299de4014"), start=datetime(2027, 12, 16, 12, tzinfo=UTC),
        telecom=[("phone", "+393331234567"), ("email", "nicolo.dalo@example.it")])),
    "adt_a08_escape_x_utf16_8859.hl7": Expect(events=_one(
        "PatientUpdated", key=("X1V1_MPI", "5928948"), given_name="Nicolò", family_name="D'Alò",
        telecom=[("phone", "+393331234567")])),
    "siu_s12_email_beside_phone.hl7": Expect(events=_one(
        "AppointmentBooked", key=("MR", "123456"), language="it", start=datetime(2027, 12, 27, 7, 15, tzinfo=UTC),
        telecom=[("phone", "+393331234567"), ("email", "nicolo.dalo@example.it"), ("phone", "+393337654321")])),
    "siu_s14_status_canceled_us_spelling.hl7": Expect(events=_one("AppointmentCancelled", reason="cancelled")),
    # About the appointment siu_s12_patient_id_type_pi.hl7 books (sent before them): applied for its patient.
    "siu_s13_no_pid.hl7": Expect(events=_one(
        "AppointmentRescheduled", patient=None, ref="hl7:samedi-hl7gateway^samedi:a-qcdl7hwscfuze4w",
        start=datetime(2027, 12, 17, 8, 0, tzinfo=UTC))),
    "siu_s15_no_pid.hl7": Expect(events=_one(
        "AppointmentCancelled", patient=None, ref="hl7:samedi-hl7gateway^samedi:a-qcdl7hwscfuze4w", reason="cancelled")),
    "adt_a08_empty_sender_untyped_id.hl7": Expect("error", (
        "no patient key in PID-3 (facility (empty MSH-4)): it has type/authority (none)/PVS1; patient_key tries "
        "MR/any, PI/any (config/facilities.yaml, the default entry: it has none of its own)")),
    "oru_r01_untyped_patient_id.hl7": Expect("error", (
        "no patient key in PID-3 (facility LAB_SUD): it has type/authority (none)/(none); patient_key tries "
        "MR/any, PI/any (config/facilities.yaml, the default entry: it has none of its own)")),
}


def _wire(name: str) -> bytes:
    return (REALWORLD / name).read_bytes()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    """Every sample sent once, over one MLLP connection, and each one's row in the
    message store once processed (or refused)."""
    with running_adapter(settings_for(tmp_path_factory.mktemp("realworld"))) as adapter:
        names = sorted(CASES)
        acks = asyncio.run(send_messages([_wire(n) for n in names], "127.0.0.1", adapter.mllp_port))
        officer = adapter.client("officer")
        rows: dict[str, dict] = {}
        for name, ack in zip(names, acks, strict=True):
            control_id = read_header(_wire(name)).control_id

            def settled(control_id: str = control_id) -> dict | None:
                items = officer.get("/api/messages", params={"control_id": control_id}).json()["items"]
                return items[0] if items and items[0]["status"] != "stored" else None

            rows[name] = {**wait_for(settled), "ack": ack.outcome}
        yield rows


def test_every_real_world_sample_has_an_expected_outcome():
    assert sorted(p.name for p in REALWORLD.glob("*.hl7")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_real_world_message_is_taken_and_means_what_its_sender_meant(name, outcomes):
    expect, row = CASES[name], outcomes[name]
    assert row["ack"] in ("AA", "CA", "no ACK expected"), row
    assert row["status"] == expect.status, row
    assert expect.error in (row["error"] or ""), row
    if expect.events is not None:
        raw = _wire(name)
        facilities = load_facilities(ROOT / "config" / "facilities.yaml")
        expect.events(map_message(decode(raw, read_header(raw)), facilities, received_at=RECEIVED))
