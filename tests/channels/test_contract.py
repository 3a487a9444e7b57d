"""The contract every provider passes, run over the table in ``harness.py``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from channels.base import Channel, DeliveryStatus, Outcome
from channels.errors import SignatureError
from tests.channels.harness import (
    EmailCase,
    ProviderCase,
    SandboxCase,
    TelegramCase,
    TwilioCase,
    WhatsAppCase,
)

pytestmark = pytest.mark.anyio

PROVIDERS = ["twilio", "whatsapp", "telegram", "email", "sandbox"]

# What each provider can show; each test runs for the providers it applies to (no skips),
# and test_the_capability_table_matches_the_cases keeps this table true.
FAULTS = {"twilio": ("429", "500", "timeout"), "whatsapp": ("429", "500", "timeout"),
          "telegram": ("429", "500", "timeout"), "email": ("429", "500", "timeout"), "sandbox": ("500",)}
WITH_WEBHOOKS = ["twilio", "whatsapp", "telegram", "sandbox"]
WITH_STATUS_CALLBACKS = ["twilio", "whatsapp", "sandbox"]
REJECTING_ADDRESSES = ["twilio", "whatsapp", "telegram", "email"]
RETRY_AFTER_HINTS = ["twilio", "telegram"]  # the fakes send one with a 429
DEDUPLICATING = ["twilio"]  # the others do not (see test_whatsapp / test_email)


def only(providers: list[str]):
    """Run a test for these providers only (the ``case`` fixture, indirectly)."""
    return pytest.mark.parametrize("case", providers, indirect=True)


@pytest.fixture(params=PROVIDERS)
async def case(request, fake_twilio, fake_whatsapp, fake_telegram, fake_smtp) -> AsyncIterator[ProviderCase]:
    build = {
        "twilio": lambda: TwilioCase(fake_twilio),
        "whatsapp": lambda: WhatsAppCase(fake_whatsapp),
        "telegram": lambda: TelegramCase(fake_telegram),
        "email": lambda: EmailCase(fake_smtp),
        "sandbox": lambda: SandboxCase(),
    }[request.param]
    provider = build()
    if provider.fake is not None:
        provider.fake.reset()
    yield provider
    close = getattr(provider.channel, "aclose", None)
    if close is not None:
        await close()


def key() -> str:
    return f"notification-{uuid.uuid4()}"


async def test_the_capability_table_matches_the_cases(case: ProviderCase) -> None:
    assert case.faults == FAULTS[case.name]
    assert case.has_webhooks == (case.name in WITH_WEBHOOKS)
    assert bool(case.status_table) == (case.name in WITH_STATUS_CALLBACKS)


async def test_every_provider_implements_the_channel_protocol(case: ProviderCase) -> None:
    assert isinstance(case.channel, Channel)
    assert case.channel.name == case.name


async def test_a_send_is_accepted_with_a_provider_message_id_and_delivered_once(case) -> None:
    k = key()
    result = await case.channel.send(case.message(k))
    assert result.outcome is Outcome.ACCEPTED, result
    assert result.provider_message_id
    assert case.deliveries(k) == 1


@pytest.mark.parametrize(
    "case, fault", [(name, fault) for name in PROVIDERS for fault in FAULTS[name]], indirect=["case"]
)
async def test_throttling_server_errors_and_timeouts_are_retryable(case, fault: str) -> None:
    case.force(fault)
    result = await case.channel.send(case.message(key()))
    assert result.outcome is Outcome.RETRYABLE, result
    assert result.error_code


@only(RETRY_AFTER_HINTS)
async def test_a_429_carries_the_providers_retry_after_hint(case) -> None:
    case.force("429")
    result = await case.channel.send(case.message(key()))
    assert result.retry_after_s == 1


@only(DEDUPLICATING)
async def test_a_retry_after_a_timeout_with_the_same_key_never_delivers_twice(case) -> None:
    k = key()
    case.force("timeout")
    first = await case.channel.send(case.message(k))
    second = await case.channel.send(case.message(k))
    assert (first.outcome, second.outcome) == (Outcome.RETRYABLE, Outcome.ACCEPTED)
    assert case.deliveries(k) == 1


@only(REJECTING_ADDRESSES)
async def test_an_invalid_or_blocked_address_is_a_final_failure(case) -> None:
    k = key()
    result = await case.channel.send(case.message(k, invalid=True))
    assert result.outcome is Outcome.FINAL, result
    assert case.deliveries(k) == 0


@only(REJECTING_ADDRESSES)
async def test_error_text_never_contains_the_patients_address(case) -> None:
    message = case.message(key(), invalid=True)
    result = await case.channel.send(message)
    digits = message.to.lstrip("+")
    assert digits not in (result.error_text or "") and message.to not in (result.error_text or "")


@only(WITH_WEBHOOKS)
async def test_a_correctly_signed_inbound_reply_is_parsed(case) -> None:
    sender = "424242" if case.name == "telegram" else "+393331234567"
    [reply] = case.channel.parse_inbound(case.inbound_request(sender, "2"))
    assert (reply.provider, reply.text) == (case.name, "2")
    assert reply.from_address == sender
    assert reply.provider_message_id


@only(WITH_WEBHOOKS)
async def test_a_bad_signature_raises_signature_error_and_parses_nothing(case) -> None:
    sender = "424242" if case.name == "telegram" else "+393331234567"
    request = case.inbound_request(sender, "1")
    with pytest.raises(SignatureError):
        case.channel.parse_inbound(case.tampered(request))
    unsigned = type(request)(request.method, request.url, {}, request.query, request.body)
    with pytest.raises(SignatureError):
        case.channel.parse_inbound(unsigned)


@only(WITH_STATUS_CALLBACKS)
async def test_status_callbacks_map_to_sent_delivered_read_failed(case) -> None:
    for provider_status, expected in case.status_table.items():
        updates = case.channel.parse_status(case.status_request("MSG-1", provider_status))
        if expected is None:
            assert updates == [], provider_status
            continue
        [update] = updates
        assert (update.provider_message_id, update.status) == ("MSG-1", expected)
        if expected is DeliveryStatus.FAILED:
            assert update.error_code
        else:
            assert update.error_code is None


@only(WITH_STATUS_CALLBACKS)
async def test_a_status_callback_with_a_bad_signature_raises_signature_error(case) -> None:
    request = case.status_request("MSG-1", "delivered")
    with pytest.raises(SignatureError):
        case.channel.parse_status(case.tampered(request))
