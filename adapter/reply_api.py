"""Officers' and operators' view of the way back: replies waiting for an operator and
wrong-number incidents with their GDPR art. 33 deadline. No personal data is returned:
an operator opens the reply text through the patient's record."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy import func, select

from adapter.api_types import Limit, Offset
from adapter.bootstrap import Container
from adapter.reply_models import Incident, PatientReply
from adapter.web import Db, require


def reply_view(row: PatientReply) -> dict[str, Any]:
    return {
        "id": row.id,
        "patient": row.patient_id,
        "channel": row.channel,
        "provider": row.provider,
        "intent": row.intent,
        "action": row.action,
        "status": row.status,
        "subject": row.subject_ref,
        "notification": row.notification_id,
        "received_at": row.received_at.isoformat(),
    }


def incident_view(row: Incident) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "patient": row.patient_id,
        "notification": row.notification_id,
        "reply": row.reply_id,
        "channel": row.channel,
        "contacts_suspended": row.contacts_suspended,
        "status": row.status,
        "opened_at": row.opened_at.isoformat(),
        "deadline_at": row.deadline_at.isoformat(),
    }


def replies_api_router(container: Container) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["operators and officers"])
    officer = Depends(require(container, "officer"))

    @router.get("/replies", dependencies=[officer])
    def list_replies(
        db: Db,
        status: str | None = None,
        patient: str | None = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Patients' replies; ``status=open`` is the operator queue."""
        query = select(PatientReply)
        if status:
            query = query.where(PatientReply.status == status)
        if patient:
            query = query.where(PatientReply.patient_id == patient)
        total = db.scalar(select(func.count()).select_from(query.subquery()))
        rows = db.scalars(query.order_by(PatientReply.id.desc()).limit(limit).offset(offset))
        return {"total": total, "items": [reply_view(row) for row in rows]}

    @router.get("/incidents", dependencies=[officer])
    def list_incidents(
        db: Db,
        status: str | None = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Possible personal-data breaches, each with its 72-hour notification deadline."""
        query = select(Incident)
        if status:
            query = query.where(Incident.status == status)
        total = db.scalar(select(func.count()).select_from(query.subquery()))
        rows = db.scalars(query.order_by(Incident.deadline_at, Incident.id).limit(limit).offset(offset))
        return {"total": total, "items": [incident_view(row) for row in rows]}

    return router
