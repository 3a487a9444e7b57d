"""The HTTP boundary shared by the HTTP providers: one attempt, lower errors mapped to
:class:`SendResult` outcomes, and provider text scrubbed of personal data."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from channels.base import SendResult

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# The shape of a provider's API base setting, for channels.errors.check_settings.
API_BASE = (r"https?://[^\s/]+\S*", "an http:// or https:// URL")
_MAX_ERROR_TEXT = 200
# Phone numbers, e-mail addresses and long digit runs (chat ids) never leave in error text.
_PERSONAL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+|\+?\d[\d\s().-]{4,}\d")


def redact(text: str) -> str:
    """Provider error text without anything that looks like an address or number.

    >>> redact("The 'To' number +39 333 123 4567 is not a valid phone number.")
    "The 'To' number … is not a valid phone number."
    """
    return _PERSONAL.sub("…", text)[:_MAX_ERROR_TEXT]


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Parse Retry-After: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def by_http_status(status: int, code: str, text: str, retry_after: float | None) -> SendResult:
    """The default split: 408, 429 and 5xx are retryable; 401 is our account refused
    (Twilio 20003, WhatsApp 190 expired token, Telegram's revoked bot token); any
    other 4xx is final."""
    if status in (408, 425, 429) or status >= 500:
        return SendResult.retry(code, redact(text), retry_after)
    if status == 401:
        return SendResult.refused_account(code, redact(text))
    return SendResult.fail(code, redact(text))


def transport_failure(exc: httpx.HTTPError) -> SendResult:
    """Time-outs and connection errors are retryable; the same idempotency key makes the
    retry safe where the provider honours it."""
    if isinstance(exc, httpx.TimeoutException):
        return SendResult.retry("timeout", type(exc).__name__)
    return SendResult.retry("transport", type(exc).__name__)


async def post_once(
    client: httpx.AsyncClient,
    url: str,
    interpret: Callable[[httpx.Response], SendResult],
    **kwargs: Any,
) -> SendResult:
    """POST once; map transport errors, otherwise let ``interpret`` read the response."""
    try:
        response = await client.post(url, **kwargs)
    except httpx.HTTPError as exc:
        return transport_failure(exc)
    return interpret(response)


def from_unix(value: Any) -> datetime | None:
    """A provider's Unix-seconds timestamp as an aware UTC datetime, or None."""
    try:
        return datetime.fromtimestamp(int(value), tz=timezone.utc)
    except (TypeError, ValueError, OverflowError):
        return None


def json_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
