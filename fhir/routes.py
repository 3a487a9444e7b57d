"""The FHIR R4 REST facade (FHIR R4 §3.1.0 RESTful API) as a FastAPI router; the
core mounts it at ``/fhir/R4`` and applies authentication.

Routes stay short: read the body, run the service in one transaction, answer.
Every error is an OperationOutcome.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from adapter.db import read_transaction, transaction
from adapter.storage_full import NOT_STORED, RETRY_AFTER_S, is_storage_full
from fhir import bundles
from fhir.capability import SYSTEM_INTERACTIONS, TYPE_INTERACTIONS, capability_statement
from fhir.errors import FhirError, Issue, invalid
from fhir.outcome import fhir_response, information, outcome_response
from fhir.service import DeleteResult, FhirService, StoredVersion, WriteResult, deletion_text
from fhir.settings import FhirSettings
from fhir.subscriptions import SubscriptionReceiver
from fhir.validate import SUPPORTED_TYPES, parse_resource

log = logging.getLogger(__name__)
T = TypeVar("T")
JSON_TYPES = ("application/fhir+json", "application/json")


def build_router(*, sessions: sessionmaker[Session], service: FhirService) -> APIRouter:
    receiver = SubscriptionReceiver(service=service, sessions=sessions)
    router = APIRouter()
    facade = _Facade(service, sessions, service.settings, receiver)
    for interaction in SYSTEM_INTERACTIONS:
        if interaction.code == "batch":
            continue  # the same route as transaction: the Bundle's type decides
        router.add_api_route(interaction.path, facade.system_endpoint(interaction.code),
                             methods=[interaction.method], name=f"fhir-{interaction.code}",
                             response_class=Response)
        if interaction.path == "/":
            # Clients post Bundles to the bare base URL ([base], FHIR R4 §3.1.0.11).
            router.add_api_route("", facade.system_endpoint(interaction.code),
                                 methods=[interaction.method], response_class=Response,
                                 include_in_schema=False)
    for kind in SUPPORTED_TYPES:
        for interaction in TYPE_INTERACTIONS:
            path = interaction.path.replace("{type}", kind)
            router.add_api_route(path, facade.type_endpoint(kind, interaction.code, path),
                                 methods=[interaction.method], response_class=Response,
                                 name=_route_name(kind, interaction.code, path))
    router.add_api_route("/{rest:path}", facade.unsupported,
                         methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                         include_in_schema=False)
    return router


def not_stored_for_want_of_space() -> FhirError:
    """503 with Retry-After: the database is full, nothing was stored. 503 rather than
    WebDAV's 507: HTTP clients and integration engines retry a 503, honouring
    Retry-After (RFC 9110 §15.6.4); ``no-store`` is FHIR's IssueType for a persistent
    store that cannot be used (a ``transient`` issue)."""
    return FhirError(503, Issue("no-store", f"Not stored: {NOT_STORED}; nothing of this request was stored."
                                            " Send it again later."),
                     headers={"Retry-After": str(RETRY_AFTER_S)})


def _route_name(kind: str, code: str, path: str) -> str:
    return f"fhir-{kind}-{code}" + ("-conditional" if code == "update" and "{id}" not in path
                                    else "")


class _Facade:
    def __init__(self, service: FhirService, sessions: sessionmaker[Session],
                 settings: FhirSettings, receiver: SubscriptionReceiver) -> None:
        self.service, self.sessions, self.settings = service, sessions, settings
        self.receiver = receiver

    # -- plumbing ------------------------------------------------------------
    async def _answer(self, work: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await work()
        except FhirError as exc:
            return outcome_response(exc)
        except Exception as exc:  # the edge: nothing escapes as a bare 500
            if is_storage_full(exc):  # logged once for the episode (adapter.storage_full)
                return outcome_response(not_stored_for_want_of_space())
            log.exception("FHIR request failed")
            return outcome_response(FhirError(500, Issue("exception", "Internal error; "
                                                         "nothing was stored")))

    async def _body(self, request: Request) -> bytes:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and content_type not in JSON_TYPES:
            raise FhirError(415, Issue(
                "not-supported", f"Content type {content_type!r} is not supported: send "
                "application/fhir+json (FHIR JSON); XML is not accepted"))
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise self._too_large(limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise self._too_large(limit)
        if not body:
            raise invalid("The request has no body", code="required")
        return bytes(body)

    @staticmethod
    def _too_large(limit: int) -> FhirError:
        return FhirError(413, Issue("too-costly", f"The body is larger than {limit} bytes"))

    def _in_transaction(self, fn: Callable[[Session], T], answer: Callable[[T], Response], *,
                        read_only: bool = False) -> Awaitable[Response]:
        """``fn`` in a transaction in a worker thread, then its ``answer`` rendered
        there too, after the commit: SQLite's one writer is not held while a Bundle's
        response is encoded."""
        unit = read_transaction if read_only else transaction

        def run() -> Response:
            with unit(self.sessions) as session:
                result = fn(session)
            return answer(result)
        return run_in_threadpool(run)

    @staticmethod
    def _link(request: Request) -> Callable[[StoredVersion], str]:
        """``[base]/Type/id/_history/N``: the base is looked up once per request
        (``url_for`` per entry of a Bundle cost ~10% of its time); ids and
        versions are FHIR ids and numbers, which need no quoting."""
        base = str(request.url_for("fhir-transaction")).rstrip("/")

        def link(stored: StoredVersion) -> str:
            return f"{base}/{stored.ref}/_history/{stored.version_id}"
        return link

    def _resource_response(self, request: Request, stored: StoredVersion, status: int,
                           *, location: bool) -> Response:
        headers = {"ETag": stored.etag,
                   "Last-Modified": stored.last_updated.strftime("%a, %d %b %Y %H:%M:%S GMT")}
        if location:
            headers["Location"] = self._link(request)(stored)
        if _prefers_minimal(request):
            return Response(status_code=status, headers=headers)
        return fhir_response(stored.resource, status, headers)

    def _written(self, request: Request, result: WriteResult) -> Response:
        return self._resource_response(request, result.stored, result.status, location=True)

    # -- endpoints -----------------------------------------------------------
    def system_endpoint(self, code: str) -> Callable[[Request], Awaitable[Response]]:
        if code == "capabilities":
            async def metadata(request: Request) -> Response:
                return fhir_response(capability_statement(self.service.clock()))
            return metadata
        if code == "$subscription-hook":
            async def hook(request: Request) -> Response:
                async def work() -> Response:
                    body = await self._body(request)
                    return fhir_response(await self.receiver.receive(body))
                return await self._answer(work)
            return hook

        async def bundle(request: Request) -> Response:
            async def work() -> Response:
                data = _json_object(await self._body(request))
                if data.get("resourceType") != "Bundle":
                    raise invalid("POST / takes a Bundle", "resourceType")
                kind, entries = bundles.parse_bundle(data)
                run = bundles.run_transaction if kind == "transaction" else bundles.run_batch
                minimal = _prefers_minimal(request)
                return await self._in_transaction(
                    lambda s: run(self.service, s, entries, self._link(request), None, minimal=minimal),
                    fhir_response)
            return await self._answer(work)
        return bundle

    def type_endpoint(self, kind: str, code: str, path: str) -> Callable[..., Awaitable[Response]]:
        service = self.service
        if code == "create":
            async def create(request: Request) -> Response:
                async def work() -> Response:
                    resource = parse_resource(await self._body(request), expected_type=kind)
                    condition = request.headers.get("if-none-exist")
                    return await self._in_transaction(
                        lambda s: service.create(s, resource, if_none_exist=condition),
                        lambda result: self._written(request, result))
                return await self._answer(work)
            return create
        if code == "update" and "{id}" not in path:
            async def conditional_update(request: Request) -> Response:
                async def work() -> Response:
                    query = request.url.query
                    if not query:
                        raise invalid(f"PUT /{kind} needs a search such as ?identifier=s|v")
                    resource = parse_resource(await self._body(request), expected_type=kind)
                    return await self._in_transaction(
                        lambda s: service.conditional_update(s, resource, query),
                        lambda result: self._written(request, result))
                return await self._answer(work)
            return conditional_update
        if code == "update":
            async def update(request: Request, id: str) -> Response:
                async def work() -> Response:
                    resource = parse_resource(await self._body(request), expected_type=kind)
                    if resource.get("id") != id:
                        raise invalid(f"The body's id {resource.get('id')!r} must equal the "
                                      f"URL's id {id!r}", f"{kind}.id")
                    if_match = request.headers.get("if-match")
                    return await self._in_transaction(
                        lambda s: service.write(s, resource, if_match=if_match),
                        lambda result: self._written(request, result))
                return await self._answer(work)
            return update
        if code == "read":
            async def read(request: Request, id: str) -> Response:
                return await self._answer(lambda: self._in_transaction(
                    lambda s: service.read(s, kind, id),
                    lambda stored: self._resource_response(request, stored, 200, location=False),
                    read_only=True))
            return read
        if code == "vread":
            async def vread(request: Request, id: str, vid: str) -> Response:
                return await self._answer(lambda: self._in_transaction(
                    lambda s: service.vread(s, kind, id, vid),
                    lambda stored: self._resource_response(request, stored, 200, location=False),
                    read_only=True))
            return vread
        if code == "delete":
            async def delete(request: Request, id: str) -> Response:
                if_match = request.headers.get("if-match")
                return await self._answer(lambda: self._in_transaction(
                    lambda s: service.delete(s, kind, id, if_match=if_match),
                    lambda result: _deleted(request, result)))
            return delete
        raise ValueError(f"no endpoint for interaction {code!r}")

    async def unsupported(self, request: Request, rest: str) -> Response:
        first = rest.split("/")[0]
        if first and first not in SUPPORTED_TYPES and first[:1].isupper():
            message = f"Resource type {first!r} is not supported here"
        else:
            message = f"{request.method} /{rest} is not supported; see GET /metadata"
        status = 404 if request.method == "GET" or first not in SUPPORTED_TYPES else 405
        return outcome_response(FhirError(status, Issue("not-supported", message)))


def _deleted(request: Request, result: DeleteResult) -> Response:
    """FHIR R4 §3.1.0.7: 200 with an OperationOutcome saying what happened, or 204
    with ``Prefer: return=minimal``; the same for a resource deleted already or never
    known. The ETag names the deletion version, for a later update's If-Match."""
    headers = {"ETag": result.stored.etag} if result.stored and result.stored.deleted else {}
    if _prefers_minimal(request):
        return Response(status_code=204, headers=headers)
    return fhir_response(information(deletion_text(result)), 200, headers)


def _prefers_minimal(request: Request) -> bool:
    """``Prefer: return=minimal`` (FHIR R4 §3.1.0.1.9): answer writes without the resource."""
    return "return=minimal" in request.headers.get("prefer", "")


def _json_object(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"The body is not valid JSON: {exc}", code="structure") from None
    if not isinstance(data, dict):
        raise invalid("The body must be a JSON object", code="structure")
    return data


__all__ = ["build_router"]
