"""The shared table harness: one :class:`ProviderCase` per provider, driving the real
channel against its fake. The contract tests in ``test_contract.py`` run over all of them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from channels.base import Channel, DeliveryStatus, OutboundMessage, WebhookRequest
from channels.email import EmailChannel
from channels.fakes import FakeSmtp, FakeTelegram, FakeTwilio, FakeWhatsApp
from channels.sandbox import SIGNATURE_HEADER as SANDBOX_HEADER
from channels.sandbox import SandboxChannel, sign
from channels.telegram import SECRET_HEADER, TelegramChannel
from channels.twilio import TwilioChannel
from channels.whatsapp import WhatsAppChannel
from tests.channels.conftest import CLIENT_TIMEOUT_S

WEBHOOK = "https://adapter.example/webhooks/{provider}/{kind}"
PATIENT_NUMBER = "+393331234567"


@dataclass
class ProviderCase:
    """How to drive one provider. ``status_table`` maps the provider's own status words to
    ours (None: no update); an empty table means the provider sends no status callbacks.
    ``faults`` lists the faults the provider can show (``429``, ``500``, ``timeout``)."""

    name: str
    channel: Channel
    faults: tuple[str, ...]
    status_table: dict[str, DeliveryStatus | None] = field(default_factory=dict)
    has_webhooks: bool = True
    fake: Any = None

    # --- overridden per provider -------------------------------------------------------
    def message(self, key: str, *, invalid: bool = False) -> OutboundMessage:
        raise NotImplementedError

    def force(self, fault: str) -> None:
        raise NotImplementedError

    def deliveries(self, key: str) -> int:
        raise NotImplementedError

    def status_request(self, provider_id: str, status: str) -> WebhookRequest:
        raise NotImplementedError

    def inbound_request(self, sender: str, text: str) -> WebhookRequest:
        raise NotImplementedError

    def tampered(self, request: WebhookRequest) -> WebhookRequest:
        """The same request with its body changed after signing."""
        return WebhookRequest(request.method, request.url, request.headers, request.query,
                              request.body.replace(b"1", b"2") + b" ")


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S)


class TwilioCase(ProviderCase):
    def __init__(self, fake: FakeTwilio) -> None:
        channel = TwilioChannel(
            api_base=fake.base_url, account_sid=fake.account_sid, auth_token=fake.auth_token,
            from_number="+390200000000", status_callback_url=WEBHOOK.format(
                provider="twilio", kind="status"), client=_client(),
        )
        super().__init__("twilio", channel, ("429", "500", "timeout"), {
            "queued": None, "accepted": None, "sending": None,
            "sent": DeliveryStatus.SENT, "delivered": DeliveryStatus.DELIVERED,
            "undelivered": DeliveryStatus.FAILED, "failed": DeliveryStatus.FAILED,
        }, fake=fake)

    def message(self, key: str, *, invalid: bool = False) -> OutboundMessage:
        return OutboundMessage(to="+393330000000" if invalid else PATIENT_NUMBER,
                               body="Promemoria: visita domani alle 9:30. Risponda 1 o 2.",
                               idempotency_key=key)

    def force(self, fault: str) -> None:
        self.fake.fail_next(fault)

    def deliveries(self, key: str) -> int:
        return self.fake.deliveries[key]

    def _form(self, kind: str, params: dict[str, str]) -> WebhookRequest:
        url = WEBHOOK.format(provider="twilio", kind=kind)
        body, headers = self.fake.signed_form(url, params)
        return WebhookRequest("POST", url, headers, {}, body)

    def status_request(self, provider_id: str, status: str) -> WebhookRequest:
        params = {"MessageSid": provider_id, "MessageStatus": status,
                  "AccountSid": self.fake.account_sid}
        if status in ("failed", "undelivered"):
            params["ErrorCode"] = "30003"
        return self._form("status", params)

    def inbound_request(self, sender: str, text: str) -> WebhookRequest:
        return self._form("inbound", {"MessageSid": "SMinbound1", "From": sender, "Body": text,
                                      "To": "+390200000000"})


class WhatsAppCase(ProviderCase):
    def __init__(self, fake: FakeWhatsApp) -> None:
        channel = WhatsAppChannel(
            api_base=fake.base_url, phone_number_id=fake.phone_number_id,
            access_token=fake.access_token, app_secret=fake.app_secret,
            verify_token="verify-me", client=_client(),
        )
        super().__init__("whatsapp", channel, ("429", "500", "timeout"), {
            "sent": DeliveryStatus.SENT, "delivered": DeliveryStatus.DELIVERED,
            "read": DeliveryStatus.READ, "failed": DeliveryStatus.FAILED,
        }, fake=fake)

    def message(self, key: str, *, invalid: bool = False) -> OutboundMessage:
        return OutboundMessage(
            to="+393330000000" if invalid else PATIENT_NUMBER, body="unused outside the window",
            idempotency_key=key, language="it", template="appointment_reminder",
            template_params=("Maria", "martedì 1 dicembre alle 09:30"),
        )

    def force(self, fault: str) -> None:
        self.fake.fail_next(fault)

    def deliveries(self, key: str) -> int:
        return self.fake.deliveries[key]

    def _signed(self, kind: str, value: dict[str, Any]) -> WebhookRequest:
        body, headers = self.fake.signed(self.fake.notification(value))
        return WebhookRequest("POST", WEBHOOK.format(provider="whatsapp", kind=kind), headers,
                              {}, body)

    def status_request(self, provider_id: str, status: str) -> WebhookRequest:
        item: dict[str, Any] = {"id": provider_id, "status": status, "timestamp": "1740819600",
                                "recipient_id": PATIENT_NUMBER.lstrip("+")}
        if status == "failed":
            item["errors"] = [{"code": 131026, "title": "Message undeliverable"}]
        return self._signed("status", {"statuses": [item]})

    def inbound_request(self, sender: str, text: str) -> WebhookRequest:
        return self._signed("inbound", {"messages": [{
            "from": sender.lstrip("+"), "id": "wamid.inbound1", "timestamp": "1740819600",
            "type": "text", "text": {"body": text}}]})


class TelegramCase(ProviderCase):
    def __init__(self, fake: FakeTelegram) -> None:
        channel = TelegramChannel(api_base=fake.base_url, bot_token=fake.bot_token,
                                  secret_token=fake.secret_token, bot_name="SanLucaBot",
                                  client=_client())
        super().__init__("telegram", channel, ("429", "500", "timeout"), {}, fake=fake)

    def message(self, key: str, *, invalid: bool = False) -> OutboundMessage:
        return OutboundMessage(to="666" if invalid else "424242", body="Promemoria: visita domani.",
                               idempotency_key=key)

    def force(self, fault: str) -> None:
        self.fake.fail_next(fault)

    def deliveries(self, key: str) -> int:
        return self.fake.deliveries[key]

    def _update(self, update: dict[str, Any]) -> WebhookRequest:
        return WebhookRequest("POST", WEBHOOK.format(provider="telegram", kind="inbound"),
                              {SECRET_HEADER: self.fake.secret_token}, {},
                              json.dumps(update).encode())

    def status_request(self, provider_id: str, status: str) -> WebhookRequest:
        raise NotImplementedError("the Bot API sends no delivery receipts")

    def inbound_request(self, sender: str, text: str) -> WebhookRequest:
        return self._update(self.fake.message_update(int(sender), text))

    def tampered(self, request: WebhookRequest) -> WebhookRequest:
        return WebhookRequest(request.method, request.url, {SECRET_HEADER: "guessed"},
                              request.query, request.body)


class EmailCase(ProviderCase):
    def __init__(self, fake: FakeSmtp) -> None:
        channel = EmailChannel(host=fake.host, port=fake.port, sender="noreply@clinic.example",
                               tls_context=fake.client_tls_context(), timeout_s=CLIENT_TIMEOUT_S)
        super().__init__("email", channel, ("429", "500", "timeout"), {}, has_webhooks=False,
                         fake=fake)

    def message(self, key: str, *, invalid: bool = False) -> OutboundMessage:
        return OutboundMessage(
            to="nobody@clinic.example" if invalid else "paziente@example.org",
            body="Promemoria: visita domani alle 9:30.", idempotency_key=key,
            subject="Promemoria", html_body="<p>Promemoria: visita domani alle <b>9:30</b>.</p>",
        )

    def force(self, fault: str) -> None:
        if fault == "timeout":
            self.fake.slow_next()
        else:
            self.fake.fail_next({"429": "451", "500": "452"}[fault])

    def deliveries(self, key: str) -> int:
        from channels.email import message_id_for
        return self.fake.deliveries[message_id_for(key, "noreply@clinic.example")]


class SandboxCase(ProviderCase):
    SECRET = "sandbox-test-secret"

    def __init__(self) -> None:
        self.outbox: list[OutboundMessage] = []
        self.sink_down = False

        async def record(message: OutboundMessage) -> str:
            if self.sink_down:
                self.sink_down = False
                raise ConnectionError("database unavailable")
            self.outbox.append(message)
            return f"outbox-{len(self.outbox)}"

        channel = SandboxChannel(record=record, webhook_secret=self.SECRET)
        super().__init__("sandbox", channel, ("500",), {
            "sent": DeliveryStatus.SENT, "delivered": DeliveryStatus.DELIVERED,
            "read": DeliveryStatus.READ, "failed": DeliveryStatus.FAILED,
        })

    def message(self, key: str, *, invalid: bool = False) -> OutboundMessage:
        return OutboundMessage(to=PATIENT_NUMBER, body="Promemoria", idempotency_key=key)

    def force(self, fault: str) -> None:
        self.sink_down = True

    def deliveries(self, key: str) -> int:
        return sum(1 for m in self.outbox if m.idempotency_key == key)

    def _signed(self, kind: str, payload: dict[str, Any]) -> WebhookRequest:
        body = json.dumps(payload).encode()
        return WebhookRequest("POST", WEBHOOK.format(provider="sandbox", kind=kind),
                              {SANDBOX_HEADER: sign(body, self.SECRET)}, {}, body)

    def status_request(self, provider_id: str, status: str) -> WebhookRequest:
        item = {"message_id": provider_id, "status": status, "at": "2025-03-01T09:00:00Z"}
        if status == "failed":
            item["error_code"] = "unreachable"
        return self._signed("status", {"statuses": [item]})

    def inbound_request(self, sender: str, text: str) -> WebhookRequest:
        return self._signed("inbound", {"messages": [
            {"message_id": "in-1", "from": sender, "text": text}]})
