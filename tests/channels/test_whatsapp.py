import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from channels.base import OutboundMessage, Outcome, WebhookRequest
from channels.errors import SignatureError
from channels.whatsapp import WhatsAppChannel, build_payload

pytestmark = pytest.mark.anyio
NOW = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)


def whatsapp(fake, client, **extra) -> WhatsAppChannel:
    return WhatsAppChannel(api_base=fake.base_url, phone_number_id=fake.phone_number_id,
                           access_token=fake.access_token, app_secret=fake.app_secret,
                           verify_token="verify-me", client=client, **extra)


def reminder(**extra) -> OutboundMessage:
    return OutboundMessage("+393331234567", "Domani alle 9:30", "n-1", language="it",
                           template="appointment_reminder", template_params=("Maria",), **extra)


def test_outside_the_window_the_approved_template_is_sent_with_language_and_parameters() -> None:
    payload = build_payload(reminder(), window_open=False)
    assert payload["type"] == "template"
    assert payload["template"] == {
        "name": "appointment_reminder", "language": {"code": "it"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "Maria"}]}]}
    assert payload["to"] == "393331234567"


def test_inside_the_window_free_text_is_sent() -> None:
    payload = build_payload(reminder(), window_open=True)
    assert (payload["type"], payload["text"]["body"]) == ("text", "Domani alle 9:30")


async def test_outside_the_window_without_a_template_nothing_is_sent(fake_whatsapp) -> None:
    fake_whatsapp.reset()
    async with httpx.AsyncClient() as client:
        result = await whatsapp(fake_whatsapp, client).send(
            OutboundMessage("+393331234567", "Ciao", "n-2"))
    assert (result.outcome, result.error_code) == (Outcome.FINAL, "template_required")
    assert fake_whatsapp.requests == 0


async def test_the_window_is_computed_from_the_patients_last_message(fake_whatsapp) -> None:
    fake_whatsapp.reset()
    fake_whatsapp.open_window("+393331234567")
    async with httpx.AsyncClient() as client:
        channel = whatsapp(fake_whatsapp, client, clock=lambda: NOW)
        result = await channel.send(reminder(last_inbound_at=NOW - timedelta(hours=2)))
    [message] = fake_whatsapp.messages.values()
    assert result.accepted and message.kind == "text"


async def test_free_text_the_provider_considers_outside_the_window_fails_with_131047(fake_whatsapp):
    fake_whatsapp.reset()
    async with httpx.AsyncClient() as client:
        result = await whatsapp(fake_whatsapp, client).send(reminder(), window_open=True)
    assert (result.outcome, result.error_code) == (Outcome.FINAL, "131047")


async def test_a_retry_after_a_timeout_can_deliver_twice_because_the_cloud_api_does_not_deduplicate(
    fake_whatsapp,
) -> None:
    fake_whatsapp.reset()
    fake_whatsapp.fail_next("timeout")
    async with httpx.AsyncClient(timeout=0.2) as client:
        channel = whatsapp(fake_whatsapp, client)
        first = await channel.send(reminder())
        second = await channel.send(reminder())
    assert (first.outcome, second.outcome) == (Outcome.RETRYABLE, Outcome.ACCEPTED)
    assert fake_whatsapp.deliveries["n-1"] == 2


def test_the_subscription_handshake_echoes_the_challenge_only_for_the_right_token() -> None:
    channel = WhatsAppChannel(api_base="http://x", phone_number_id="1", access_token="t",
                              app_secret="s", verify_token="verify-me")
    query = {"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "1158201444"}
    assert channel.verify_subscription(query) == "1158201444"
    with pytest.raises(SignatureError):
        channel.verify_subscription(query | {"hub.verify_token": "guess"})
    with pytest.raises(SignatureError):
        channel.verify_subscription({"hub.challenge": "1"})


def test_the_signature_is_hmac_sha256_of_the_raw_body_with_the_app_secret() -> None:
    channel = WhatsAppChannel(api_base="http://x", phone_number_id="1", access_token="t",
                              app_secret="app-secret", verify_token="v")
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {
        "messages": [{"from": "393331234567", "id": "wamid.X", "timestamp": "1740819600",
                      "type": "button", "button": {"text": "Confermo", "payload": "c"}}]}}]}]}
                      ).encode()
    digest = hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    request = WebhookRequest("POST", "https://a/webhooks/whatsapp/inbound",
                             {"X-Hub-Signature-256": f"sha256={digest}"}, {}, body)
    [reply] = channel.parse_inbound(request)
    assert (reply.from_address, reply.text, reply.received_at) == (
        "+393331234567", "Confermo", datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc))
    assert channel.parse_status(request) == []
