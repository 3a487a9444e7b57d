"""A fake Twilio Messaging API: the Messages.json resource, idempotency tokens, signed
status callbacks and inbound messages, and the error modes of the real one."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from channels._signing import twilio_signature
from channels.fakes._faults import FakeProvider, Fault
from channels.sms import count_segments
from channels.twilio import IDEMPOTENCY_HEADER, SIGNATURE_HEADER

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


@dataclass
class FakeSms:
    sid: str
    to: str
    from_: str
    body: str
    idempotency_key: str | None
    status_callback: str | None
    statuses: list[str] = field(default_factory=list)


class FakeTwilio(FakeProvider):
    """Behaves like Twilio for what the adapter uses.

    - ``POST /2010-04-01/Accounts/{sid}/Messages.json`` (basic auth) answers 201 with the
      message resource; a repeated ``I-Twilio-Idempotency-Token`` answers the first resource
      again and delivers nothing new.
    - Errors: 21211 (invalid 'To', for non-E.164 numbers and ``invalid_numbers``), 21610
      (``opted_out`` numbers), 429 with Retry-After, 500, and time-outs (accepted, then
      answered after ``slow_s``), forced with :meth:`fail_next` or at ``failure_rate``.
    - ``auto_statuses`` (e.g. ``("sent", "delivered")``) are posted, signed, to each
      message's StatusCallback (or ``status_callback_url``) after acceptance.
    """

    def __init__(
        self,
        *,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "fake-twilio-token",
        auto_statuses: tuple[str, ...] = (),
        status_callback_url: str | None = None,
        invalid_numbers: set[str] | None = None,
        opted_out: set[str] | None = None,
        retry_after_s: int = 1,
        **faults: Any,
    ) -> None:
        super().__init__(**faults)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.auto_statuses = auto_statuses
        self.status_callback_url = status_callback_url
        self.invalid_numbers = invalid_numbers or set()
        self.opted_out = opted_out or set()
        self.retry_after_s = retry_after_s
        self.messages: dict[str, FakeSms] = {}
        self._by_token: dict[str, FakeSms] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.app = self._build_app()

    def reset(self) -> None:
        super().reset()
        self.messages.clear()
        self._by_token.clear()

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="fake twilio")

        @app.post("/2010-04-01/Accounts/{sid}/Messages.json")
        async def create_message(sid: str, request: Request) -> JSONResponse:
            await self._latency()
            if sid != self.account_sid or not self._authorised(request):
                return _error(401, 20003, "Authenticate")
            fault = self._next_fault()
            if fault is Fault.TOO_MANY_REQUESTS:
                return _error(429, 20429, "Too Many Requests",
                              {"Retry-After": str(self.retry_after_s)})
            if fault is Fault.SERVER_ERROR:
                return _error(500, 20500, "Internal Server Error")
            form = await request.form()
            to, body = str(form.get("To", "")), str(form.get("Body", ""))
            if not body:
                return _error(400, 21602, "Message body is required.")
            if not E164.match(to) or to in self.invalid_numbers:
                return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
            if to in self.opted_out:
                return _error(400, 21610, "Attempt to send to unsubscribed recipient")
            message = self._accept(request.headers.get(IDEMPOTENCY_HEADER), form)
            if fault is Fault.TIMEOUT:
                await asyncio.sleep(self.slow_s)
            return JSONResponse(self._resource(message), status_code=201)

        return app

    def _authorised(self, request: Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return request.headers.get("authorization") == f"Basic {expected}"

    def _accept(self, token: str | None, form: Any) -> FakeSms:
        if token and token in self._by_token:
            return self._by_token[token]
        message = FakeSms(
            sid="SM" + secrets.token_hex(16),
            to=str(form["To"]),
            from_=str(form.get("From", "")),
            body=str(form["Body"]),
            idempotency_key=token,
            status_callback=form.get("StatusCallback") or self.status_callback_url,
            statuses=["queued"],
        )
        self.messages[message.sid] = message
        if token:
            self._by_token[token] = message
        self.deliveries[token or message.sid] += 1
        if self.auto_statuses and message.status_callback:
            task = asyncio.create_task(self._auto_statuses(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return message

    async def _auto_statuses(self, message: FakeSms) -> None:
        for status in self.auto_statuses:
            try:
                await self.post_status(message.sid, status)
            except httpx.HTTPError:
                return

    def _resource(self, message: FakeSms) -> dict[str, Any]:
        segments = count_segments(message.body).segments
        return {
            "sid": message.sid, "account_sid": self.account_sid, "to": message.to,
            "from": message.from_, "body": message.body, "status": "queued",
            "num_segments": str(segments), "price": None, "error_code": None,
        }

    def signed_form(self, url: str, params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        """A form body and headers signed as Twilio signs webhooks to ``url``."""
        body = httpx.QueryParams(params).__str__().encode()
        signature = twilio_signature(url, list(params.items()), self.auth_token)
        return body, {
            SIGNATURE_HEADER: signature,
            "Content-Type": "application/x-www-form-urlencoded",
        }

    async def post_status(
        self, sid: str, status: str, *, url: str | None = None, error_code: str | None = None
    ) -> httpx.Response:
        """POST a signed status callback for message ``sid``."""
        message = self.messages[sid]
        target = url or message.status_callback or self.status_callback_url
        if target is None:
            raise ValueError("no status callback URL for this message")
        params = {
            "MessageSid": sid, "SmsSid": sid, "AccountSid": self.account_sid,
            "MessageStatus": status, "SmsStatus": status, "To": message.to, "From": message.from_,
        }
        if error_code:
            params["ErrorCode"] = error_code
        message.statuses.append(status)
        body, headers = self.signed_form(target, params)
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(target, content=body, headers=headers)

    async def post_inbound(self, from_: str, body: str, url: str, to: str = "+390200000000") -> httpx.Response:
        """POST a signed incoming SMS from ``from_`` to the adapter's inbound webhook."""
        params = {
            "MessageSid": "SM" + secrets.token_hex(16), "AccountSid": self.account_sid,
            "From": from_, "To": to, "Body": body, "NumMedia": "0",
        }
        content, headers = self.signed_form(url, params)
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(url, content=content, headers=headers)


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "status": status,
         "more_info": f"https://www.twilio.com/docs/errors/{code}"},
        status_code=status, headers=headers,
    )
