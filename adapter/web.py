"""The HTTP surface (INTERFACES.md): FHIR facade, HL7 over HTTP, operator and
officer APIs, provider webhooks, health and metrics. Routes stay short: parse,
call the core, map errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from adapter.api_types import Limit, MessageSource, MessageStatus, NotificationStatusQuery, Offset, RowIdPath
from adapter.auth import Principal, Role, authenticate
from adapter.auth_limits import AuthFailureLimiter
from adapter.bootstrap import Container
from adapter.db import READ_ONLY, read_transaction, transaction
from adapter.fhir_wiring import fhir_router
from adapter.message_trace import MessageFilter, find_messages, trace
from adapter.metrics import REGISTRY, DatabaseSpaceCollector, StoreCollector, ValidationHelpersCollector
from adapter.models import Notification
from adapter.storage_full import NOT_STORED, RETRY_AFTER_S, is_storage_full, space_watch
from fhir.subscriptions import silent_subscriptions
from hl7.mllp import PEER, Peer

HL7_MEDIA_TYPE = "application/hl7-v2"


def require(container: Container, *roles: Role) -> Callable[..., Principal]:
    """A dependency admitting a bearer token of one of ``roles`` (admin always)."""

    def dependency(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        limiter: AuthFailureLimiter = request.app.state.auth_limiter
        client = request.client.host if request.client else ""
        if wait := limiter.blocked_for(client):
            raise HTTPException(429, "too many failed authentications", headers={"Retry-After": str(int(wait) + 1)})
        with read_transaction(container.sessions) as session:
            principal = authenticate(session, token.strip())
        if principal is None:
            with transaction(container.sessions) as session:
                container.gate.auth_failed(session, request.url.path, now=container.clock.now())
            limiter.failed(client)
            raise HTTPException(401, "the token is not valid", headers={"WWW-Authenticate": "Bearer"})
        if not principal.may(*roles):
            raise HTTPException(403, f"this needs the role {' or '.join(roles)}")
        request.state.principal = principal
        return principal

    return dependency


def session_dep(request: Request) -> Iterator[Session]:
    """One unit of work per request."""
    with transaction(request.app.state.container.sessions) as session:
        yield session


def read_session_dep(request: Request) -> Iterator[Session]:
    """A read-only unit of work: lists and health checks, polled by dashboards
    and load balancers, never queue behind the writes of ACKs and mapping."""
    with read_transaction(request.app.state.container.sessions) as session:
        yield session


Db = Annotated[Session, Depends(session_dep)]
ReadDb = Annotated[Session, Depends(read_session_dep)]


def notification_view(row: Notification) -> dict[str, Any]:
    return {
        "id": row.id,
        "patient": row.patient_id,
        "kind": row.kind,
        "rule": row.rule_id,
        "subject": row.subject_ref,
        "status": row.status,
        "scheduled_for": row.scheduled_for.isoformat(),
        "channel": row.channel,
        "reason": row.reason,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "sent_at": row.sent_at.isoformat() if row.sent_at else None,
        "status_at": row.status_at.isoformat(),
        "segments": row.segments,
    }


def api_router(container: Container) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["operators and officers"])
    officer = Depends(require(container, "officer"))

    @router.get("/notifications", dependencies=[officer])
    def list_notifications(
        db: ReadDb,
        patient: str | None = None,
        status: NotificationStatusQuery = None,
        kind: str | None = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Every notification with its status, time, channel and, when suppressed, why."""
        query = select(Notification)
        if patient:
            query = query.where(Notification.patient_id == patient)
        if status:
            query = query.where(Notification.status == status)
        if kind:
            query = query.where(Notification.kind == kind)
        total = db.scalar(select(func.count()).select_from(query.subquery()))
        rows = db.scalars(query.order_by(Notification.scheduled_for, Notification.id).limit(limit).offset(offset))
        return {"total": total, "items": [notification_view(row) for row in rows]}

    @router.get("/notifications/{notification_id}/why", dependencies=[officer])
    def why(notification_id: RowIdPath, db: ReadDb) -> dict[str, Any]:
        """The decision record: event, rule, consent, lawful basis, template, channel."""
        row = db.get(Notification, notification_id)
        if row is None:
            raise HTTPException(404, "no such notification")
        return {**notification_view(row), "decision": row.decision}

    @router.get("/messages", dependencies=[officer])
    def list_messages(
        db: ReadDb,
        source: MessageSource = None,
        status: MessageStatus = None,
        control_id: str | None = None,
        sender: Annotated[str | None, Query(description="MSH-4 (OSP_SLUCA), or the sender as listed (CUP^OSP_SLUCA)")] = None,
        message_type: Annotated[str | None, Query(alias="type", max_length=40,
                                                  description="a type (SIU) or type and trigger (SIU^S12)")] = None,
        since: Annotated[datetime | None, Query(description="received at or after (ISO 8601; UTC without an offset)")] = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """The inbound message store: every message received and what became of it."""
        matching = MessageFilter(source=source, status=status, control_id=control_id, sender=sender,
                                 message_type=message_type,
                                 since=since if since is None or since.tzinfo else since.replace(tzinfo=UTC))
        total, items = find_messages(db, matching, limit=limit, offset=offset)
        return {"total": total, "items": items}

    @router.get("/messages/{message_id}", dependencies=[officer])
    def message_trace(message_id: RowIdPath, db: ReadDb) -> dict[str, Any]:
        """One inbound message, as listed, and what became of it: the notifications it
        planned (``caused``) and cancelled while they waited (``withdrew``: a reschedule's
        moved reminders, a cancellation's), the application ACK owed for it (enhanced
        mode: status, attempts, last error) and, in the error store, why and whether it
        can still be replayed. No message content, no personal data."""
        found = trace(db, message_id)
        if found is None:
            raise HTTPException(404, f"no inbound message with id {message_id}")
        return found.as_json()

    return router


REFUSED_RECENTLY = timedelta(minutes=15)


def health_router(container: Container) -> APIRouter:
    router = APIRouter(prefix="/health", tags=["health"])

    @router.get("/live")
    def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready")
    def ready() -> JSONResponse:
        checks: dict[str, Any] = {}
        try:
            with container.engine.connect() as conn:  # a read: on SQLite no write lock to queue for
                conn.execution_options(**{READ_ONLY: True}).execute(text("SELECT 1"))
            # Reads work on a full disk: whether writes were refused for want of space since
            # (and, on SQLite, whether there is room again) says if anything can be stored.
            checks["database"] = space_watch(container.engine).problem() or "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["database"] = f"unavailable: {type(exc).__name__}"
        if not checks["database"].startswith("unavailable"):
            with read_transaction(container.sessions) as session:
                silent = silent_subscriptions(session, container.clock.now())
            # Servers accept subscriptions that never fire: silence is an alert.
            checks["fhir_subscriptions"] = "ok" if not silent else f"{len(silent)} silent"
        refused = sorted(channel for channel, at in container.dispatcher.accounts_refused.items()
                         if container.clock.now() - at < REFUSED_RECENTLY)
        # A provider refusing our credentials stops a whole channel (seen by this process's sender).
        checks["channels"] = "ok" if not refused else "account refused by the provider: " + ", ".join(refused)
        if container.settings.broker_url:  # production mode: workers need the broker
            from adapter.celery_app import broker_status

            checks["broker"] = broker_status(container.settings.broker_url)
        healthy = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ok" if healthy else "degraded", "checks": checks}, 200 if healthy else 503)

    return router


def metrics_router(container: Container) -> APIRouter:
    router = APIRouter(tags=["health"])
    store = CollectorRegistry()
    store.register(StoreCollector(container.sessions, container.clock.now))
    store.register(ValidationHelpersCollector(container.fhir.service.validator))
    store.register(DatabaseSpaceCollector(space_watch(container.engine)))

    @router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require(container, "officer"))])
    def metrics() -> Response:
        """Prometheus metrics (no personal data in any label)."""
        return Response(generate_latest(REGISTRY) + generate_latest(store), media_type=CONTENT_TYPE_LATEST)

    return router


def hl7_router(container: Container) -> APIRouter:
    router = APIRouter(tags=["hl7"])

    @router.post(
        "/hl7/v2",
        dependencies=[Depends(require(container, "ehr"))],
        response_class=Response,
        responses={200: {"description": "The ACK message (ER7)", "content": {HL7_MEDIA_TYPE: {"schema": {"type": "string"}}}}},
        openapi_extra={"requestBody": {"content": {HL7_MEDIA_TYPE: {"schema": {"type": "string"}}}, "required": True}},
    )
    async def post_hl7(request: Request) -> Response:
        """An ER7 message in the body; the answer is its ACK (AA/AE/AR, MSA-2 = MSH-10)."""
        body = await request.body()
        if len(body) > container.settings.mllp_max_message_bytes:
            raise HTTPException(413, "message larger than the configured maximum")
        peer = Peer(address=request.client.host if request.client else "", token=request.state.principal.name)
        reset = PEER.set(peer)  # whom the facility's senders are matched against
        try:
            ack = await container.intake.handle(body)
        finally:
            PEER.reset(reset)
        return Response(ack, media_type=HL7_MEDIA_TYPE)

    return router


ERROR_STATUSES = {
    400: "Bad request: the body or a parameter is malformed",
    401: "A bearer token is required, or the token is not valid",
    403: "The token's role may not do this",
    404: "Not found",
    409: "Conflicts with what is stored",
    412: "Precondition failed (If-Match)",
    413: "Body larger than the configured maximum",
    415: "Unsupported media type",
    422: "Understood but not acceptable",
    429: "Too many failed authentications",
    503: "Not stored: the database is full; send it again after Retry-After",
}


def document_errors(app: FastAPI) -> None:
    """Every operation documents the errors it can answer (problem JSON, or an
    OperationOutcome on the FHIR facade), so clients and schemathesis know them."""
    generate = app.openapi
    content = {"application/json": {}, "application/fhir+json": {}}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for status, description in ERROR_STATUSES.items():
                    responses.setdefault(str(status), {"description": description, "content": content})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(container: Container) -> FastAPI:
    app = FastAPI(
        title="Adapter",
        version="0.1.0",
        description="Bridge between hospital systems (HL7 v2, FHIR R4) and patients' phones.",
    )
    app.state.container = container
    app.state.auth_limiter = AuthFailureLimiter()
    app.include_router(health_router(container))
    app.include_router(metrics_router(container))
    app.include_router(hl7_router(container))
    app.include_router(api_router(container))
    from adapter.compliance_api import compliance_router  # imports this module

    app.include_router(compliance_router(container))
    from adapter.console import install_console

    install_console(app, container)
    from adapter.contact_api import contact_api_router
    from adapter.reply_api import replies_api_router
    from adapter.webhooks import webhooks_router

    app.include_router(replies_api_router(container))
    app.include_router(contact_api_router(container))
    app.include_router(webhooks_router(container))
    async def in_flight() -> AsyncIterator[None]:
        with container.fhir.in_flight:  # background work gives way meanwhile
            yield

    app.include_router(
        fhir_router(container), prefix="/fhir/R4", tags=["fhir"],
        dependencies=[Depends(require(container, "ehr")), Depends(in_flight)],
    )
    app.add_exception_handler(Exception, not_stored_for_want_of_space)
    document_errors(app)
    return app


async def not_stored_for_want_of_space(request: Request, exc: Exception) -> Response:
    """Any route but the FHIR facade's (an OperationOutcome there) whose write the
    database refused for want of space: 503 with Retry-After, so a provider or client
    sends it again, instead of a 500 and a traceback (the episode is logged once)."""
    if not is_storage_full(exc):
        return PlainTextResponse("Internal Server Error", 500)  # Starlette's own; it logs the exception after
    return JSONResponse({"detail": f"not stored: {NOT_STORED}; send it again later"}, 503,
                        headers={"Retry-After": str(RETRY_AFTER_S)})
