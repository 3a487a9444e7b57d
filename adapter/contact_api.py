"""Officers' actions on how a patient is reached: a Telegram deep link to hand to the
patient, and a contact check sent on demand."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from adapter.bootstrap import Container
from adapter.compliance_api import actor_of
from adapter.contact_check import request_contact_check
from adapter.errors import Conflict, NotFound
from adapter.telegram_link import issue_link
from adapter.web import Db, notification_view, require


def contact_api_router(container: Container) -> APIRouter:
    router = APIRouter(prefix="/api/patients", tags=["operators and officers"])
    officer = Depends(require(container, "officer"))

    @router.post("/{patient_id}/telegram-link", dependencies=[officer], status_code=201)
    def telegram_link(patient_id: str, request: Request, db: Db) -> dict[str, Any]:
        """A one-time, short-lived deep link ``https://t.me/<bot>?start=<token>`` for the
        clinic to give the patient; pressing Start links their chat. Only the token's
        digest is stored, and the token is never audited."""
        try:
            link = issue_link(db, container.gate, patient_id, bot_name=container.settings.telegram_bot_name,
                              actor=actor_of(request), now=container.clock.now())
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except Conflict as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"link": link.url, "expires_at": link.expires_at.isoformat()}

    @router.post("/{patient_id}/contact-check", dependencies=[officer], status_code=201)
    def contact_check(patient_id: str, request: Request, db: Db) -> dict[str, Any]:
        """Ask the patient, now, how they want to be reached; their answer becomes the
        channel tried first. Returns the notification (``suppressed`` with the reason
        when consent does not allow it)."""
        try:
            row = request_contact_check(db, container.gate, patient_id, actor=actor_of(request),
                                        now=container.clock.now())
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        return notification_view(row)

    return router
