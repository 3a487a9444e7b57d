"""Write-backs of a patient's decision to the hospital's MLLP listener (a real one on
127.0.0.1), when that listener is down for a while; time is a FrozenClock."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from sqlalchemy import select

from adapter.bootstrap import Container, build
from adapter.clock import FrozenClock
from adapter.db import read_transaction
from adapter.reply_models import Writeback
from adapter.webhooks import process, store
from adapter.writeback import WritebackSender
from channels.base import WebhookRequest
from channels.sandbox import LOCAL_DEVELOPMENT_SECRET, SIGNATURE_HEADER, sign
from tests.core.test_app_acks import NOW, adapter_for, claimed_at_once, free_port, retry_while_down
from tests.core.test_end_to_end import siu
from tests.core.test_replies import PHONE, MllpListener


def sandbox_reply(text: str, message_id: str) -> WebhookRequest:
    """The patient's reply as the sandbox provider posts it, signed."""
    body = json.dumps({"messages": [{"message_id": message_id, "from": PHONE, "text": text}]}).encode()
    return WebhookRequest("POST", "http://127.0.0.1/webhooks/sandbox/inbound",
                          {SIGNATURE_HEADER: sign(body, LOCAL_DEVELOPMENT_SECRET)}, {}, body)


def cancelled_by_the_patient(container: Container) -> None:
    """A booking, its confirmation sent (sandbox), and the patient's reply "2" (cancel)."""

    async def receive() -> None:
        assert b"MSA|AA|" in await container.intake.handle(siu("S12", "WB1", NOW + timedelta(days=2)))
        await container.intake.writer.stop()

    asyncio.run(receive())
    container.intake.process_pending()
    assert asyncio.run(container.dispatcher.run_once()) == 1
    event_id = store(container, "sandbox", "inbound", sandbox_reply("2", "reply-1"))
    assert event_id is not None and process(container, event_id) == "processed"


def writeback_rows(container: Container) -> list[tuple[str, str, int, str | None]]:
    with read_transaction(container.sessions) as session:
        rows = session.execute(select(Writeback.action, Writeback.status, Writeback.attempts, Writeback.last_error)
                               .order_by(Writeback.id))
        return [tuple(row) for row in rows]


def test_a_cancellation_is_written_back_after_a_night_of_listener_downtime(tmp_path):
    port = free_port()
    clock = FrozenClock(NOW)
    container = adapter_for(tmp_path, port, clock)
    cancelled_by_the_patient(container)
    sender = WritebackSender(container)
    try:
        gaps = retry_while_down(container, clock, until=NOW + timedelta(hours=14), sender=sender, outbox=Writeback)
        [(action, status, attempts, error)] = writeback_rows(container)
        assert (action, status, error) == ("cancel", "pending", "MLLP: ConnectionRefusedError")
        assert attempts > 80 and max(gaps) <= timedelta(minutes=10)

        listener = MllpListener(port=port)
        try:
            retry_while_down(container, clock, until=clock.now() + timedelta(minutes=11), sender=sender,
                             outbox=Writeback)
            assert writeback_rows(container) == [("cancel", "done", attempts + 1, None)]
            [s15] = listener.received
            assert "SIU^S15^SIU_S12" in s15
        finally:
            listener.stop()
    finally:
        asyncio.run(sender.aclose())


class HoldingHospital(MllpListener):
    """Answers a message only once a second one has arrived, or after two seconds."""

    async def _handle(self, message: bytes) -> bytes:
        answer = await super()._handle(message)
        for _ in range(200):
            if len(self.received) > 1:
                break
            await asyncio.sleep(0.01)
        return answer


def test_two_senders_on_postgresql_never_send_the_same_write_back(tmp_path, pg_url):
    listener = HoldingHospital()
    try:
        clock = FrozenClock(NOW)
        first = adapter_for(tmp_path, listener.server.port, clock, database_url=pg_url)
        second = build(first.settings, clock=clock)
        cancelled_by_the_patient(first)

        async def send(container: Container) -> None:
            sender = WritebackSender(container)
            try:
                await sender.run_once()
            finally:
                await sender.aclose()

        # The first sender goes on once the second is done or its write-back is on the wire.
        claimed_at_once(first, second, "writeback", lambda c: asyncio.run(send(c)),
                        or_when=lambda: bool(listener.received))
        assert len(listener.received) == 1
        assert writeback_rows(first) == [("cancel", "done", 1, None)]
    finally:
        listener.stop()
