"""A fake WhatsApp Cloud API: ``/{phone_number_id}/messages``, the 24-hour window, approved
templates, signed webhooks, and the error modes of the real one."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from channels._signing import sha256_signature
from channels.fakes._faults import FakeProvider, Fault
from channels.whatsapp import SIGNATURE_HEADER


@dataclass
class FakeWhatsAppMessage:
    id: str
    to: str
    kind: str  # "text" or "template"
    text: str | None
    template: dict[str, Any] | None
    idempotency_key: str | None
    statuses: list[str] = field(default_factory=list)


class FakeWhatsApp(FakeProvider):
    """Behaves like the Cloud API for what the adapter uses.

    - Free text is refused with error 131047 (re-engagement required) unless the recipient
      wrote within 24 hours (:meth:`open_window` or :meth:`post_inbound`); templates must be
      in ``approved_templates`` (None: any) or get 132001.
    - Like the real API it does not de-duplicate: a repeated ``biz_opaque_callback_data``
      delivers again and ``deliveries`` shows it; ``dedupe=True`` makes it behave as if it did.
    - Errors: 131026 for ``invalid_numbers``, 429 (130429), 500 (131000), time-outs.
    - ``auto_statuses`` are posted, signed with the app secret, to ``webhook_url``.
    """

    def __init__(
        self,
        *,
        phone_number_id: str = "1000000001",
        access_token: str = "fake-whatsapp-token",
        app_secret: str = "fake-app-secret",
        webhook_url: str | None = None,
        auto_statuses: tuple[str, ...] = (),
        approved_templates: set[str] | None = None,
        invalid_numbers: set[str] | None = None,
        dedupe: bool = False,
        **faults: Any,
    ) -> None:
        super().__init__(**faults)
        self.phone_number_id = phone_number_id
        self.access_token = access_token
        self.app_secret = app_secret
        self.webhook_url = webhook_url
        self.auto_statuses = auto_statuses
        self.approved_templates = approved_templates
        self.invalid_numbers = invalid_numbers or set()
        self.dedupe = dedupe
        self.messages: dict[str, FakeWhatsAppMessage] = {}
        self.last_inbound: dict[str, float] = {}
        self._by_key: dict[str, FakeWhatsAppMessage] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.app = self._build_app()

    def reset(self) -> None:
        super().reset()
        self.messages.clear()
        self.last_inbound.clear()
        self._by_key.clear()

    def open_window(self, number: str, at: float | None = None) -> None:
        """As if ``number`` had written to us at ``at`` (default now)."""
        self.last_inbound[number.lstrip("+")] = time.time() if at is None else at

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="fake whatsapp cloud api")

        @app.post("/{phone_number_id}/messages")
        async def send(phone_number_id: str, request: Request) -> JSONResponse:
            await self._latency()
            if request.headers.get("authorization") != f"Bearer {self.access_token}":
                return _error(401, 190, "Invalid OAuth access token.")
            if phone_number_id != self.phone_number_id:
                return _error(400, 100, "Unsupported post request.")
            fault = self._next_fault()
            if fault is Fault.TOO_MANY_REQUESTS:
                return _error(429, 130429, "Rate limit hit")
            if fault is Fault.SERVER_ERROR:
                return _error(500, 131000, "Something went wrong")
            try:
                payload = json.loads(await request.body())
            except ValueError:
                return _error(400, 100, "Invalid parameter")
            problem = self._check(payload)
            if problem is not None:
                return problem
            message = self._accept(payload)
            if fault is Fault.TIMEOUT:
                await asyncio.sleep(self.slow_s)
            return JSONResponse({
                "messaging_product": "whatsapp",
                "contacts": [{"input": payload["to"], "wa_id": payload["to"].lstrip("+")}],
                "messages": [{"id": message.id}],
            })

        return app

    def _check(self, payload: dict[str, Any]) -> JSONResponse | None:
        to = str(payload.get("to", "")).lstrip("+")
        if payload.get("messaging_product") != "whatsapp" or not to.isdigit():
            return _error(400, 100, "Invalid parameter")
        if to in self.invalid_numbers or "+" + to in self.invalid_numbers:
            return _error(400, 131026, "Message undeliverable")
        kind = payload.get("type")
        if kind == "text":
            last = self.last_inbound.get(to)
            if last is None or time.time() - last >= 24 * 3600:
                return _error(400, 131047, "Re-engagement message: more than 24 hours have "
                                           "passed since the recipient last replied")
            return None
        if kind == "template":
            name = (payload.get("template") or {}).get("name")
            if self.approved_templates is not None and name not in self.approved_templates:
                return _error(404, 132001, "Template name does not exist in the translation")
            return None
        return _error(400, 100, "Invalid parameter")

    def _accept(self, payload: dict[str, Any]) -> FakeWhatsAppMessage:
        key = payload.get("biz_opaque_callback_data")
        if self.dedupe and key and key in self._by_key:
            return self._by_key[key]
        message = FakeWhatsAppMessage(
            id="wamid." + secrets.token_urlsafe(24),
            to=str(payload["to"]).lstrip("+"),
            kind=payload["type"],
            text=(payload.get("text") or {}).get("body"),
            template=payload.get("template"),
            idempotency_key=key,
        )
        self.messages[message.id] = message
        if key:
            self._by_key.setdefault(key, message)
        self.deliveries[key or message.id] += 1
        if self.auto_statuses and self.webhook_url:
            task = asyncio.create_task(self._auto_statuses(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return message

    async def _auto_statuses(self, message: FakeWhatsAppMessage) -> None:
        for status in self.auto_statuses:
            try:
                await self.post_status(message.id, status)
            except httpx.HTTPError:
                return

    def notification(self, value: dict[str, Any]) -> dict[str, Any]:
        """Wrap a ``value`` as Meta wraps webhook notifications."""
        value = {"messaging_product": "whatsapp",
                 "metadata": {"display_phone_number": "390200000000",
                              "phone_number_id": self.phone_number_id}} | value
        return {"object": "whatsapp_business_account",
                "entry": [{"id": "WABA-1", "changes": [{"field": "messages", "value": value}]}]}

    def signed(self, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        return body, {SIGNATURE_HEADER: sha256_signature(body, self.app_secret),
                      "Content-Type": "application/json"}

    async def post_status(
        self, message_id: str, status: str, *, url: str | None = None,
        error_code: int | None = None,
    ) -> httpx.Response:
        message = self.messages[message_id]
        item: dict[str, Any] = {"id": message_id, "status": status,
                                "timestamp": str(int(time.time())), "recipient_id": message.to}
        if message.idempotency_key:
            item["biz_opaque_callback_data"] = message.idempotency_key
        if error_code is not None:
            item["errors"] = [{"code": error_code, "title": "Message failed"}]
        message.statuses.append(status)
        return await self._post(url, self.notification({"statuses": [item]}))

    async def post_inbound(self, from_: str, text: str, *, url: str | None = None) -> httpx.Response:
        """A patient's text message; it also opens the 24-hour window for ``from_``."""
        wa_id = from_.lstrip("+")
        self.open_window(wa_id)
        item = {"from": wa_id, "id": "wamid." + secrets.token_urlsafe(24),
                "timestamp": str(int(time.time())), "type": "text", "text": {"body": text}}
        contacts = [{"profile": {"name": "Paziente"}, "wa_id": wa_id}]
        return await self._post(url, self.notification({"contacts": contacts, "messages": [item]}))

    async def _post(self, url: str | None, payload: dict[str, Any]) -> httpx.Response:
        target = url or self.webhook_url
        if target is None:
            raise ValueError("no webhook URL configured")
        body, headers = self.signed(payload)
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(target, content=body, headers=headers)


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "OAuthException", "code": code,
                   "fbtrace_id": secrets.token_hex(8)}},
        status_code=status,
    )
