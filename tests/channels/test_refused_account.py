"""A provider that refuses the adapter's own account (a wrong or expired token, a
revoked bot, SMTP authentication failed) answers every send the same way: that is no
fact about the patient, so it is ``REFUSED_ACCOUNT``, not a final failure that would
fail every queued notice over, or end it failed, in one sweep."""

from __future__ import annotations

import httpx
import pytest

from channels.base import OutboundMessage, Outcome
from channels.email import EmailChannel
from channels.telegram import TelegramChannel
from channels.twilio import TwilioChannel
from channels.whatsapp import WhatsAppChannel

pytestmark = pytest.mark.anyio


def message(to: str) -> OutboundMessage:
    return OutboundMessage(to=to, body="Promemoria: visita domani.", idempotency_key="refused-1")


async def test_twilio_with_a_wrong_auth_token(fake_twilio):
    async with httpx.AsyncClient() as client:
        channel = TwilioChannel(api_base=fake_twilio.base_url, account_sid=fake_twilio.account_sid,
                                auth_token="expired", from_number="+390200000000", client=client)
        result = await channel.send(message("+393331234567"))
    assert (result.outcome, result.error_code) == (Outcome.REFUSED_ACCOUNT, "20003")


async def test_whatsapp_with_an_expired_access_token(fake_whatsapp):
    async with httpx.AsyncClient() as client:
        channel = WhatsAppChannel(api_base=fake_whatsapp.base_url, phone_number_id=fake_whatsapp.phone_number_id,
                                  access_token="expired", app_secret=fake_whatsapp.app_secret,
                                  verify_token="verify-me", client=client)
        result = await channel.send(message("393331234567"), window_open=True)
    assert (result.outcome, result.error_code) == (Outcome.REFUSED_ACCOUNT, "190")


async def test_telegram_with_a_revoked_bot_token(fake_telegram):
    async with httpx.AsyncClient() as client:
        channel = TelegramChannel(api_base=fake_telegram.base_url, bot_token="123:revoked",
                                  secret_token=fake_telegram.secret_token, bot_name="SanLucaBot", client=client)
        result = await channel.send(message("424242"))
    assert result.outcome is Outcome.REFUSED_ACCOUNT


async def test_smtp_refusing_the_login(fake_smtp):
    fake_smtp.reset()
    fake_smtp.fail_next("535")
    channel = EmailChannel(host=fake_smtp.host, port=fake_smtp.port, sender="noreply@clinic.example",
                           tls_context=fake_smtp.client_tls_context(), timeout_s=2.0)
    result = await channel.send(message("paziente@example.org"))
    assert (result.outcome, result.error_code) == (Outcome.REFUSED_ACCOUNT, "535")
    fake_smtp.fail_next("550")  # a mailbox refused is still the patient's, final
    assert (await channel.send(message("paziente@example.org"))).outcome is Outcome.FINAL
