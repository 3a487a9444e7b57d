"""A fake Telegram Bot API: ``sendMessage``, blocked bots, and webhook updates carrying the
secret token."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from channels.fakes._faults import FakeProvider, Fault
from channels.telegram import IDEMPOTENCY_HEADER, SECRET_HEADER


@dataclass
class FakeTelegramMessage:
    chat_id: str
    message_id: int
    text: str
    idempotency_key: str | None


class FakeTelegram(FakeProvider):
    """Behaves like the Bot API for what the adapter uses.

    - ``POST /bot{token}/sendMessage``: 200 ``{"ok": true, "result": Message}``; chat ids
      must be integers (else 400 chat not found), ``blocked_chats`` get 403 "bot was blocked
      by the user". No de-duplication, like the real one; ``deliveries`` counts by the
      ``X-Idempotency-Key`` header the channel sends.
    - Errors: 429 with ``parameters.retry_after``, 500, time-outs.
    - :meth:`post_update` and :meth:`post_message` send webhook updates with the secret token.
    """

    def __init__(
        self,
        *,
        bot_token: str = "123456:fake-bot-token",
        secret_token: str = "fake-secret-token",
        webhook_url: str | None = None,
        blocked_chats: set[str] | None = None,
        retry_after_s: int = 1,
        **faults: Any,
    ) -> None:
        super().__init__(**faults)
        self.bot_token = bot_token
        self.secret_token = secret_token
        self.webhook_url = webhook_url
        self.blocked_chats = blocked_chats or set()
        self.retry_after_s = retry_after_s
        self.messages: list[FakeTelegramMessage] = []
        self._ids = itertools.count(1)
        self._updates = itertools.count(1)
        self.app = self._build_app()

    def reset(self) -> None:
        super().reset()
        self.messages.clear()

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="fake telegram bot api")

        @app.post("/bot{token}/sendMessage")
        async def send_message(token: str, request: Request) -> JSONResponse:
            await self._latency()
            if token != self.bot_token:
                return _error(401, "Unauthorized")
            fault = self._next_fault()
            if fault is Fault.TOO_MANY_REQUESTS:
                return _error(429, f"Too Many Requests: retry after {self.retry_after_s}",
                              {"retry_after": self.retry_after_s})
            if fault is Fault.SERVER_ERROR:
                return _error(500, "Internal Server Error")
            try:
                payload = json.loads(await request.body())
            except ValueError:
                return _error(400, "Bad Request: invalid JSON")
            chat = str(payload.get("chat_id", ""))
            if not chat.lstrip("-").isdigit():
                return _error(400, "Bad Request: chat not found")
            if chat in self.blocked_chats:
                return _error(403, "Forbidden: bot was blocked by the user")
            if not payload.get("text"):
                return _error(400, "Bad Request: message text is empty")
            message = FakeTelegramMessage(chat, next(self._ids), str(payload["text"]),
                                          request.headers.get(IDEMPOTENCY_HEADER))
            self.messages.append(message)
            self.deliveries[message.idempotency_key or f"{chat}:{message.message_id}"] += 1
            if fault is Fault.TIMEOUT:
                await asyncio.sleep(self.slow_s)
            return JSONResponse({"ok": True, "result": {
                "message_id": message.message_id,
                "chat": {"id": int(chat), "type": "private"},
                "date": int(time.time()), "text": message.text,
            }})

        return app

    def message_update(self, chat_id: int, text: str) -> dict[str, Any]:
        """An Update with a private message from user ``chat_id``."""
        return {"update_id": next(self._updates), "message": {
            "message_id": next(self._ids), "date": int(time.time()), "text": text,
            "from": {"id": chat_id, "is_bot": False, "first_name": "Paziente"},
            "chat": {"id": chat_id, "type": "private"},
        }}

    async def post_update(self, update: dict[str, Any], *, url: str | None = None,
                          secret: str | None = None) -> httpx.Response:
        target = url or self.webhook_url
        if target is None:
            raise ValueError("no webhook URL configured")
        headers = {SECRET_HEADER: secret if secret is not None else self.secret_token}
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(target, json=update, headers=headers)

    async def post_message(self, chat_id: int, text: str, *, url: str | None = None) -> httpx.Response:
        """The patient writes ``text`` (e.g. ``/start <token>``) to the bot."""
        return await self.post_update(self.message_update(chat_id, text), url=url)


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return JSONResponse(body, status_code=status)
