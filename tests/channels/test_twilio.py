import asyncio
import uuid

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from channels._signing import twilio_signature
from channels.base import DeliveryStatus, OutboundMessage, Outcome, WebhookRequest
from channels.errors import SignatureError
from channels.fakes import FakeTwilio, start_fake
from channels.twilio import TwilioChannel

pytestmark = pytest.mark.anyio

DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675309"), ("Digits", "1234"),
              ("From", "+14158675309"), ("To", "+18005551212")]


def test_the_signature_matches_twilios_published_example() -> None:
    assert twilio_signature(DOC_URL, DOC_PARAMS, "12345") == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"),
                ("Digits", "1234"), ("Digits", "1234")]
    assert twilio_signature(DOC_URL, repeated, "12345") == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def channel(base: str = "http://127.0.0.1:9", **extra) -> TwilioChannel:
    return TwilioChannel(api_base=base, account_sid="AC1", auth_token="12345",
                         from_number="+390200000000", **extra)


def test_a_webhook_signed_for_the_url_with_its_default_port_is_accepted() -> None:
    body = b"MessageSid=SM1&MessageStatus=delivered"
    signature = twilio_signature("https://adapter.example:443/webhooks/twilio/status",
                                 [("MessageSid", "SM1"), ("MessageStatus", "delivered")], "12345")
    request = WebhookRequest("POST", "https://adapter.example/webhooks/twilio/status",
                             {"x-twilio-signature": signature}, {}, body)
    [update] = channel().parse_status(request)
    assert update.status is DeliveryStatus.DELIVERED


def test_a_webhook_signed_for_another_url_is_refused() -> None:
    body = b"MessageSid=SM1&MessageStatus=delivered"
    signature = twilio_signature("https://elsewhere.example/webhooks/twilio/status",
                                 [("MessageSid", "SM1"), ("MessageStatus", "delivered")], "12345")
    request = WebhookRequest("POST", "https://adapter.example/webhooks/twilio/status",
                             {"X-Twilio-Signature": signature}, {}, body)
    with pytest.raises(SignatureError):
        channel().parse_status(request)


async def test_the_idempotency_key_travels_as_the_twilio_idempotency_token(fake_twilio) -> None:
    fake_twilio.reset()
    async with httpx.AsyncClient() as client:
        sms = TwilioChannel(api_base=fake_twilio.base_url, account_sid=fake_twilio.account_sid,
                            auth_token=fake_twilio.auth_token, from_number="+390200000000",
                            client=client)
        await sms.send(OutboundMessage("+393331234567", "Ciao", "n-42"))
    [message] = fake_twilio.messages.values()
    assert message.idempotency_key == "n-42"


async def test_segments_and_cost_are_reported_with_an_accepted_sms(fake_twilio) -> None:
    from decimal import Decimal
    async with httpx.AsyncClient() as client:
        sms = TwilioChannel(api_base=fake_twilio.base_url, account_sid=fake_twilio.account_sid,
                            auth_token=fake_twilio.auth_token, from_number="+390200000000",
                            price_per_segment=Decimal("0.08"), client=client)
        result = await sms.send(OutboundMessage("+393331234567", "È " * 40, "n-cost"))
    assert (result.segments, result.cost) == (2, Decimal("0.16"))


async def test_under_30_percent_failures_every_message_is_delivered_exactly_once() -> None:
    # The client's time-out is well over what 200 concurrent requests take on a loaded
    # machine, and a "timeout" fault well over the time-out: only the fault times out.
    fake = FakeTwilio(failure_rate=0.3, failure_modes=("500", "timeout", "429"), seed=7,
                      slow_s=1.2, retry_after_s=0)
    with fake:
        async with httpx.AsyncClient(timeout=httpx.Timeout(0.5, pool=30)) as client:
            sms = TwilioChannel(api_base=fake.base_url, account_sid=fake.account_sid,
                                auth_token=fake.auth_token, from_number="+390200000000",
                                client=client)

            async def deliver(k: str) -> Outcome:
                for _ in range(20):  # the dispatcher's job; a bare loop is enough here
                    result = await sms.send(OutboundMessage("+393331234567", "Promemoria", k))
                    if result.outcome is not Outcome.RETRYABLE:
                        return result.outcome
                return Outcome.RETRYABLE

            keys = [f"n-{uuid.uuid4()}" for _ in range(200)]
            outcomes = await asyncio.gather(*(deliver(k) for k in keys))
    assert set(outcomes) == {Outcome.ACCEPTED}
    assert fake.requests > 200  # failures really happened
    assert all(fake.deliveries[k] == 1 for k in keys) and len(fake.deliveries) == 200


async def test_the_fakes_signed_callbacks_over_http_are_verified_and_parsed() -> None:
    received: list = []
    receiver = FastAPI()
    sms_holder: dict[str, TwilioChannel] = {}

    @receiver.post("/webhooks/twilio/status")
    async def status(request: Request) -> Response:
        webhook = WebhookRequest(request.method, str(request.url), dict(request.headers),
                                 dict(request.query_params), await request.body())
        try:
            received.extend(sms_holder["sms"].parse_status(webhook))
        except SignatureError:
            return Response(status_code=403)
        return Response(status_code=204)

    base, stop = start_fake(receiver)
    fake = FakeTwilio(auto_statuses=("sent", "delivered"))
    try:
        with fake:
            async with httpx.AsyncClient() as client:
                sms = TwilioChannel(
                    api_base=fake.base_url, account_sid=fake.account_sid,
                    auth_token=fake.auth_token, from_number="+390200000000",
                    status_callback_url=f"{base}/webhooks/twilio/status", client=client)
                sms_holder["sms"] = sms
                result = await sms.send(OutboundMessage("+393331234567", "Ciao", "n-cb"))
                for _ in range(100):
                    if len(received) == 2:
                        break
                    await asyncio.sleep(0.02)
    finally:
        stop()
    assert [(u.provider_message_id, u.status) for u in received] == [
        (result.provider_message_id, DeliveryStatus.SENT),
        (result.provider_message_id, DeliveryStatus.DELIVERED)]
