"""A final failure reported by the provider's status callback after it accepted the
message (Twilio "undelivered"/"failed", e.g. 30003 unreachable handset) fails over to
the patient's next channel, as a final error answered to the send does; a failure
reported after the delivery (callbacks out of order) changes nothing.

Real pipeline and dispatcher, TwilioChannel against :class:`FakeTwilio`, EmailChannel
against :class:`FakeSmtp`, SQLite, and the real webhook route (signed as Twilio signs)."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from adapter.db import transaction
from adapter.models import Notification
from adapter.webhooks import webhooks_router
from channels.email import message_id_for
from channels.fakes import FakeSmtp, FakeTwilio
from tests.core.test_reliability import KIND, SENDER, Rig, address, make_rig


def notice(rig: Rig) -> Notification:
    with transaction(rig.container.sessions) as session:
        row = session.scalar(select(Notification).where(Notification.kind == KIND))
        session.expunge(row)
    return row


def audited(rig: Rig, action: str) -> list[str]:
    with transaction(rig.container.sessions) as session:
        return [entry.reason for entry in rig.container.audit.entries(session) if entry.action == action]


async def callbacks(rig: Rig, sid: str, *statuses: tuple[str, str | None]) -> None:
    """Post each (status, error code) to the webhook route, signed as Twilio signs."""
    app = FastAPI()
    app.include_router(webhooks_router(rig.container))
    url = rig.container.settings.public_base_url.rstrip("/") + "/webhooks/twilio/status"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        for status, code in statuses:
            params = {"MessageSid": sid, "MessageStatus": status, "AccountSid": rig.twilio.account_sid}
            if code:
                params["ErrorCode"] = code
            body, headers = rig.twilio.signed_form(url, params)
            response = await client.post(url, content=body, headers=headers)
            assert response.status_code == 200, response.text


def run(rig: Rig, *statuses: tuple[str, str | None]) -> Notification:
    """Send the booking confirmation by SMS, post ``statuses`` for it, then let the
    dispatcher take whatever is due."""
    async def scenario() -> None:
        try:
            assert await rig.container.dispatcher.run_once() == 1
            await callbacks(rig, notice(rig).provider_message_id, *statuses)
            while await rig.container.dispatcher.run_once():
                pass
        finally:
            await rig.container.dispatcher.channels["sms"].aclose()

    try:
        asyncio.run(scenario())
        return notice(rig)
    finally:
        rig.container.engine.dispose()


def test_an_sms_reported_undelivered_by_its_callback_is_sent_again_by_email(tmp_path):
    with FakeTwilio() as twilio, FakeSmtp() as smtp:
        rig = make_rig(tmp_path, None, 1, twilio, smtp)
        row = run(rig, ("undelivered", "30003"), ("sent", None))  # "sent" overtaken
        failures = audited(rig, "failed")
    assert (row.status, row.channel, row.tried_channels) == ("sent", "email", ["sms"])
    assert twilio.deliveries[row.idempotency_key] == 1
    assert smtp.deliveries[message_id_for(row.idempotency_key, SENDER)] == 1
    assert any("30003" in reason for reason in failures), failures


def test_an_undelivered_sms_with_no_channel_left_ends_failed(tmp_path):
    with FakeTwilio() as twilio, FakeSmtp(rejected={address(0)}) as smtp:
        rig = make_rig(tmp_path, None, 1, twilio, smtp)
        row = run(rig, ("undelivered", "30003"))
    assert row.status == "failed" and row.reason == "every channel failed (sms, email)"
    assert row.tried_channels == ["sms", "email"]


def test_a_failure_reported_after_the_delivery_is_not_failed_over(tmp_path):
    with FakeTwilio() as twilio, FakeSmtp() as smtp:
        rig = make_rig(tmp_path, None, 1, twilio, smtp)
        row = run(rig, ("delivered", None), ("failed", "30008"))
    assert (row.status, row.channel, row.tried_channels) == ("delivered", "sms", [])
    assert smtp.deliveries[message_id_for(row.idempotency_key, SENDER)] == 0


def test_an_e_mail_notice_carries_its_kinds_subject_line_in_the_patients_language(tmp_path):
    """E-mails used to go out with an empty Subject (the dispatcher never set one) and
    without their Content-Language (set before the body, which clears every Content-*
    header). Each kind has its line beside its text (config/templates/<lang>/<kind>.subject.j2)."""
    with FakeTwilio() as twilio, FakeSmtp() as smtp:
        rig = make_rig(tmp_path, None, 1, twilio, smtp)
        row = run(rig, ("undelivered", "30003"))
        assert row.channel == "email"
        [mail] = smtp.messages
    clinic = rig.container.settings.clinic_name
    assert mail["Subject"] == f"{clinic}: conferma del suo appuntamento"
    assert mail["Content-Language"] == "it"


def test_a_provider_refusing_the_adapters_account_keeps_the_notice_waiting_and_says_so(tmp_path):
    """An expired token made every send a final failure: each queued notice failed over,
    or ended failed where SMS was the only channel, with no way to send it again once the
    token was fixed. Now it waits (no attempt counted, no failover) and readiness says why."""
    from adapter.dispatch import REFUSED_ACCOUNT_WAIT
    from adapter.web import health_router
    from channels.twilio import TwilioChannel
    from tests.core.test_reliability import START

    with FakeTwilio() as twilio, FakeSmtp() as smtp:
        rig = make_rig(tmp_path, None, 1, twilio, smtp)
        settings = rig.container.settings
        rig.container.dispatcher.channels["sms"] = TwilioChannel(
            api_base=twilio.base_url, account_sid=twilio.account_sid, auth_token="expired",
            from_number=settings.twilio_from, client=httpx.AsyncClient())

        async def scenario() -> httpx.Response:
            try:
                assert await rig.container.dispatcher.run_once() == 1
                assert await rig.container.dispatcher.run_once() == 0  # waiting, not failed over
                app = FastAPI()
                app.include_router(health_router(rig.container))
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                    return await client.get("/health/ready")
            finally:
                await rig.container.dispatcher.channels["sms"].aclose()

        try:
            ready = asyncio.run(scenario())
            row = notice(rig)
        finally:
            rig.container.engine.dispose()
        assert (row.status, row.tried_channels) == ("scheduled", [])
        assert row.scheduled_for == START + REFUSED_ACCOUNT_WAIT and "20003" in row.last_error
        assert row.decision.get("attempts_by_channel", {}).get("sms") is None
        assert not smtp.messages and twilio.deliveries == {}
        assert ready.status_code == 503
        assert ready.json()["checks"]["channels"] == "account refused by the provider: sms"


def test_a_refusal_that_goes_on_is_logged_again_each_minute(tmp_path, caplog):
    """The log said "once a minute at most" but measured the minute from the last
    refusal: a channel refused every few seconds was logged once and never again."""
    import logging
    from datetime import timedelta

    from tests.core.test_reliability import START
    from tests.harness import migrated_container, settings_for

    container = migrated_container(settings_for(tmp_path))
    try:
        with caplog.at_level(logging.ERROR, logger="adapter.dispatch"):
            for second in range(0, 181, 10):
                container.dispatcher._account_refused("sms", "20003", START + timedelta(seconds=second))
    finally:
        container.engine.dispose()
    assert sum("refused the adapter's account" in r.getMessage() for r in caplog.records) == 4
    assert container.dispatcher.accounts_refused["sms"] == START + timedelta(seconds=180)
