"""The console for compliance officers and operators at ``/ui/`` (server-rendered,
Italian and English via ``?lang=``): a patient's notifications and why each was sent or
suppressed, consent history, the audit trail with its verification status, exports,
and erasure (admin); the inbound messages and their traces (:mod:`adapter.console_messages`).

Login takes an API token and keeps it in an HttpOnly, SameSite=Strict cookie; every
page checks it as the API does (roles, audited and rate-limited failures), and every
form that changes something carries the session's form token (:func:`console_form`).
Pages call :mod:`adapter.subject_rights` and ``compliance/`` exactly as the API routes do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from adapter import subject_rights as rights
from adapter.api_types import Offset, RowIdPath
from adapter.auth import Principal, Role, authenticate
from adapter.bootstrap import Container
from adapter.compliance_api import record_verification, verify_view
from adapter.console_text import LANGUAGES, text_for
from adapter.db import transaction
from fhir.subscriptions import silent_subscriptions
from adapter.models import Notification, Patient
from adapter.web import notification_view
from compliance.audit_export import as_json

COOKIE = "adapter_console_token"
LANG_COOKIE = "adapter_console_lang"
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "console_templates"))
PAGE_SIZE = 50


class LoginRequired(Exception):
    """No (valid) token: the page answers with a redirect to the login form."""


def language(request: Request) -> str:
    """``?lang=`` (remembered in a cookie), else the clinic's default language."""
    for wanted in (request.query_params.get("lang"), request.cookies.get(LANG_COOKIE)):
        if wanted in LANGUAGES:
            return wanted
    default = request.app.state.container.settings.default_language
    return default if default in LANGUAGES else "en"


def console_user(container: Container, *roles: Role):
    """The console's ``require``: a token from the cookie (or a bearer header)."""

    def dependency(request: Request) -> Principal:
        token = request.cookies.get(COOKIE, "")
        request.state.by_cookie = bool(token)
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        token = token or (bearer.strip() if scheme.lower() == "bearer" else "")
        if not token:
            raise LoginRequired()
        principal = check_token(request, container, token)
        if principal is None:
            raise LoginRequired()
        if not principal.may(*roles):
            raise HTTPException(403, f"this needs the role {' or '.join(roles)}")
        request.state.principal = principal
        request.state.form_token = form_token(token)
        return principal

    return dependency


def console_form(container: Container, *roles: Role):
    """:func:`console_user` for a form's POST: signed in with the cookie, the form must
    carry the session's form token (``form_token``), which only the console's own pages
    hold, so another site cannot make the browser submit it (CSRF; SameSite=Strict
    on the cookie is the first guard, this the second). A bearer header is never sent
    by a browser on its own, so a script using one needs no form token."""
    user = console_user(container, *roles)

    def dependency(request: Request, form_token_: Annotated[str, Form(alias="form_token", max_length=100)] = "", *,
                   principal: Principal = Depends(user)) -> Principal:
        if request.state.by_cookie and not hmac.compare_digest(form_token_, request.state.form_token):
            raise HTTPException(403, "this form is not from your console session: reload the page and try again")
        return principal

    return dependency


def form_token(token: str) -> str:
    """The form token of the session signed in with ``token``: derived from it (so
    nothing is stored) and useless without it (the cookie is HttpOnly)."""
    return hmac.new(token.encode(), b"adapter console form", hashlib.sha256).hexdigest()


def check_token(request: Request, container: Container, token: str) -> Principal | None:
    limiter = request.app.state.auth_limiter
    client = request.client.host if request.client else ""
    if wait := limiter.blocked_for(client):
        raise HTTPException(429, "too many failed authentications", headers={"Retry-After": str(int(wait) + 1)})
    with transaction(container.sessions) as session:
        principal = authenticate(session, token)
        if principal is None:
            container.gate.auth_failed(session, request.url.path, now=container.clock.now())
    if principal is None:
        limiter.failed(client)
    return principal


def actor_of(principal: Principal) -> str:
    return f"token:{principal.token_id}:{principal.role}"


def page(request: Request, name: str, principal: Principal | None, status_code: int = 200,
         **context: Any) -> HTMLResponse:
    """Template ``name`` in the reader's language; its forms carry the session's form token."""
    lang = language(request)
    response = TEMPLATES.TemplateResponse(
        request, name, {"t": text_for(lang), "lang": lang, "languages": LANGUAGES, "user": principal,
                        "is_admin": principal is not None and principal.role == "admin",
                        "form_token": getattr(request.state, "form_token", ""), **context},
        status_code=status_code,
    )
    if request.query_params.get("lang") in LANGUAGES:
        response.set_cookie(LANG_COOKIE, lang, httponly=True, samesite="strict", max_age=365 * 86400)
    return response


def console_router(container: Container) -> APIRouter:
    router = APIRouter(prefix="/ui", tags=["console"], include_in_schema=False)
    officer = console_user(container, "officer")
    officer_form = console_form(container, "officer")
    admin_form = console_form(container, "admin")

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return page(request, "login.html", None)

    @router.post("/login")
    def login(request: Request, token: Annotated[str, Form(max_length=200)]) -> Response:
        principal = check_token(request, container, token.strip())
        if principal is None or not principal.may("officer"):
            return page(request, "login.html", None, status_code=401 if principal is None else 403,
                        error="login_failed" if principal is None else "login_role")
        response = RedirectResponse("/ui/", status_code=303)
        response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", path="/ui",
                            secure=request.url.scheme == "https", max_age=8 * 3600)
        return response

    @router.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    @router.get("/", response_class=HTMLResponse)
    def home(request: Request, notice: str = "", *, user: Principal = Depends(officer)) -> HTMLResponse:
        with transaction(container.sessions) as db:
            silent = silent_subscriptions(db, container.clock.now())
        return page(request, "home.html", user, notice=notice, silent=silent)

    @router.get("/patients", response_class=HTMLResponse)
    def find(request: Request, *, user: Principal = Depends(officer), q: Annotated[str, Query(max_length=200)] = "",
             by: str = "id") -> Response:
        """Find a patient by internal id, or by phone or identifier through the blind index."""
        q = q.strip()
        with transaction(container.sessions) as db:
            try:
                found = rights.patient_id_by(db, container, q, by=by if by in ("phone", "identifier") else "id")
            except rights.UnknownPatient:
                found = None
        if found:
            return RedirectResponse(f"/ui/patients/{quote(found)}", status_code=303)
        return page(request, "home.html", user, status_code=404, error="not_found", q=q, by=by)

    @router.get("/patients/{patient_id}", response_class=HTMLResponse)
    def patient(request: Request, patient_id: str, *, user: Principal = Depends(officer)) -> HTMLResponse:
        with transaction(container.sessions) as db:
            if db.get(Patient, patient_id) is None:
                return page(request, "home.html", user, status_code=404, error="not_found", q=patient_id, by="id")
            items = [notification_view(n) for n in db.scalars(
                select(Notification).where(Notification.patient_id == patient_id)
                .order_by(Notification.scheduled_for, Notification.id))]
            consents = [rights.consent_view(c) for c in rights.consent_store.records_for(db, patient_id)]
            container.audit.append(db, action="accessed", actor=actor_of(user),
                                   subject_pseudonym=f"patient:{patient_id}", reason="console: patient page",
                                   details={}, at=container.clock.now())
        return page(request, "patient.html", user, patient_id=patient_id, notifications=items, consents=consents,
                    purposes=sorted(container.gate.policy.purposes), notice=request.query_params.get("notice", ""))

    @router.get("/notifications/{notification_id}", response_class=HTMLResponse)
    def why(request: Request, notification_id: RowIdPath, *, user: Principal = Depends(officer)) -> HTMLResponse:
        with transaction(container.sessions) as db:
            row = db.get(Notification, notification_id)
            if row is None:
                raise HTTPException(404, "no such notification")
            view, decision = notification_view(row), dict(row.decision)
        return page(request, "why.html", user, n=view, patient_id=view["patient"],
                    decision=json.dumps(decision, indent=2, ensure_ascii=False, sort_keys=True),
                    consent_record=_consent_record(decision))

    @router.post("/patients/{patient_id}/consents")
    def give_consent(patient_id: str, purpose: Annotated[str, Form()], channel: Annotated[str, Form()],
                     decision: Annotated[str, Form()], *, user: Principal = Depends(officer_form)) -> Response:
        try:
            with transaction(container.sessions) as db:
                rights.record_consent(db, container, patient_id, purpose=purpose, channel=channel, decision=decision,
                                      actor=actor_of(user), now=container.clock.now(), source="operator")
        except rights.UnknownPatient as exc:
            raise HTTPException(404, str(exc)) from exc
        except rights.InvalidConsent as exc:
            raise HTTPException(422, str(exc)) from exc
        return RedirectResponse(f"/ui/patients/{quote(patient_id)}?notice=consent_recorded", status_code=303)

    @router.get("/patients/{patient_id}/export")
    def export(patient_id: str, format: str = "json", *, user: Principal = Depends(officer)) -> Response:  # noqa: A002
        fmt = "fhir" if format == "fhir" else "json"
        try:
            with transaction(container.sessions) as db:
                data = rights.export_patient(db, container, patient_id, actor=actor_of(user),
                                             now=container.clock.now(), fmt=fmt)
        except rights.UnknownPatient as exc:
            raise HTTPException(404, str(exc)) from exc
        body = rights.export_bundle(data) if fmt == "fhir" else data
        return Response(json.dumps(body, indent=2, ensure_ascii=False),
                        media_type="application/fhir+json" if fmt == "fhir" else "application/json",
                        headers={"Content-Disposition": f'attachment; filename="patient-{patient_id}-{fmt}.json"'})

    @router.post("/patients/{patient_id}/erase")
    def erase(patient_id: str, confirm: Annotated[str, Form()] = "", *,
              user: Principal = Depends(admin_form)) -> Response:
        if confirm.strip() != patient_id:
            raise HTTPException(422, "type the patient id to confirm the erasure")
        try:
            with transaction(container.sessions) as db:
                rights.erase_patient(db, container, patient_id, actor=actor_of(user), now=container.clock.now())
        except rights.UnknownPatient as exc:
            raise HTTPException(404, str(exc)) from exc
        return RedirectResponse("/ui/?notice=erased", status_code=303)

    @router.get("/audit", response_class=HTMLResponse)
    def audit(request: Request, patient: str = "", offset: Offset = 0, *,
              user: Principal = Depends(officer)) -> HTMLResponse:
        subject = f"patient:{patient}" if patient else None
        with transaction(container.sessions) as db:
            report = container.audit.verify(db)
            record_verification(container.audit, db, report, actor=actor_of(user), now=container.clock.now())
            entries = [as_json(r) for r in container.audit.entries(db, subject=subject, offset=offset, limit=PAGE_SIZE)]
            container.audit.append(db, action="audit_read", actor=actor_of(user), subject_pseudonym=subject or "",
                                   reason="console: audit trail", details={"offset": offset, "count": len(entries)},
                                   at=container.clock.now())
            heads = container.audit.tree_heads(db)
        return page(request, "audit.html", user, report=verify_view(report), entries=entries, patient=patient,
                    offset=offset, page_size=PAGE_SIZE, last_head=heads[-1] if heads else None)

    return router


def install_console(app, container: Container) -> None:
    """Mount the console and turn a missing login into a redirect to the login form."""

    async def to_login(request: Request, exc: LoginRequired) -> Response:
        lang = request.query_params.get("lang")
        return RedirectResponse(f"/ui/login?lang={lang}" if lang in LANGUAGES else "/ui/login", status_code=303)

    from adapter.console_messages import messages_router  # uses this module's pages

    app.add_exception_handler(LoginRequired, to_login)
    app.include_router(console_router(container))
    app.include_router(messages_router(container))


def _consent_record(decision: dict[str, Any]) -> int | None:
    for step in ("at_send", "withdrawn", "at_schedule"):
        value = decision.get(step)
        if isinstance(value, dict):
            consent = value.get("consent", value)
            if isinstance(consent, dict) and consent.get("consent_record"):
                return consent["consent_record"]
    return None
