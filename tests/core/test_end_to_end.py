"""Issue 3's walking skeleton, through the public surfaces: FHIR over real HTTP,
HL7 over a real MLLP socket, real databases, the sandbox channel."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from adapter import demo
from adapter.db import transaction
from adapter.models import Notification, OutboxMessage
from hl7.client import read_ack_code, send_messages
from tests.fhir.test_validation_pool import started
from tests.harness import running_adapter, settings_for

FHIR = {"Content-Type": "application/fhir+json"}


def patient(pid: str, phone: str = "+393331234567", language: str = "it") -> dict:
    """The demo's Patient builder, with an Italian name that tests the accents."""
    return demo.patient(pid, "Nicolò", "D'Alò", phone, language)


appointment = demo.appointment


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def notifications(client, **params) -> list[dict]:
    response = client.get("/api/notifications", params={"limit": 1000, **params})
    response.raise_for_status()
    return response.json()["items"]


def outbox_count(adapter) -> int:
    with transaction(adapter.container.sessions) as session:
        return session.scalar(select(func.count()).select_from(OutboxMessage))


def test_fhir_booking_confirms_at_once_and_schedules_reminders_that_follow_the_appointment(tmp_path, database_url):
    with running_adapter(settings_for(tmp_path, database_url)) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        assert ehr.put("/fhir/R4/Patient/p1", json=patient("p1"), headers=FHIR).status_code in (200, 201)
        created = ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", start), headers=FHIR)
        assert created.status_code in (200, 201), created.text

        wait_for(lambda: outbox_count(adapter) >= 1, timeout=5)
        with transaction(adapter.container.sessions) as session:
            confirmation = session.scalar(select(Notification).where(Notification.kind == "booking_confirmation"))
            outboxed = session.scalar(select(OutboxMessage.created_at))
        # Issue 3: in the outbox within a second of the booking being stored (the adapter's
        # own timestamps, so a slow test client does not count).
        assert outboxed - confirmation.created_at < timedelta(seconds=1)
        items = notifications(officer)
        reminders = sorted(datetime.fromisoformat(i["scheduled_for"]) for i in items if i["kind"] == "reminder")
        assert reminders == [start - timedelta(hours=24), start - timedelta(hours=2)]
        # Its outcome is recorded just after the send (in the outbox already).
        wait_for(lambda: [i["status"] for i in notifications(officer) if i["kind"] == "booking_confirmation"]
                 == ["sent"], timeout=5)

        moved = start + timedelta(days=1)
        assert ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", moved), headers=FHIR).status_code == 200
        adapter.fhir_processed()
        items = notifications(officer)
        pending = sorted(datetime.fromisoformat(i["scheduled_for"]) for i in items if i["kind"] == "reminder" and i["status"] == "scheduled")
        assert pending == [moved - timedelta(hours=24), moved - timedelta(hours=2)]
        wait_for(lambda: any(i["kind"] == "reschedule_notice" and i["status"] == "sent" for i in notifications(officer)))

        assert ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", moved, "cancelled"), headers=FHIR).status_code == 200
        adapter.fhir_processed()
        items = notifications(officer)
        assert not [i for i in items if i["kind"] == "reminder" and i["status"] == "scheduled"]
        assert all(i["reason"] for i in items if i["status"] == "cancelled")
        wait_for(lambda: any(i["kind"] == "cancellation_notice" and i["status"] == "sent" for i in notifications(officer)))


def siu(trigger: str, control_id: str, start: datetime, status: str = "Booked") -> bytes:
    ts = start.strftime("%Y%m%d%H%M%S+0000")
    return ("\r".join([
        f"MSH|^~\\&|CUP|OSP_TEST|ADAPTER|NOTIFY|20260101000000||SIU^{trigger}^SIU_S12|{control_id}|P|2.5||||||UNICODE UTF-8",
        f"SCH|PL1^CUP|FL1^OSP_TEST|||||VIS^Visita||30|min|^^^{ts}||||||||||||||{status}",  # SCH-25 filler status
        "PID|1||0012345^^^OSP_TEST^MR||D'Alò^Nicolò||19800101|M|||||^PRN^CP^^39^333^1234567||it",
        f"AIS|1||CARD01^Visita^L|{ts}|0|min|30|min",
    ]) + "\r").encode()


def test_siu_booking_reschedule_and_cancel_over_mllp_are_acknowledged_and_applied(tmp_path, database_url):
    with running_adapter(settings_for(tmp_path, database_url)) as adapter:
        officer = adapter.client("officer")
        start = (datetime.now(UTC) + timedelta(days=3)).replace(second=0, microsecond=0)
        messages = [siu("S12", "C1", start), siu("S13", "C2", start + timedelta(days=1)), siu("S15", "C3", start + timedelta(days=1), "Cancelled")]
        results = asyncio.run(send_messages(messages, "127.0.0.1", adapter.mllp_port))
        assert [(r.code.value, read_ack_code(r.ack)[1]) for r in results] == [("AA", "C1"), ("AA", "C2"), ("AA", "C3")]
        items = wait_for(lambda: [i for i in notifications(officer) if i["kind"] == "cancellation_notice"] and notifications(officer))
        kinds = {i["kind"] for i in items}
        assert {"booking_confirmation", "reminder", "reschedule_notice", "cancellation_notice"} <= kinds
        assert not [i for i in items if i["kind"] == "reminder" and i["status"] == "scheduled"]


def test_retransmitted_control_id_is_acknowledged_and_processed_once(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        start = datetime.now(UTC) + timedelta(days=3)
        message = siu("S12", "DUP1", start)
        first, second = asyncio.run(send_messages([message, message], "127.0.0.1", adapter.mllp_port))
        assert first.code.value == second.code.value == "AA"
        officer = adapter.client("officer")
        wait_for(lambda: notifications(officer))
        assert len([i for i in notifications(officer) if i["kind"] == "booking_confirmation"]) == 1
        stored = officer.get("/api/messages", params={"control_id": "DUP1"}).json()["items"]
        assert len(stored) == 1 and stored[0]["duplicates"] == 1


def test_bytes_that_are_not_hl7_get_ar_with_err_and_the_listener_keeps_serving(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        bad, good = asyncio.run(
            send_messages([b"hello, this is not HL7", siu("S12", "OK1", datetime.now(UTC) + timedelta(days=2))], "127.0.0.1", adapter.mllp_port)
        )
        assert bad.code.value == "AR" and b"\rERR|" in bad.ack
        assert good.code.value == "AA"
        response = adapter.client("ehr").post("/hl7/v2", content=b"PID|1||x", headers={"Content-Type": "application/hl7-v2"})
        assert response.status_code == 200 and "MSA|AR" in response.text and "ERR|" in response.text


def test_malformed_fhir_json_gets_a_400_operation_outcome(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        response = adapter.client("ehr").post("/fhir/R4/Appointment", content=b"{not json", headers=FHIR)
        assert response.status_code == 400
        assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("role, expected", [(None, 401), ("bogus", 401), ("officer", 403), ("ehr", 201)])
def test_fhir_writes_need_an_ehr_token(tmp_path, role, expected):
    with running_adapter(settings_for(tmp_path)) as adapter:
        headers = dict(FHIR)
        if role:
            headers["Authorization"] = f"Bearer {adapter.tokens.get(role, 'adp_wrong')}"
        import httpx

        response = httpx.post(f"{adapter.base_url}/fhir/R4/Patient", json=patient("x"), headers=headers)
        assert response.status_code == expected


def test_health_needs_no_token_and_reports_the_database(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        import httpx

        assert httpx.get(f"{adapter.base_url}/health/live").json() == {"status": "ok"}
        ready = httpx.get(f"{adapter.base_url}/health/ready").json()
        assert ready["checks"]["database"] == "ok"
        assert httpx.get(f"{adapter.base_url}/api/notifications").status_code == 401


def test_metrics_count_messages_and_acks_without_personal_data(tmp_path):
    from prometheus_client import parser

    def accepted(text: str) -> float:
        for family in parser.text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "adapter_messages_received_total" and sample.labels == {"source": "hl7", "outcome": "AA"}:
                    return sample.value
        return 0.0

    with running_adapter(settings_for(tmp_path)) as adapter:
        officer = adapter.client("officer")
        before = accepted(officer.get("/metrics").text)
        asyncio.run(send_messages([siu("S12", "M1", datetime.now(UTC) + timedelta(days=2))], "127.0.0.1", adapter.mllp_port))
        wait_for(lambda: notifications(officer))
        text = officer.get("/metrics").text
        assert accepted(text) == before + 1
        assert "adapter_ack_latency_seconds_count" in text and "adapter_notifications_due" in text
        assert 'adapter_hospital_messages_failed{kind="writeback"} 0.0' in text
        assert "Nicol" not in text and "3331234567" not in text and "D'Al" not in text
        import httpx

        assert httpx.get(f"{adapter.base_url}/metrics").status_code == 401


def test_error_store_keeps_unmappable_messages_and_replay_processes_them_after_a_config_fix(tmp_path):
    import shutil

    from hl7.facilities import load_facilities

    config = tmp_path / "config"
    shutil.copytree("config", config)
    facilities = config / "facilities.yaml"
    strict = "facilities:\n  default:\n    start_time: [SCH-11]\n"
    facilities.write_text(strict)
    with running_adapter(settings_for(tmp_path, config_dir=config)) as adapter:
        start = datetime.now(UTC) + timedelta(days=2)
        ts = start.strftime("%Y%m%d%H%M%S+0000").encode()
        only_ais4 = siu("S12", "E1", start).replace(b"|^^^" + ts + b"|", b"||")
        (result,) = asyncio.run(send_messages([only_ais4], "127.0.0.1", adapter.mllp_port))
        assert result.code.value == "AA"  # acknowledged once stored; mapping errors go to the error store
        officer = adapter.client("officer")
        errors = wait_for(lambda: officer.get("/api/messages", params={"status": "error"}).json()["items"])
        assert errors[0]["control_id"] == "E1" and errors[0]["error"]
        assert not notifications(officer)

        facilities.write_text("facilities:\n  default:\n    start_time: [SCH-11, AIS-4]\n")
        adapter.container.intake.facilities = load_facilities(facilities)
        assert adapter.container.intake.replay([errors[0]["id"]]) == {errors[0]["id"]: "processed"}
        assert any(i["kind"] == "booking_confirmation" for i in notifications(officer))


def test_a_transaction_bundle_posted_to_the_bare_base_url_is_accepted(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"fullUrl": "urn:uuid:11111111-2222-3333-4444-555555555555",
                 "resource": {k: v for k, v in patient("x").items() if k != "id"},
                 "request": {"method": "POST", "url": "Patient"}},
                {"resource": {**{k: v for k, v in appointment("x", "x", start).items() if k != "id"},
                              "participant": [{"actor": {"reference": "urn:uuid:11111111-2222-3333-4444-555555555555"}, "status": "accepted"}]},
                 "request": {"method": "POST", "url": "Appointment"}},
            ],
        }
        response = adapter.client("ehr").post("/fhir/R4", json=bundle, headers=FHIR)
        assert response.status_code == 200, response.text
        assert response.json()["type"] == "transaction-response"
        adapter.fhir_processed()
        reminders = [i for i in notifications(adapter.client("officer")) if i["kind"] == "reminder"]
        assert len(reminders) == 2


def test_a_silent_fhir_subscription_raises_an_alert_in_readiness_metrics_and_console(tmp_path):
    from adapter.clock import FrozenClock
    from fhir.models import FhirSubscription

    clock = FrozenClock(datetime.now(UTC))
    with running_adapter(settings_for(tmp_path), clock=clock) as adapter:
        import httpx

        assert httpx.get(f"{adapter.base_url}/health/ready").json()["checks"]["fhir_subscriptions"] == "ok"
        with transaction(adapter.container.sessions) as session:
            session.add(FhirSubscription(
                url="http://127.0.0.1:9/fhir/Subscription/s1", server="http://127.0.0.1:9/fhir", topic="t",
                resource_type="Appointment", content="id-only", heartbeat_period_s=60, status="active",
                created_at=clock.now()))
        clock.advance(timedelta(minutes=5))  # no heartbeat for 5 periods
        ready = httpx.get(f"{adapter.base_url}/health/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["fhir_subscriptions"] == "1 silent"
        assert "adapter_fhir_subscriptions_silent 1.0" in adapter.client("officer").get("/metrics").text
        console = httpx.Client(base_url=adapter.base_url, cookies={"adapter_console_token": adapter.tokens["officer"]})
        page = console.get("/ui/")
        assert page.status_code == 200 and "Subscription/s1" in page.text


def test_a_large_bundle_is_validated_in_a_helper_process_with_the_same_answers(tmp_path):
    start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)

    def bundle(patients: int) -> dict:
        entry = []
        for i in range(patients):
            ref = f"urn:uuid:00000000-0000-4000-8000-{i:012d}"
            entry.append({"fullUrl": ref, "resource": {k: v for k, v in patient("x", phone=f"+3933312345{i:02d}").items() if k != "id"},
                          "request": {"method": "POST", "url": "Patient"}})
            entry.append({"resource": {**{k: v for k, v in appointment("x", "x", start + timedelta(hours=i)).items() if k != "id"},
                                       "participant": [{"actor": {"reference": ref}, "status": "accepted"}]},
                          "request": {"method": "POST", "url": "Appointment"}})
        return {"resourceType": "Bundle", "type": "transaction", "entry": entry}

    with running_adapter(settings_for(tmp_path, fhir_validation_processes=1)) as adapter:
        ehr = adapter.client("ehr")
        validator = adapter.container.fhir.service.validator
        assert validator.helper_pids() == []  # none until a large Bundle arrives
        first = ehr.post("/fhir/R4", json=bundle(5), headers=FHIR)  # validated in serve while the helper starts
        assert first.status_code == 200, first.text
        started(validator)
        bad = bundle(6)
        bad["entry"][7]["resource"]["status"] = "bogus"
        refused = ehr.post("/fhir/R4", json=bad, headers=FHIR)
        assert refused.status_code == 400, refused.text
        assert [i["expression"] for i in refused.json()["issue"]] == [["Bundle.entry[7].resource.status"]]
        helpers = validator.helper_pids()
        assert len(helpers) == 1 and helpers[0] != os.getpid()
        accepted = ehr.post("/fhir/R4", json=bundle(6), headers=FHIR)
        assert accepted.status_code == 200, accepted.text
        adapter.fhir_processed()
        reminders = [i for i in notifications(adapter.client("officer")) if i["kind"] == "reminder"]
        assert len(reminders) == 22  # two for each of the 5 + 6 appointments; none for the refused Bundle
    assert validator.helper_pids() == []  # stopped with serve
