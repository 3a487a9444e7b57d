"""Signature primitives, shared by the channels and the fakes that stand in for providers."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


def twilio_signature(url: str, params: Iterable[tuple[str, str]], auth_token: str) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1, keyed by the auth token, of the full URL followed
    by every POST parameter sorted by name, as name then value (repeated names: sorted values).

    >>> twilio_signature("https://mycompany.com/myapp.php?foo=1&bar=2",
    ...     [("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675309"), ("Digits", "1234"),
    ...      ("From", "+14158675309"), ("To", "+18005551212")], "12345")
    'RSOYDt4T1cUTdK1PDd93/VVr8B8='
    """
    grouped: dict[str, set[str]] = {}
    for name, value in params:
        grouped.setdefault(name, set()).add(value)
    payload = url + "".join(
        name + value for name in sorted(grouped) for value in sorted(grouped[name])
    )
    digest = hmac.new(auth_token.encode(), payload.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def sha256_signature(body: bytes, secret: str) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the raw body (X-Hub-Signature-256, the sandbox)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def same(expected: str, given: str | None) -> bool:
    """Constant-time comparison; a missing value never matches."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
