"""Issue 6, the way back, end to end over real sockets: an HL7 booking → SMS at a fake
Twilio → signed status callbacks → the patient's replies → write-back to a fake FHIR
server and a test MLLP listener; STOP, wrong number and the operator queue."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from adapter.db import transaction
from adapter.models import Contact
from adapter.reply_models import WebhookEvent
from adapter.settings import CONFIG_DIR
from channels.fakes import FakeTwilio, start_fake
from hl7.ack import AckCode, build_ack
from hl7.client import send_messages
from hl7.header import read_header
from hl7.mllp import MLLPServer
from tests.core.test_end_to_end import FHIR, notifications, patient, siu, wait_for
from tests.harness import RunningAdapter, running_adapter, settings_for

PUBLIC = "https://adapter.example.org"
PHONE = "+393331234567"


class MllpListener:
    """The hospital's write-back listener: answers AE to the first ``refuse`` messages
    (to prove retries), AA after. On ``port``, or any free one."""

    def __init__(self, refuse: int = 0, *, port: int = 0) -> None:
        self.received: list[str] = []
        self.refuse = refuse
        self.loop = asyncio.new_event_loop()
        self.server = MLLPServer(self._handle, host="127.0.0.1", port=port)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    async def _handle(self, message: bytes) -> bytes:
        self.received.append(message.decode())
        code = AckCode.AE if self.refuse > 0 else AckCode.AA
        self.refuse -= 1
        return build_ack(read_header(message), code)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0.5), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class FakeFhir:
    """A hospital FHIR server holding the appointments the CUP booked."""

    appointments: dict[str, dict[str, Any]] = field(default_factory=dict)
    responses: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/fhir/Appointment")
        def search(identifier: str) -> JSONResponse:
            found = [a for a in self.appointments.values() if any(i["value"] == identifier for i in a["identifier"])]
            return JSONResponse({"resourceType": "Bundle", "type": "searchset",
                                 "entry": [{"resource": a, "search": {"mode": "match"}} for a in found]})

        @app.get("/fhir/Appointment/{aid}")
        def read(aid: str) -> JSONResponse:
            return JSONResponse(self.appointments[aid])

        @app.put("/fhir/Appointment/{aid}")
        async def update(aid: str, request: Request) -> JSONResponse:
            self.appointments[aid] = await request.json()
            return JSONResponse(self.appointments[aid])

        @app.post("/fhir/AppointmentResponse")
        async def respond(request: Request) -> JSONResponse:
            self.responses.append(await request.json())
            return JSONResponse({**self.responses[-1], "id": str(len(self.responses))}, status_code=201)

        return app


@dataclass
class World:
    adapter: RunningAdapter
    twilio: FakeTwilio
    fhir: FakeFhir
    listener: MllpListener

    def book(self, control_id: str, filler: str) -> None:
        start = (datetime.now(UTC) + timedelta(days=3)).replace(second=0, microsecond=0)
        message = siu("S12", control_id, start).replace(b"FL1^OSP_TEST", f"{filler}^OSP_TEST".encode())
        [result] = asyncio.run(send_messages([message], "127.0.0.1", self.adapter.mllp_port))
        assert result.code is AckCode.AA

    def signed_post(self, path: str, params: dict[str, str], *, tamper: bool = False) -> httpx.Response:
        """As Twilio does: signed for the public URL, reaching us through a proxy."""
        body, headers = self.twilio.signed_form(PUBLIC + path, params)
        if tamper:
            signature = headers["X-Twilio-Signature"]  # a different first character, whatever it was
            headers["X-Twilio-Signature"] = ("B" if signature[0] == "A" else "A") + signature[1:]
        return httpx.post(self.adapter.base_url + path, content=body, headers=headers)

    def status(self, sid: str, status: str, **kw: Any) -> httpx.Response:
        return self.signed_post("/webhooks/twilio/status", {
            "MessageSid": sid, "MessageStatus": status, "AccountSid": self.twilio.account_sid}, **kw)

    def reply(self, text: str, sender: str = PHONE) -> httpx.Response:
        response = self.signed_post("/webhooks/twilio/inbound", {
            "MessageSid": "SM" + secrets.token_hex(16), "AccountSid": self.twilio.account_sid,
            "From": sender, "To": "+390200000000", "Body": text})
        assert response.status_code == 200, response.text
        return response

    def notifications(self, **params: Any) -> list[dict]:
        return notifications(self.adapter.client("officer"), **params)

    def sent_sms(self) -> list[str]:
        return sorted(self.twilio.messages)


@contextmanager
def world(tmp_path: Path, refuse_hl7: int = 0) -> Iterator[World]:
    twilio, fhir, listener = FakeTwilio(), FakeFhir(), MllpListener(refuse_hl7)
    fhir.appointments = {f"appt-{n}": {
        "resourceType": "Appointment", "id": f"appt-{n}", "status": "booked",
        "identifier": [{"system": "urn:cup", "value": f"FL{n}"}],
        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}],
    } for n in (1, 2, 3)}
    twilio_url, stop_twilio = start_fake(twilio.app)
    fhir_url, stop_fhir = start_fake(fhir.app())
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    with (config / "facilities.yaml").open("a") as facilities:
        facilities.write("\n  OSP_TEST:\n    cancellation_writeback: SIU^S15\n"
                         f"    writeback: {{host: 127.0.0.1, port: {listener.server.port}}}\n")
    (config / "writeback.yaml").write_text(f"sources:\n  OSP_TEST:\n    fhir_base: {fhir_url}/fhir\n"
                                           f"  fhir-rest:\n    fhir_base: {fhir_url}/fhir\n")
    settings = settings_for(
        tmp_path, channels=["sms"], config_dir=config, public_base_url=PUBLIC,
        twilio_api_base=twilio_url, twilio_account_sid=twilio.account_sid, twilio_auth_token=twilio.auth_token,
        twilio_from="+390200000000",
    )
    try:
        with running_adapter(settings) as adapter:
            yield World(adapter, twilio, fhir, listener)
    finally:
        stop_twilio()
        stop_fhir()
        listener.stop()


def only(items: list[dict], **match: Any) -> dict:
    found = [i for i in items if all(i[k] == v for k, v in match.items())]
    assert len(found) == 1, found
    return found[0]


def webhook_events(w: World) -> int:
    with transaction(w.adapter.container.sessions) as session:
        return session.scalar(select(func.count()).select_from(WebhookEvent))


def test_booking_sms_delivered_then_reply_2_cancels_at_the_hospital_and_stop_ends_sms(tmp_path):
    with world(tmp_path, refuse_hl7=1) as w:
        w.book("C1", "FL1")
        [sid] = wait_for(lambda: w.sent_sms())
        assert w.twilio.messages[sid].to == PHONE
        wait_for(lambda: only(w.notifications(), kind="booking_confirmation")["status"] == "sent")

        assert w.status(sid, "delivered").status_code == 200
        assert only(w.notifications(), kind="booking_confirmation")["status"] == "delivered"

        w.reply("2")
        wait_for(lambda: w.fhir.appointments["appt-1"]["status"] == "cancelled")
        assert [r["participantStatus"] for r in w.fhir.responses] == ["declined"]
        assert w.fhir.responses[0]["appointment"] == {"reference": "Appointment/appt-1"}
        # The listener refused the first attempt (AE): the write-back was retried.
        wait_for(lambda: len(w.listener.received) == 2, timeout=15)
        s15 = w.listener.received[-1].split("\r")
        assert s15[0].split("|")[8] == "SIU^S15^SIU_S12" and s15[0].split("|")[5] == "OSP_TEST"
        assert s15[1].split("|")[2] == "FL1" and s15[1].split("|")[25] == "Cancelled"
        items = w.notifications()
        assert not [i for i in items if i["kind"] == "reminder" and i["status"] == "scheduled"]
        wait_for(lambda: only(w.notifications(), kind="cancellation_notice")["status"] == "sent")

        w.reply("STOP")
        before = w.sent_sms()
        w.book("C2", "FL2")
        second = wait_for(lambda: [i for i in w.notifications(kind="booking_confirmation")
                                   if i["subject"].endswith(":FL2") and i["status"] not in ("scheduled", "claimed")])
        assert second[0]["status"] == "suppressed"
        assert w.sent_sms() == before
        replies = w.adapter.client("officer").get("/api/replies").json()["items"]
        assert [r["action"] for r in replies] == ["opt_out", "cancel"]


def test_status_callbacks_are_signed_idempotent_and_never_move_backwards(tmp_path):
    with world(tmp_path) as w:
        w.book("C1", "FL1")
        [sid] = wait_for(lambda: w.sent_sms())
        wait_for(lambda: only(w.notifications(), kind="booking_confirmation")["status"] == "sent")
        status = lambda: only(w.notifications(), kind="booking_confirmation")["status"]  # noqa: E731

        stored = webhook_events(w)
        assert w.status(sid, "delivered", tamper=True).status_code == 403
        assert status() == "sent" and webhook_events(w) == stored
        assert httpx.post(w.adapter.base_url + "/webhooks/twilio/status", data={"MessageSid": sid}).status_code == 403

        assert w.status(sid, "read").json()["status"] == "processed"
        assert w.status(sid, "delivered").status_code == 200
        assert w.status(sid, "sent").status_code == 200
        assert w.status(sid, "failed").status_code == 200
        assert status() == "read"
        assert w.status(sid, "read").json() == {"status": "duplicate"}
        assert webhook_events(w) == stored + 4

        assert w.status("SM" + "0" * 32, "delivered").status_code == 200  # not ours: 200 all the same
        assert httpx.post(w.adapter.base_url + "/webhooks/whatsapp/status", content=b"{}").status_code == 404


def test_confirmation_operator_queue_and_wrong_number_incident(tmp_path):
    with world(tmp_path) as w:
        officer = w.adapter.client("officer")
        w.book("C1", "FL1")
        wait_for(lambda: only(w.notifications(), kind="booking_confirmation")["status"] == "sent")

        w.reply("Sì, confermo")
        wait_for(lambda: [r["participantStatus"] for r in w.fhir.responses] == ["accepted"])
        s14 = wait_for(lambda: w.listener.received)[0].split("\r")
        assert s14[0].split("|")[8] == "SIU^S14^SIU_S12" and s14[1].split("|")[25] == "Confirmed"
        assert w.fhir.appointments["appt-1"]["status"] == "booked"

        w.reply("Posso spostarlo a giovedì?")
        w.reply("Chi siete?", sender="+393470000000")
        queue = officer.get("/api/replies", params={"status": "open"}).json()["items"]
        assert len(queue) == 2 and {q["action"] for q in queue} == {"queue"}
        assert "giovedì" not in str(queue)

        w.reply("Scusi, numero sbagliato")
        [incident] = officer.get("/api/incidents").json()["items"]
        opened = datetime.fromisoformat(incident["opened_at"])
        assert incident["status"] == "open" and incident["kind"] == "wrong_number"
        assert datetime.fromisoformat(incident["deadline_at"]) - opened == timedelta(hours=72)
        with transaction(w.adapter.container.sessions) as session:
            reasons = list(session.scalars(select(Contact.suspended_reason)))
        assert reasons == ["wrong_number"]
        assert w.adapter.client("ehr").get("/api/incidents").status_code == 403

        before = w.sent_sms()
        w.book("C2", "FL2")
        wait_for(lambda: [i for i in w.notifications(kind="booking_confirmation")
                          if i["subject"].endswith(":FL2") and i["status"] == "suppressed"])
        assert w.sent_sms() == before


def test_a_patient_who_cancels_a_group_appointment_by_reply_declines_only_their_own_place_at_the_hospital(tmp_path):
    other = "+393339876543"
    with world(tmp_path) as w:
        group = {"resourceType": "Appointment", "id": "group-1", "status": "booked",
                 "start": (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0).isoformat(),
                 "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"},
                                 {"actor": {"reference": "Patient/p2"}, "status": "accepted"}]}
        w.fhir.appointments["group-1"] = group
        ehr = w.adapter.client("ehr")
        for pid, phone in (("p1", PHONE), ("p2", other)):
            ehr.put(f"/fhir/R4/Patient/{pid}", json=patient(pid, phone), headers=FHIR).raise_for_status()
        ehr.put("/fhir/R4/Appointment/group-1", json=group, headers=FHIR).raise_for_status()
        wait_for(lambda: len(w.sent_sms()) == 2)

        w.reply("2", sender=other)
        wait_for(lambda: w.fhir.responses)
        assert [(r["participantStatus"], r["actor"]) for r in w.fhir.responses] == [
            ("declined", {"reference": "Patient/p2"})]
        updated = wait_for(lambda: w.fhir.appointments["group-1"]["participant"][1]["status"] == "declined"
                           and w.fhir.appointments["group-1"])
        assert updated["status"] == "booked" and updated["participant"][0]["status"] == "accepted"
        first = [i for i in w.notifications() if i["subject"] == "Appointment/group-1" and i["kind"] == "reminder"]
        assert first and all(i["status"] == "scheduled" for i in first)


def test_a_cancellation_the_hospital_sends_back_after_the_patient_cancelled_by_reply_is_not_announced_twice(tmp_path):
    with world(tmp_path) as w:
        booked = {"resourceType": "Appointment", "id": "visit-1", "status": "booked",
                  "start": (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0).isoformat(),
                  "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}]}
        w.fhir.appointments["visit-1"] = booked
        ehr = w.adapter.client("ehr")
        ehr.put("/fhir/R4/Patient/p1", json=patient("p1", PHONE), headers=FHIR).raise_for_status()
        ehr.put("/fhir/R4/Appointment/visit-1", json=booked, headers=FHIR).raise_for_status()
        wait_for(lambda: len(w.sent_sms()) == 1)

        w.reply("2")
        cancelled = wait_for(lambda: w.fhir.appointments["visit-1"]["status"] == "cancelled"
                             and w.fhir.appointments["visit-1"])
        wait_for(lambda: len(w.sent_sms()) == 2)  # the cancellation notice
        # The EHR tells its subscribers, the adapter among them, of the change it was sent.
        ehr.put("/fhir/R4/Appointment/visit-1", json=cancelled, headers=FHIR).raise_for_status()
        w.adapter.fhir_processed()
        assert [i["status"] for i in w.notifications(kind="cancellation_notice")] == ["sent"]
        assert len(w.sent_sms()) == 2
