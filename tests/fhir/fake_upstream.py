"""A small source FHIR server for tests: read, _lastUpdated search and type-level
_history with paging, Subscription create, backport $events, and a SMART token
endpoint."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fhir.mapping import parse_instant


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class FakeUpstream:
    url: str  # the FHIR base, e.g. http://127.0.0.1:port/fhir
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)  # event n (1-based) → focus reference
    events_supported: bool = True
    public_key: Any = None  # set: every request needs a token from /token
    tokens_issued: int = 0
    requests: list[str] = field(default_factory=list)
    deleted: dict[str, str] = field(default_factory=dict)  # reference → version of its deletion
    forgotten: set[str] = field(default_factory=set)  # deleted, and read as 404 (no history kept)
    history: list[dict[str, Any]] = field(default_factory=list)  # entries of put and delete, oldest first
    history_status: int = 200  # what [type]/_history answers: another status, an OperationOutcome

    def put(self, resource: dict[str, Any], version: int, updated: str) -> dict[str, Any]:
        resource = {**resource, "meta": {"versionId": str(version), "lastUpdated": updated}}
        ref = f"{resource['resourceType']}/{resource['id']}"
        self.resources[ref] = resource
        self.history.append({"fullUrl": f"{self.url}/{ref}", "resource": resource,
                             "request": {"method": "PUT", "url": ref},
                             "response": {"status": "200 OK", "etag": f'W/"{version}"', "lastModified": updated}})
        return resource

    def delete(self, reference: str, version: int, *, forget: bool = False, at: str | None = None) -> int:
        """Delete a resource (its read answers 410 Gone, or 404 with ``forget``) and
        record the event; ``at``: its time in the history (else listed at any ``_since``)."""
        self.resources.pop(reference)
        self.deleted[reference] = str(version)
        if forget:
            self.forgotten.add(reference)
        response = {"status": "204 No Content", "etag": f'W/"{version}"'} | ({"lastModified": at} if at else {})
        self.history.append({"fullUrl": f"{self.url}/{reference}", "request": {"method": "DELETE", "url": reference},
                             "response": response})
        return self.record_event(reference)

    def record_event(self, reference: str) -> int:
        self.events.append(reference)
        return len(self.events)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def check_token(request: Request, call_next):
            self.requests.append(f"{request.method} {request.url.path}?{request.url.query}")
            if self.public_key is not None and request.url.path != "/token" and (
                    request.headers.get("authorization") != "Bearer token-1"):
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            return await call_next(request)

        @app.post("/token")
        async def token(request: Request):
            form = await request.form()
            assert form["grant_type"] == "client_credentials"
            header, claims, signature = str(form["client_assertion"]).split(".")
            alg = json.loads(_unb64(header))["alg"]
            signed = f"{header}.{claims}".encode()
            raw = _unb64(signature)
            if alg == "RS384":
                assert isinstance(self.public_key, rsa.RSAPublicKey)
                self.public_key.verify(raw, signed, padding.PKCS1v15(), hashes.SHA384())
            else:
                der = encode_dss_signature(int.from_bytes(raw[:48], "big"),
                                           int.from_bytes(raw[48:], "big"))
                self.public_key.verify(der, signed, ec.ECDSA(hashes.SHA384()))
            assert json.loads(_unb64(claims))["aud"].endswith("/token")
            self.tokens_issued += 1
            return {"access_token": "token-1", "token_type": "bearer", "expires_in": 300}

        @app.post("/fhir/Subscription")
        async def create_subscription(request: Request):
            body = await request.json()
            sid = f"sub-{len(self.subscriptions) + 1}"
            self.subscriptions[sid] = {**body, "id": sid, "status": "requested"}
            return JSONResponse(self.subscriptions[sid], status_code=201)

        @app.get("/fhir/Subscription/{sid}/$events")
        async def events(sid: str, eventsSinceNumber: int, eventsUntilNumber: int | None = None):
            if not self.events_supported:
                return JSONResponse({"resourceType": "OperationOutcome"}, status_code=404)
            until = eventsUntilNumber or len(self.events)
            numbers = range(eventsSinceNumber, until + 1)
            return self.notification(sid, "query-event", numbers, full=True)

        @app.get("/fhir/{kind}/_history")
        async def history(kind: str, request: Request):
            """R4 http.html#history: every version since ``_since`` (inclusive), newest first."""
            if self.history_status != 200:
                return JSONResponse({"resourceType": "OperationOutcome"}, status_code=self.history_status)
            params = request.query_params
            since = parse_instant(params.get("_since"))
            count, page = int(params.get("_count", 100)), int(params.get("_page", 0))
            matches = [e for e in reversed(self.history) if e["request"]["url"].startswith(kind + "/") and (
                since is None or "lastModified" not in e["response"]
                or parse_instant(e["response"]["lastModified"]) >= since)]
            bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "total": len(matches),
                                      "entry": matches[page * count:(page + 1) * count], "link": []}
            if (page + 1) * count < len(matches):
                query = "&".join(f"{k}={v}" for k, v in params.items() if k != "_page")
                bundle["link"].append({"relation": "next",
                                       "url": f"{self.url}/{kind}/_history?{query}&_page={page + 1}"})
            return bundle

        @app.get("/fhir/{kind}/{rid}")
        async def read(kind: str, rid: str):
            ref = f"{kind}/{rid}"
            if ref in self.deleted and ref not in self.resources:
                return JSONResponse({"resourceType": "OperationOutcome"},
                                    status_code=404 if ref in self.forgotten else 410)
            found = self.resources.get(ref)
            return found or JSONResponse({"resourceType": "OperationOutcome"}, status_code=404)

        @app.get("/fhir/{kind}")
        async def search(kind: str, request: Request):
            params = request.query_params
            since = parse_instant(params.get("_lastUpdated", "ge")[2:] or None)
            count, page = int(params.get("_count", 100)), int(params.get("_page", 0))
            matches = sorted(
                (r for r in self.resources.values() if r["resourceType"] == kind and (
                    since is None or parse_instant(r["meta"]["lastUpdated"]) >= since)),
                key=lambda r: r["meta"]["lastUpdated"])
            chunk = matches[page * count:(page + 1) * count]
            bundle: dict[str, Any] = {
                "resourceType": "Bundle", "type": "searchset", "total": len(matches),
                "entry": [{"fullUrl": f"{self.url}/{kind}/{r['id']}", "resource": r,
                           "search": {"mode": "match"}} for r in chunk],
                "link": []}
            if (page + 1) * count < len(matches):
                query = "&".join(f"{k}={v}" for k, v in params.items() if k != "_page")
                bundle["link"].append({"relation": "next",
                                       "url": f"{self.url}/{kind}?{query}&_page={page + 1}"})
            return bundle

        return app

    def notification(self, sid: str, kind: str, numbers: range | list[int], *, full: bool,
                     total: int | None = None) -> dict[str, Any]:
        """A backport (R4) history Bundle for events ``numbers``."""
        parameters = [
            {"name": "subscription", "valueReference": {"reference": f"{self.url}/Subscription/{sid}"}},
            {"name": "topic", "valueCanonical": "https://adapter.example.org/topic"},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": kind},
            {"name": "events-since-subscription-start",
             "valueString": str(total if total is not None else len(self.events))},
        ]
        entries: list[dict[str, Any]] = []
        for n in numbers:
            ref = self.events[n - 1]
            parameters.append({"name": "notification-event", "part": [
                {"name": "event-number", "valueString": str(n)},
                {"name": "focus", "valueReference": {"reference": f"{self.url}/{ref}"}}]})
            entry: dict[str, Any] = {"fullUrl": f"{self.url}/{ref}"}
            if ref in self.deleted and ref not in self.resources:  # a history entry of a deletion
                entry["request"] = {"method": "DELETE", "url": ref}
                entry["response"] = {"status": "410 Gone", "etag": f'W/"{self.deleted[ref]}"'}
            elif full:
                entry["resource"] = self.resources[ref]
            entries.append(entry)
        return {"resourceType": "Bundle", "type": "history", "entry": [
            {"fullUrl": "urn:uuid:status", "resource": {"resourceType": "Parameters",
                                                        "parameter": parameters}},
            *entries]}
