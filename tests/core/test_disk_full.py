"""A clinic's SQLite disk fills up while the adapter serves, and is freed again.

"Full" is SQLite's ``PRAGMA max_page_count`` on every connection of the running
adapter: a write that needs a new page fails with SQLITE_FULL ("database or disk is
full"), the error a full disk gives. Messages carry a Z-segment larger than a page,
so storing one always needs new pages. Nothing of the adapter is replaced."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.pool import Pool

from hl7.client import send_messages
from hl7.header import read_header
from tests.core.test_end_to_end import FHIR, notifications, outbox_count, patient, siu, wait_for
from tests.harness import migrated_container, running_adapter, settings_for

UNLIMITED = 1_073_741_823  # SQLite's default max_page_count
PATIENT_NAME = "Nicolò"  # in every message; never in an answer or a log line


class Disk:
    """Every SQLite connection this process opens, and whether their database may grow."""

    def __init__(self) -> None:
        self.connections: list = []
        self.limit: int | None = None

    def _connected(self, dbapi_connection, _record) -> None:  # noqa: ANN001
        self.connections.append(dbapi_connection)
        if self.limit is not None:
            dbapi_connection.execute(f"PRAGMA max_page_count={self.limit}")

    def _set(self, limit: int) -> None:
        for connection in self.connections:
            try:
                connection.execute(f"PRAGMA max_page_count={limit}")  # below the size it stays at the size
            except Exception:  # noqa: BLE001 - closed since
                pass

    def fill(self) -> None:
        """No new page from now on, on every connection, in use or pooled or to come."""
        self.limit = 1
        self._set(1)

    def free(self) -> None:
        self.limit = None
        self._set(UNLIMITED)


@contextmanager
def a_disk() -> Iterator[Disk]:
    disk = Disk()
    event.listen(Pool, "connect", disk._connected)
    try:
        yield disk
    finally:
        event.remove(Pool, "connect", disk._connected)


def large(message: bytes) -> bytes:
    """``message`` with a Z-segment (kept and ignored) larger than a database page."""
    return message + b"ZXX|1|" + b"x" * 12_000 + b"\r"


def ack_text(ack: bytes) -> str:
    return ack.decode("utf-8", "replace")


@pytest.mark.timeout(120)
def test_mllp_while_the_disk_is_full_is_answered_ae_saying_why_and_resent_messages_are_stored_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    start = datetime.now(UTC) + timedelta(days=3)
    with a_disk() as disk, running_adapter(settings_for(tmp_path)) as adapter:
        ready = f"{adapter.base_url}/health/ready"
        [first] = asyncio.run(send_messages([large(siu("S12", "BEFORE", start))], "127.0.0.1", adapter.mllp_port))
        assert first.code.value == "AA"
        disk.fill()
        messages = [large(siu("S12", f"FULL{i}", start)) for i in range(12)]
        answers = asyncio.run(asyncio.wait_for(
            send_messages(messages, "127.0.0.1", adapter.mllp_port, connections=4, retries=0), 60))
        for answer in answers:  # every one answered, none accepted, each saying why
            assert answer.code is not None and answer.code.value == "AE", answer
            text = ack_text(answer.ack)
            assert "ERR|" in text and "could not be stored" in text and "database is full" in text, text
            assert PATIENT_NAME not in text
        assert httpx.get(f"{adapter.base_url}/health/live").status_code == 200  # the loop serves on
        down = httpx.get(ready)
        assert down.status_code == 503 and down.json()["checks"]["database"].startswith("full"), down.text
        metrics = adapter.client("officer").get("/metrics").text
        assert "adapter_database_full 1.0" in metrics and "adapter_database_full_refusals_total 0.0" not in metrics
        said = [r.getMessage() for r in caplog.records if "database full" in r.getMessage()]
        assert len(said) == 1, said  # one line for the episode, not one per message
        assert not [r for r in caplog.records if r.exc_info and r.name.startswith("adapter.intake")]
        assert all(PATIENT_NAME not in r.getMessage() for r in caplog.records)

        disk.free()
        wait_for(lambda: httpx.get(ready).status_code == 200, 10)  # nothing needed to write to notice
        again = asyncio.run(send_messages(messages, "127.0.0.1", adapter.mllp_port, connections=4))
        assert [a.code.value for a in again] == ["AA"] * len(messages)
        resent = asyncio.run(send_messages(messages[:1], "127.0.0.1", adapter.mllp_port))
        assert resent[0].code.value == "AA"
        officer = adapter.client("officer")
        stored = wait_for(lambda: (items := officer.get("/api/messages", params={"limit": 100}).json()["items"])
                          and all(i["status"] in ("processed", "duplicate") for i in items) and items, 30)
        by_id = {i["control_id"]: i for i in stored}
        assert sorted(by_id) == sorted(["BEFORE", *(f"FULL{i}" for i in range(12))])
        assert by_id["FULL0"]["duplicates"] == 1 and by_id["FULL1"]["duplicates"] == 0  # stored once, resent once
        assert [n for n in notifications(officer) if n["kind"] == "booking_confirmation"]
        assert len([r for r in caplog.records if "writable again" in r.getMessage()]) == 1
        assert "adapter_database_full 0.0" in officer.get("/metrics").text


def booking(number: int, start: datetime) -> bytes:
    """A booking of patient ``number``: their own MRN, appointment and mobile number."""
    return (siu("S12", f"B{number}", start)
            .replace(b"0012345^^^", f"{number:07d}^^^".encode())
            .replace(b"PL1^CUP", f"PL{number}^CUP".encode()).replace(b"FL1^OSP", f"FL{number}^OSP".encode())
            .replace(b"^333^1234567", f"^333^{number:07d}".encode()))


@pytest.mark.timeout(120)
def test_messages_stored_before_the_disk_filled_wait_and_are_processed_once_when_space_returns(tmp_path, caplog):
    """Mapping them needs space: while there is none they stay stored, none goes to the
    error store, no round logs a traceback; freed, each is processed and its patient
    told once, without a restart."""
    caplog.set_level(logging.INFO)
    settings = settings_for(tmp_path)
    start = datetime.now(UTC) + timedelta(days=3)
    container = migrated_container(settings)

    async def store() -> None:
        for number in range(40):
            raw = booking(number, start)
            await container.intake.writer.store(read_header(raw), raw)
        await container.intake.writer.stop()

    asyncio.run(store())
    container.engine.dispose()
    with a_disk() as disk:
        disk.fill()
        with running_adapter(settings) as adapter:
            ready = f"{adapter.base_url}/health/ready"
            wait_for(lambda: httpx.get(ready).status_code == 503, 10)  # a mapping round was refused
            officer = adapter.client("officer")
            for _ in range(3):  # rounds come once a second while messages wait
                wait_for(lambda: officer.get("/api/messages", params={"status": "stored"}).json()["total"] == 40, 5)
                time.sleep(1)
            assert officer.get("/api/messages", params={"status": "error"}).json()["total"] == 0
            assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]

            disk.free()
            wait_for(lambda: officer.get("/api/messages", params={"status": "processed"}).json()["total"] == 40, 30)
            confirmations = wait_for(lambda: len(sent := [n for n in notifications(officer)
                                                          if n["kind"] == "booking_confirmation" and n["status"] == "sent"])
                                     == 40 and sent, 30)
            assert len({n["patient"] for n in confirmations}) == 40
            assert outbox_count(adapter) == 40
            assert officer.get("/api/messages", params={"status": "error"}).json()["total"] == 0


@pytest.mark.timeout(120)
def test_a_fhir_write_while_the_disk_is_full_is_a_503_operation_outcome_to_retry_and_stores_nothing(tmp_path, caplog):
    with a_disk() as disk, running_adapter(settings_for(tmp_path)) as adapter:
        ehr = adapter.client("ehr")
        resource = patient("p1")
        resource["text"] = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">'
                                                          + "x" * 12_000 + "</div>"}  # larger than a page
        disk.fill()
        refused = ehr.put("/fhir/R4/Patient/p1", json=resource, headers=FHIR)
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("application/fhir+json")
        assert int(refused.headers["retry-after"]) > 0
        [issue] = refused.json()["issue"]
        assert issue["code"] == "no-store" and "database is full" in issue["diagnostics"], issue
        assert "Nicol" not in refused.text
        assert not [r for r in caplog.records if r.exc_info and r.name.startswith("fhir")]

        disk.free()
        assert ehr.get("/fhir/R4/Patient/p1").status_code == 404  # nothing was half-stored
        assert ehr.put("/fhir/R4/Patient/p1", json=resource, headers=FHIR).status_code == 201


@pytest.mark.timeout(120)
def test_a_provider_callback_while_the_disk_is_full_is_a_503_to_retry_not_a_500(tmp_path, caplog):
    from channels.sandbox import LOCAL_DEVELOPMENT_SECRET, SIGNATURE_HEADER, sign

    with a_disk() as disk, running_adapter(settings_for(tmp_path)) as adapter:
        body = json.dumps({"statuses": [], "note": "x" * 12_000}).encode()  # larger than a page
        headers = {SIGNATURE_HEADER: sign(body, LOCAL_DEVELOPMENT_SECRET), "Content-Type": "application/json"}
        disk.fill()
        refused = httpx.post(f"{adapter.base_url}/webhooks/sandbox/status", content=body, headers=headers)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0, refused.text
        assert "database is full" in refused.json()["detail"]
        assert not [r for r in caplog.records if r.exc_info]
        disk.free()
        taken = httpx.post(f"{adapter.base_url}/webhooks/sandbox/status", content=body, headers=headers)
        assert taken.status_code == 200, taken.text
