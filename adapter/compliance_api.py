"""The compliance officers' HTTP surface (INTERFACES.md): the audit log and its proofs,
consent history, data-subject rights and the record of processing. Routes stay short:
parse, call :mod:`adapter.subject_rights` or ``compliance/``, map errors."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, BeforeValidator, Field
from sqlalchemy.orm import Session

from adapter import subject_rights as rights
from adapter.api_types import PATIENT_ID_PATTERN, Limit, Offset, PatientIdPath, PatientIdQuery
from adapter.bootstrap import Container
from adapter.db import LARGEST_INTEGER, transaction
from adapter.web import require
from compliance.audit import AuditLog, ConsistencyProof, InclusionProof, TreeHead
from compliance.audit_export import as_json, not_a_number
from compliance.audit_verify import VerifyReport
from compliance.errors import AuditError
from compliance.records import record_of_processing

log = logging.getLogger(__name__)


class ConsentIn(BaseModel):
    patient: str = Field(max_length=36, pattern=PATIENT_ID_PATTERN)
    purpose: str = Field(max_length=40, description='a purpose from config/purposes.yaml, or "*"')
    channel: str = Field("*", max_length=20, description='sms, whatsapp, telegram, email, or "*"')
    decision: Literal["permit", "deny"]
    start: datetime | None = None
    end: datetime | None = None


class ObjectionIn(BaseModel):
    purposes: list[str] = Field(min_length=1, description="purposes objected to (art. 21)")
    channel: str = Field("*", max_length=20)


def actor_of(request: Request) -> str:
    principal = request.state.principal
    return f"token:{principal.token_id}:{principal.role}"


def verify_view(report: VerifyReport) -> dict[str, Any]:
    return {"ok": report.ok, "entries": report.entries, "heads_checked": report.heads_checked,
            "signed_size": report.signed_size, "unsigned_tail": report.unsigned_tail,
            "first_bad_seq": report.first_bad_seq, "problems": [asdict(p) for p in report.problems]}


def record_verification(audit: AuditLog, session: Session, report: VerifyReport, *, actor: str, now: datetime) -> None:
    """Audit a verification; a log too damaged to append to still gets its report."""
    try:
        with session.begin_nested():
            audit.append(session, action="audit_verified", actor=actor, subject_pseudonym="",
                         reason="intact" if report.ok else f"{len(report.problems)} problems",
                         details={"entries": report.entries}, at=now,
                         outcome="success" if report.ok else "serious_failure")
    except AuditError:
        log.error("audit verification not recorded: the log cannot be appended to")


def head_view(head: TreeHead) -> dict[str, Any]:
    return {"tree_size": head.tree_size, "root_hash": head.root_hash.hex(), "timestamp_ms": head.timestamp_ms,
            "key_id": head.key_id, "signature": head.signature.hex()}


def proof_view(proof: InclusionProof | ConsistencyProof) -> dict[str, Any]:
    out = {k: (v.hex() if isinstance(v, bytes) else [h.hex() for h in v] if isinstance(v, list) else v)
           for k, v in asdict(proof).items()}
    return {**out, "verified": proof.verify()}


def compliance_router(container: Container) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["compliance officers"])
    officer = Depends(require(container, "officer"))
    admin = Depends(require(container, "admin"))
    audit = container.audit

    def now() -> datetime:
        return container.clock.now()

    @router.get("/audit", dependencies=[officer])
    def audit_entries(
        request: Request,
        patient: PatientIdQuery = None,
        since: Annotated[datetime | None, BeforeValidator(not_a_number),
                         Query(description="entries at or after this date or time (UTC unless an offset is given)")] = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Audit entries oldest first (pseudonyms only); reading them is itself audited."""
        subject = f"patient:{patient}" if patient else None
        with transaction(container.sessions) as db:
            items = [as_json(r) for r in audit.entries(db, since=since, subject=subject, offset=offset, limit=limit)]
            total = audit.count(db, since=since, subject=subject)
            audit.append(db, action="audit_read", actor=actor_of(request), subject_pseudonym=subject or "",
                         reason="audit entries read", details={"offset": offset, "count": len(items)}, at=now())
        return {"total": total, "items": items}

    @router.get("/audit/verify", dependencies=[officer])
    def audit_verify(request: Request) -> dict[str, Any]:
        """Check every entry, stored node and signed head; say what changed and where."""
        with transaction(container.sessions) as db:
            report = audit.verify(db)
            record_verification(audit, db, report, actor=actor_of(request), now=now())
        return verify_view(report)

    @router.get("/audit/proof/inclusion", dependencies=[officer])
    def inclusion(seq: Annotated[int, Query(ge=0, le=LARGEST_INTEGER)], tree_size: Annotated[int, Query(ge=1, le=LARGEST_INTEGER)]) -> dict[str, Any]:
        """RFC 6962 audit path for entry ``seq`` in the tree of ``tree_size`` entries."""
        if seq >= tree_size:
            raise HTTPException(400, "seq must be below tree_size")
        try:
            return proof_view(audit.inclusion_proof(seq, tree_size))
        except AuditError as exc:
            raise HTTPException(404, str(exc)) from exc

    @router.get("/audit/proof/consistency", dependencies=[officer])
    def consistency(old: Annotated[int, Query(ge=0, le=LARGEST_INTEGER)], new: Annotated[int, Query(ge=1, le=LARGEST_INTEGER)]) -> dict[str, Any]:
        """RFC 6962 consistency proof between the trees of ``old`` and ``new`` entries."""
        if old > new:
            raise HTTPException(400, "old must not exceed new")
        try:
            return proof_view(audit.consistency_proof(old, new))
        except AuditError as exc:
            raise HTTPException(404, str(exc)) from exc

    @router.get("/audit/tree-heads", dependencies=[officer])
    def tree_heads() -> dict[str, Any]:
        """Signed tree heads (Ed25519) and the public key that verifies them."""
        with transaction(container.sessions) as db:
            heads = audit.tree_heads(db)
        return {"public_key": audit.signer.public_key_pem(), "key_id": audit.signer.key_id,
                "heads": [head_view(h) for h in heads]}

    @router.get("/consents", dependencies=[officer])
    def consents(patient: Annotated[str, Query(pattern=PATIENT_ID_PATTERN)]) -> dict[str, Any]:
        """A patient's whole consent history, oldest first (never overwritten); 404 for a
        patient not held (never known, or erased), whose history is not "none"."""
        try:
            with transaction(container.sessions) as db:
                rights.patient_or_raise(db, patient)
                items = [rights.consent_view(r) for r in rights.consent_store.records_for(db, patient)]
        except rights.UnknownPatient as exc:
            raise HTTPException(404, str(exc)) from exc
        return {"patient": patient, "items": items}

    @router.post("/consents", dependencies=[officer], status_code=201)
    def post_consent(request: Request, body: ConsentIn) -> dict[str, Any]:
        """Record a consent statement given at the desk or by phone; a deny cancels what
        it forbids among pending notifications."""
        try:
            with transaction(container.sessions) as db:
                row = rights.record_consent(db, container, body.patient, purpose=body.purpose, channel=body.channel,
                                            decision=body.decision, actor=actor_of(request), now=now(),
                                            start=body.start, end=body.end)
                view = rights.consent_view(row)
        except rights.UnknownPatient as exc:
            raise HTTPException(404, str(exc)) from exc
        except rights.InvalidConsent as exc:
            raise HTTPException(422, str(exc)) from exc
        return view

    @router.get("/patients/{patient_id}/export", dependencies=[officer])
    def export(request: Request, patient_id: PatientIdPath,
               format: Literal["json", "fhir"] = "json") -> dict[str, Any]:  # noqa: A002 - the query name
        """Everything held on the patient, decrypted (art. 15, 20); ``format=fhir`` gives a Bundle."""
        try:
            with transaction(container.sessions) as db:
                data = rights.export_patient(db, container, patient_id, actor=actor_of(request), now=now(), fmt=format)
        except rights.UnknownPatient as exc:
            raise HTTPException(404, str(exc)) from exc
        return rights.export_bundle(data) if format == "fhir" else data

    @router.delete("/patients/{patient_id}", dependencies=[admin])
    def erase(request: Request, patient_id: PatientIdPath) -> dict[str, Any]:
        """Erasure (art. 17): the patient's data keys are destroyed and their rows deleted;
        the audit log keeps its pseudonymous entries and still verifies."""
        try:
            with transaction(container.sessions) as db:  # committed before the answer
                report = rights.erase_patient(db, container, patient_id, actor=actor_of(request), now=now())
        except rights.UnknownPatient as exc:
            raise HTTPException(404, str(exc)) from exc
        return asdict(report)

    @router.post("/patients/{patient_id}/objection", dependencies=[officer], status_code=201)
    def objection(request: Request, patient_id: PatientIdPath, body: ObjectionIn) -> dict[str, Any]:
        """Objection (art. 21): a deny for each purpose objected to."""
        try:
            with transaction(container.sessions) as db:
                rows = rights.object_to(db, container, patient_id, purposes=body.purposes, channel=body.channel,
                                        actor=actor_of(request), now=now())
                items = [rights.consent_view(r) for r in rows]
        except rights.UnknownPatient as exc:
            raise HTTPException(404, str(exc)) from exc
        except rights.InvalidConsent as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"patient": patient_id, "items": items}

    @router.get(
        "/processing-record",
        dependencies=[officer],
        responses={200: {"content": {"application/json": {}, "text/markdown": {"schema": {"type": "string"}}}}},
    )
    def processing_record(format: Literal["json", "markdown"] = "json") -> Any:  # noqa: A002
        """The record of processing activities (art. 30), generated from config/purposes.yaml."""
        record = record_of_processing(container.gate.policy, channels=container.settings.channels)
        if format == "markdown":
            return PlainTextResponse(record.to_markdown(), media_type="text/markdown")
        return asdict(record)

    return router
