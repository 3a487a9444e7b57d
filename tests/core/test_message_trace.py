"""What became of one inbound message (``GET /api/messages/{id}``, ``hl7 trace``): the
notifications it planned and withdrew, its application ACK, its place in the error
store; found by the message's id whatever else is stored."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from adapter.app_acks import ApplicationAckSender
from adapter.clock import FrozenClock
from adapter.db import read_transaction, transaction
from adapter.message_trace import messages_with_control_id, trace
from adapter.models import InboundRaw
from hl7.client import send_messages
from hl7.header import read_header
from tests.core.test_app_acks import adapter_for, free_port, owe_application_acks
from tests.core.test_cli import cli, cli_side_by_side
from tests.core.test_cli_error_store import siu_without_start, store
from tests.core.test_end_to_end import FHIR, appointment, patient, siu, wait_for
from tests.harness import SqliteSteps, migrated_container, running_adapter, settings_for

PERSONAL = ("Nicol", "D'Al", "0012345", "3331234567", "0099999")


def message_id(client, control_id: str) -> int:  # noqa: ANN001
    [item] = client.get("/api/messages", params={"control_id": control_id}).json()["items"]
    return item["id"]


def processed(client, control_id: str) -> dict:  # noqa: ANN001
    """The trace of ``control_id``'s message once it is processed."""
    def done() -> dict | None:
        items = client.get("/api/messages", params={"control_id": control_id}).json()["items"]
        return items[0] if items and items[0]["status"] == "processed" else None

    wait_for(done)
    response = client.get(f"/api/messages/{message_id(client, control_id)}")
    assert response.status_code == 200, response.text
    return response.json()


def test_a_booking_traces_to_what_it_planned_and_a_reschedule_to_the_reminders_it_moved(tmp_path, database_url):
    with running_adapter(settings_for(tmp_path, database_url)) as adapter:
        officer, ehr = adapter.client("officer"), adapter.client("ehr")
        start = (datetime.now(UTC) + timedelta(days=3)).replace(second=0, microsecond=0)
        moved = start + timedelta(days=1)
        [booked] = asyncio.run(send_messages([siu("S12", "TRACE1", start)], "127.0.0.1", adapter.mllp_port))
        assert booked.code.value == "AA"
        booking = processed(officer, "TRACE1")
        assert {k: booking[k] for k in ("source", "sender", "control_id", "type", "status")} == {
            "source": "hl7", "sender": "CUP^OSP_TEST", "control_id": "TRACE1", "type": "SIU^S12", "status": "processed"}
        planned = sorted((n["kind"], n["scheduled_for"]) for n in booking["caused"])
        assert planned == sorted([
            ("booking_confirmation", planned[0][1]), ("follow_up", planned[1][1]),
            ("reminder", (start - timedelta(hours=24)).isoformat()), ("reminder", (start - timedelta(hours=2)).isoformat())])
        assert booking["withdrew"] == [] and booking["application_ack"] is None and booking["error_store"] is None
        assert set(booking["caused"][0]) == {"id", "patient", "kind", "status", "channel", "scheduled_for", "status_at",
                                             "reason"}
        # The confirmation goes at once: the trace says it was sent, and by which channel.
        wait_for(lambda: [n for n in processed(officer, "TRACE1")["caused"]
                          if n["kind"] == "booking_confirmation" and n["status"] == "sent" and n["channel"] == "sandbox"])
        timed = sorted(n["id"] for n in booking["caused"] if n["kind"] in ("reminder", "follow_up"))

        asyncio.run(send_messages([siu("S13", "TRACE2", moved)], "127.0.0.1", adapter.mllp_port))
        reschedule = processed(officer, "TRACE2")
        assert sorted((n["kind"], n["scheduled_for"]) for n in reschedule["caused"] if n["kind"] == "reminder") == [
            ("reminder", (moved - timedelta(hours=24)).isoformat()), ("reminder", (moved - timedelta(hours=2)).isoformat())]
        assert {"reschedule_notice", "follow_up"} <= {n["kind"] for n in reschedule["caused"]}
        # What moved: the booking's reminders and follow-up, cancelled by the reschedule and planned again.
        assert [(n["id"], n["status"]) for n in reschedule["withdrew"]] == [(i, "cancelled") for i in timed]
        assert all(n["reason"] for n in reschedule["withdrew"])
        assert {n["status"] for n in processed(officer, "TRACE1")["caused"] if n["id"] in timed} == {"cancelled"}

        # A FHIR version is a message too: its control id is Type/id/_history/N.
        assert ehr.put("/fhir/R4/Patient/p1", json=patient("p1"), headers=FHIR).status_code in (200, 201)
        assert ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", start), headers=FHIR).status_code in (200, 201)
        adapter.fhir_processed()
        fhir = processed(officer, "Appointment/a1/_history/1")
        assert fhir["source"] == "fhir" and "booking_confirmation" in {n["kind"] for n in fhir["caused"]}

        body = json.dumps([booking, reschedule, fhir])
        for personal in PERSONAL:
            assert personal not in body
        unknown = officer.get("/api/messages/999999")
        assert unknown.status_code == 404 and "999999" in unknown.json()["detail"]
        assert ehr.get(f"/api/messages/{booking['id']}").status_code == 403


def test_hl7_trace_shows_each_sender_of_a_control_id_the_error_store_and_exits_1_when_none_matches(tmp_path):
    start = datetime.now(UTC) + timedelta(days=2)
    store(tmp_path, [(timedelta(minutes=5), [
        siu("S12", "SAME1", start),
        siu("S12", "SAME1", start + timedelta(hours=1)).replace(b"|CUP|OSP_TEST|", b"|CUP|OSP_NORD|", 1)
        .replace(b"0012345^^^OSP_TEST", b"0099999^^^OSP_NORD"),
        siu_without_start("BAD1", start),
    ])])
    both, nord, bad, none, narrowed = cli_side_by_side(
        tmp_path, ["hl7", "trace", "SAME1"], ["hl7", "trace", "SAME1", "--sender", "OSP_NORD", "--json"],
        ["hl7", "trace", "BAD1", "--json"], ["hl7", "trace", "NOPE"], ["hl7", "trace", "BAD1", "--sender", "OSP_NORD"],
        env={"COLUMNS": "80"})

    assert both.returncode == 0, both.stderr
    headers = [line for line in both.stdout.splitlines() if line.startswith("message ")]
    assert len(headers) == 2 and "CUP^OSP_TEST" in headers[0] and "CUP^OSP_NORD" in headers[1]
    assert all("control id SAME1" in line and line.endswith(": processed") for line in headers)
    assert both.stdout.count("booking_confirmation") == 2 and both.stdout.count("│ planned") == 8  # whole rows
    for personal in PERSONAL:
        assert personal not in both.stdout

    assert nord.returncode == 0, nord.stderr
    [line] = nord.stdout.splitlines()
    found = json.loads(line)
    assert found["sender"] == "CUP^OSP_NORD" and len(found["caused"]) == 4 and found["withdrew"] == []

    assert bad.returncode == 0, bad.stderr
    [failed] = [json.loads(line) for line in bad.stdout.splitlines()]
    assert failed["status"] == "error" and failed["caused"] == []
    assert failed["error_store"] == {"reason": "no appointment start time in SCH-11, AIS-4, TQ1-7", "replayable": True,
                                     "not_replayable": ""}

    for nothing, said in ((none, "control id NOPE"), (narrowed, "control id BAD1 from OSP_NORD")):
        assert nothing.returncode == 1 and nothing.stdout == ""
        [line] = nothing.stderr.strip().splitlines()
        assert said in line and line.startswith("no inbound message")

    container = migrated_container(settings_for(tmp_path))  # retention deletes its raw message
    with transaction(container.sessions) as session:
        [bad_id] = messages_with_control_id(session, "BAD1")
        session.query(InboundRaw).filter(InboundRaw.message_id == bad_id).delete()
    container.engine.dispose()
    purged = cli(tmp_path, "hl7", "trace", "BAD1")
    assert purged.returncode == 0 and "not replayable: raw deleted after retention" in purged.stdout


def test_an_enhanced_mode_message_shows_its_application_ack_and_its_last_error(tmp_path):
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    container = adapter_for(tmp_path, free_port(), clock)  # the hospital's listener is down
    owe_application_acks(container, "ENH1")
    assert asyncio.run(ApplicationAckSender(container).run_once()) == 1
    container.engine.dispose()

    traced = cli(tmp_path, "hl7", "trace", "ENH1", "--json", env={"ADAPTER_CONFIG_DIR": str(tmp_path / "config")})
    assert traced.returncode == 0, traced.stderr
    found = json.loads(traced.stdout)
    ack = found["application_ack"]
    assert (ack["status"], ack["attempts"], ack["last_error"], ack["done_at"]) == (
        "pending", 1, "MLLP: ConnectionRefusedError", None)
    assert "booking_confirmation" in {n["kind"] for n in found["caused"]}
    shown = cli(tmp_path, "hl7", "trace", "ENH1", env={"ADAPTER_CONFIG_DIR": str(tmp_path / "config")})
    assert "application ACK: pending, 1 attempt, last error: MLLP: ConnectionRefusedError" in shown.stdout


def test_a_trace_costs_the_same_with_20000_unrelated_notifications_as_with_none(tmp_path):
    """A clinic holds millions of notifications after months: a trace reads its own."""
    start = datetime.now(UTC) + timedelta(days=2)
    clock = FrozenClock(datetime.now(UTC))
    container = migrated_container(settings_for(tmp_path), clock=clock)
    steps = SqliteSteps(container.engine)
    try:
        messages = [siu("S12", "COST1", start), siu("S13", "COST2", start + timedelta(days=1))]
        container.intake.writer.write([(read_header(m), m) for m in messages])
        container.intake.process_pending()
        with read_transaction(container.sessions) as session:
            [booked], [moved] = (messages_with_control_id(session, c) for c in ("COST1", "COST2"))

        def traced() -> tuple[int, int, int]:
            with read_transaction(container.sessions) as session:
                steps.reset()
                found = trace(session, moved)
                assert found is not None
                return len(found.caused), len(found.withdrew), steps.count

        caused, withdrew, alone = traced()
        assert caused >= 3 and withdrew == 3  # two reminders and the follow-up moved
        with container.engine.begin() as connection:  # others' messages planned and withdrew 20,000 more
            connection.execute(text(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
                "INSERT INTO notification (patient_id, kind, rule_id, subject_ref, scheduled_for, status, urgent,"
                " idempotency_key, status_at, created_at, tried_channels, attempts, decision, message_id, withdrawn_by)"
                " SELECT patient_id, kind, rule_id, 'other:' || i, scheduled_for, status, urgent,"
                " lower(hex(randomblob(16))), status_at, created_at, tried_channels, attempts, decision,"
                " :others + i, CASE WHEN i % 2 THEN :others + i + 1 END FROM notification, n WHERE id = :one"),
                {"others": moved + 1, "one": 1})
        with read_transaction(container.sessions) as session:
            assert trace(session, booked).caused  # the booking's own, still found
        assert traced()[:2] == (caused, withdrew)
        many = traced()[2]
        # A deeper B-tree costs a few steps more (130 → 160 here); reading the 20,000 rows
        # once would cost 60,000.
        assert 0 < alone and many < alone * 1.5, (alone, many)
    finally:
        container.engine.dispose()


def test_notifications_planned_before_the_upgrade_are_traced_by_their_why_record(tmp_path, database_url):
    """The migration files what was planned before it under the message its why-record
    names (source, sender, control id): a trace the day after the upgrade is whole."""
    from alembic import command

    from adapter.migrate import alembic_config, upgrade

    start = datetime.now(UTC) + timedelta(days=2)
    container = migrated_container(settings_for(tmp_path, database_url))
    try:
        messages = [siu("S12", "OLD1", start),
                    siu("S12", "OLD1", start).replace(b"|CUP|OSP_TEST|", b"|CUP|OSP_NORD|", 1)
                    .replace(b"0012345^^^OSP_TEST", b"0099999^^^OSP_NORD")]
        container.intake.writer.write([(read_header(m), m) for m in messages])
        container.intake.process_pending()
        with read_transaction(container.sessions) as session:
            ids = messages_with_control_id(session, "OLD1")
            before = [[n.id for n in trace(session, i).caused] for i in ids]  # type: ignore[union-attr]
        container.engine.dispose()
        command.downgrade(alembic_config(database_url), "b7d3f9a2c4e1")  # as the adapter was before
        upgrade(database_url)
        with read_transaction(container.sessions) as session:
            assert [[n.id for n in trace(session, i).caused] for i in ids] == before  # type: ignore[union-attr]
        assert len(before) == 2 and all(len(caused) == 4 for caused in before)
    finally:
        container.engine.dispose()
