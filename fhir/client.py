"""The upstream client: talks to a hospital's FHIR server (httpx, async).

Reads resources (id-only notifications), runs the Subscriptions Backport
``$events`` operation, searches by ``_lastUpdated`` and reads a type's
``_history`` with paging, and creates
backport Subscriptions. Upstream auth is a bearer token or SMART Backend
Services (client credentials with a signed JWT assertion, RS384 or ES384).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Generator, Mapping
from datetime import datetime
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from fhir.errors import UpstreamError

FHIR_JSON = "application/fhir+json"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
BACKPORT_PROFILE = BACKPORT + "backport-subscription"
# The adapter's default topics: a server that defines its own passes them instead.
DEFAULT_TOPICS = {
    "Appointment": "https://adapter.example.org/fhir/SubscriptionTopic/appointment-changed",
    "DiagnosticReport": "https://adapter.example.org/fhir/SubscriptionTopic/report-changed",
    "Invoice": "https://adapter.example.org/fhir/SubscriptionTopic/invoice-changed",
}


class BearerToken(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services (HL7 SMART App Launch 2.x §Backend Services): a
    client_credentials grant whose client is authenticated by a JWT signed with
    its private key (RS384 or ES384). The token is reused until shortly before
    it expires."""

    requires_response_body = True

    def __init__(self, *, token_url: str, client_id: str, private_key_pem: bytes,
                 algorithm: str = "RS384", key_id: str = "",
                 scope: str = "system/*.read system/Subscription.write") -> None:
        if algorithm not in ("RS384", "ES384"):
            raise ValueError("SMART Backend Services signs with RS384 or ES384")
        self.token_url, self.client_id, self.scope = token_url, client_id, scope
        self.algorithm, self.key_id = algorithm, key_id
        self._key = serialization.load_pem_private_key(private_key_pem, password=None)
        self._token: str | None = None
        self._expires = 0.0

    def assertion(self) -> str:
        header = {"alg": self.algorithm, "typ": "JWT"}
        if self.key_id:
            header["kid"] = self.key_id
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.token_url,
                  "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        return f"{signing_input}.{_b64(self._sign(signing_input.encode()))}"

    def _sign(self, data: bytes) -> bytes:
        if self.algorithm == "RS384":
            assert isinstance(self._key, rsa.RSAPrivateKey)
            return self._key.sign(data, padding.PKCS1v15(), hashes.SHA384())
        assert isinstance(self._key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA384())))
        return r.to_bytes(48, "big") + s.to_bytes(48, "big")  # JWS: raw r || s

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._token is None or time.time() > self._expires - 30:
            response = yield httpx.Request("POST", self.token_url, data={
                "grant_type": "client_credentials",
                "scope": self.scope,
                "client_assertion_type":
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": self.assertion(),
            })
            if response.status_code != 200:
                raise UpstreamError(f"token endpoint answered {response.status_code}",
                                    status=response.status_code)
            body = response.json()
            self._token = body["access_token"]
            self._expires = time.time() + float(body.get("expires_in", 300))
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def _instant(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FhirClient:
    """One source server. ``base`` is its FHIR base URL, without a trailing slash."""

    def __init__(self, base: str, *, auth: httpx.Auth | None = None,
                 http: httpx.AsyncClient | None = None, timeout: float = 10.0) -> None:
        self.base = base.rstrip("/")
        self._own = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._auth = auth

    async def __aenter__(self) -> FhirClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def _request(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        if not url.startswith(("http://", "https://")):
            url = f"{self.base}/{url.lstrip('/')}"
        if not url.startswith(self.base + "/"):
            raise UpstreamError(f"{url} is not on the server {self.base}")
        headers = {"Accept": FHIR_JSON, **kwargs.pop("headers", {})}
        try:
            response = await self._http.request(method, url, headers=headers,
                                                auth=self._auth or httpx.USE_CLIENT_DEFAULT,
                                                **kwargs)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{method} {url} failed: {exc}") from exc
        if response.status_code >= 400:
            raise UpstreamError(f"{method} {url} answered {response.status_code}",
                                status=response.status_code)
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamError(f"{method} {url} did not answer JSON") from exc

    async def read(self, reference: str) -> dict[str, Any]:
        """``Type/id`` (optionally ``/_history/vid``) or an absolute URL on this server."""
        return await self._request("GET", reference)

    async def events(self, subscription_id: str, since: int, until: int | None = None,
                     *, content: str = "full-resource") -> dict[str, Any]:
        """Subscriptions Backport ``$events``: the notification Bundle of past
        events ``since``..``until`` (inclusive)."""
        params: dict[str, Any] = {"eventsSinceNumber": since, "content": content}
        if until is not None:
            params["eventsUntilNumber"] = until
        return await self._request("GET", f"Subscription/{subscription_id}/$events",
                                   params=params)

    async def updated_since(self, resource_type: str, since: datetime | None, *,
                            page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Every resource of a type changed at or after ``since``, oldest first,
        following the Bundle's ``next`` links."""
        params: dict[str, Any] = {"_sort": "_lastUpdated", "_count": page_size}
        if since is not None:
            params["_lastUpdated"] = "ge" + _instant(since)
        async for entry in self._entries(resource_type, params):
            if isinstance(entry.get("resource"), dict) and (
                    entry.get("search", {}).get("mode", "match") == "match"):
                yield entry["resource"]

    async def history_since(self, resource_type: str, since: datetime, *,
                            page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Every entry of a type's history (R4 http.html#history: ``GET [type]/_history``)
        from ``since`` on, inclusive: each version, deletions included, newest first
        as the standard orders them, following the Bundle's ``next`` links."""
        params = {"_since": _instant(since), "_count": page_size}
        async for entry in self._entries(f"{resource_type}/_history", params):
            yield entry

    async def _entries(self, url: str, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        page = await self._request("GET", url, params=params)
        while True:
            for entry in page.get("entry") or []:
                if isinstance(entry, dict):
                    yield entry
            next_url = next((link["url"] for link in page.get("link") or []
                             if link.get("relation") == "next"), None)
            if not next_url:
                return
            page = await self._request("GET", next_url)

    async def create_subscription(self, resource_type: str, *, endpoint: str, topic: str,
                                  content: str = "id-only", heartbeat_period_s: int = 300,
                                  headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Create an R4 Subscriptions Backport (STU 1.1) rest-hook Subscription."""
        channel: dict[str, Any] = {
            "extension": [
                {"url": BACKPORT + "backport-heartbeat-period",
                 "valueUnsignedInt": heartbeat_period_s},
                {"url": BACKPORT + "backport-timeout", "valueUnsignedInt": 30},
            ],
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": FHIR_JSON,
            "_payload": {"extension": [
                {"url": BACKPORT + "backport-payload-content", "valueCode": content}]},
        }
        if headers:
            channel["header"] = [f"{k}: {v}" for k, v in headers.items()]
        subscription = {
            "resourceType": "Subscription",
            "meta": {"profile": [BACKPORT_PROFILE]},
            "status": "requested",
            "reason": "Appointment reminders and report notices for patients",
            "criteria": topic,
            "_criteria": {"extension": [{"url": BACKPORT + "backport-filter-criteria",
                                         "valueString": f"{resource_type}?"}]},
            "channel": channel,
        }
        return await self._request("POST", "Subscription", json=subscription,
                                   headers={"Content-Type": FHIR_JSON})
