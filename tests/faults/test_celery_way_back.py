"""Production mode's way back, with real processes (``serve --workers celery`` and a
Celery worker on PostgreSQL and RabbitMQ): a sender in enhanced mode gets its
application ACK, a provider callback stored but left unprocessed is processed, and a
patient's cancellation is written back, both to the hospital's MLLP listener (a real
one on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import pytest
from sqlalchemy import select

from adapter.bootstrap import build
from adapter.db import read_transaction
from adapter.migrate import upgrade
from adapter.models import Notification
from adapter.settings import CONFIG_DIR
from adapter.webhooks import store
from channels.base import WebhookRequest
from channels.sandbox import LOCAL_DEVELOPMENT_SECRET, SIGNATURE_HEADER, sign
from hl7.client import send_messages
from tests.core.test_hl7_flows import enhanced
from tests.core.test_replies import MllpListener
from tests.faults.conftest import (
    AMQP_URL,
    Process,
    adapter_env,
    delete_queue,
    free_port,
    future_start,
    settings_from_env,
    siu_s12,
    start_serve,
    terminate_together,
    wait_for,
)

PATIENT = 1234567  # mobile +39 333 1234567


def signed_sandbox(payload: dict) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, {SIGNATURE_HEADER: sign(body, LOCAL_DEVELOPMENT_SECRET), "Content-Type": "application/json"}


@pytest.mark.timeout(180)
def test_celery_mode_sends_application_acks_and_write_backs_and_retries_stored_callbacks(tmp_path, pg_url, queue_name):
    listener = MllpListener()
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    with (config / "facilities.yaml").open("a") as facilities:
        facilities.write("\n  OSP_TEST:\n    cancellation_writeback: SIU^S15\n"
                         f"    writeback: {{host: 127.0.0.1, port: {listener.server.port}}}\n")
    env = adapter_env(tmp_path, pg_url, broker_url=AMQP_URL, queue=queue_name, config_dir=config)
    http_port, mllp_port = free_port(), free_port()
    upgrade(pg_url)  # then the worker starts beside serve, as systemd starts them
    container = build(settings_from_env(env), channels={})
    worker, server = Process(["worker", "--concurrency", "2"], env, tmp_path / "worker.log"), None

    def received(kind: str) -> list[str]:
        return [m for m in listener.received if kind in m.split("\r")[0]]

    def confirmation() -> tuple[str, str | None]:
        """The booking confirmation's status and provider message id."""
        with read_transaction(container.sessions) as session:
            row = session.execute(select(Notification.status, Notification.provider_message_id)
                                  .where(Notification.kind == "booking_confirmation")).one_or_none()
            return tuple(row) if row else ("", None)

    try:
        server = start_serve(env, tmp_path, http_port, mllp_port, "--workers", "celery")
        booking = enhanced(siu_s12("CEL1", PATIENT, future_start()), "AL", "AL")
        [commit] = asyncio.run(send_messages([booking], "127.0.0.1", mllp_port))
        assert commit.code.value == "CA"
        [ack] = wait_for(lambda: received("|ACK"), 60, f"the application ACK ({worker.output()})")
        assert "MSA|AA|CEL1" in ack

        wait_for(lambda: confirmation()[0] == "sent", 30, "the confirmation sent")
        # The provider's "delivered", stored by a serve process that died before processing it.
        body, headers = signed_sandbox({"statuses": [{"message_id": confirmation()[1], "status": "delivered"}]})
        request = WebhookRequest("POST", f"http://127.0.0.1:{http_port}/webhooks/sandbox/status", headers, {}, body)
        assert store(container, "sandbox", "status", request) is not None
        wait_for(lambda: confirmation()[0] == "delivered", 30, "the stored callback processed")

        body, headers = signed_sandbox({"messages": [{"message_id": "reply-1", "from": "+393331234567", "text": "2"}]})
        answer = httpx.post(f"http://127.0.0.1:{http_port}/webhooks/sandbox/inbound", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        [s15] = wait_for(lambda: received("SIU^S15"), 60, "the cancellation written back")
        assert s15.split("\r")[1].split("|")[2] == f"FL{PATIENT}"

        assert worker.popen.poll() is None, worker.output()
        assert len(listener.received) == 2  # each once
    finally:
        terminate_together(worker, server)
        delete_queue(AMQP_URL, queue_name)
        container.engine.dispose()
        listener.stop()
