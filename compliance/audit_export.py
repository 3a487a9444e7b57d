"""Audit export for compliance officers: JSONL, and FHIR R4 AuditEvent in the style of IHE
Basic Audit Log Patterns (BALP): DICOM event types (DCM 110100-110114), our action as the
subtype, action C/R/U/D/E, outcome 0/4/8/12, the actor as agent and the patient only as a
pseudonymous entity (object role 1 = Patient; an erased appointment's keyed hash as object
role 4 = Domain Resource). One JSON document per line (NDJSON)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, TypeAdapter, ValidationError

from sqlalchemy.orm import Session

from compliance.audit import AuditLog, AuditRecord, is_system_actor

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACTION_SYSTEM = "https://adapter.example.org/fhir/CodeSystem/audit-action"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"

# action → (DICOM event type code, display, FHIR AuditEvent.action)
EVENT_TYPES: dict[str, tuple[str, str, str]] = {
    "received": ("110107", "Import", "C"),
    "scheduled": ("110110", "Patient Record", "C"),
    "suppressed": ("110110", "Patient Record", "U"),
    "cancelled": ("110110", "Patient Record", "U"),
    "sent": ("110106", "Export", "R"),
    "delivered": ("110110", "Patient Record", "U"),
    "failed": ("110106", "Export", "E"),
    "replied": ("110107", "Import", "C"),
    "consent_changed": ("110110", "Patient Record", "U"),
    "exported": ("110106", "Export", "R"),
    "erased": ("110110", "Patient Record", "D"),
    "objected": ("110110", "Patient Record", "U"),
    "retention_purged": ("110110", "Patient Record", "D"),
    "accessed": ("110110", "Patient Record", "R"),
    "audit_read": ("110101", "Audit Log Used", "R"),
    "audit_verified": ("110101", "Audit Log Used", "E"),
    "key_rotated": ("110113", "Security Alert", "E"),
    "auth_failed": ("110114", "User Authentication", "E"),
    "hl7_sender_refused": ("110113", "Security Alert", "E"),
    "hl7_replayed": ("110107", "Import", "E"),
}
OUTCOME_CODES = {"success": "0", "minor_failure": "4", "serious_failure": "8", "major_failure": "12"}


def export(log: AuditLog, session: Session, since: datetime | None,
           fmt: Literal["jsonl", "fhir"] = "jsonl") -> Iterator[str]:
    """Entries at or after ``since`` (all if ``None``), oldest first, one line each.
    The caller audits the export itself (action ``exported`` or ``audit_read``)."""
    if fmt not in ("jsonl", "fhir"):
        raise ValueError(f"unknown export format {fmt!r}")
    for record in log.entries(session, since=since):
        doc = as_json(record) if fmt == "jsonl" else as_audit_event(record)
        yield json.dumps(doc, ensure_ascii=False, sort_keys=True)


def not_a_number(value: object) -> object:
    """``value`` unless it is a bare number where a date is meant: pydantic reads digits
    as a Unix time, so 20261128, a date as HL7 writes it, was 23 August 1970 and
    selected the whole log. For a ``BeforeValidator`` of a ``since``.

    >>> not_a_number("2026-11-28")
    '2026-11-28'
    >>> not_a_number("20261128")
    Traceback (most recent call last):
    ValueError: a date (2026-11-28) or a date and time (2026-11-28T10:00:00+01:00), not a number
    """
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().replace(".", "", 1).isdigit()):
        raise ValueError("a date (2026-11-28) or a date and time (2026-11-28T10:00:00+01:00), not a number")
    return value


SINCE = TypeAdapter(Annotated[datetime, BeforeValidator(not_a_number)])


def parse_since(text: str) -> datetime:
    """A ``since`` as an officer types it (the CLI's parser); ValueError naming what is wrong."""
    try:
        return SINCE.validate_python(text)
    except ValidationError as exc:
        raise ValueError("; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())) from None


def as_json(r: AuditRecord) -> dict[str, Any]:
    return {"seq": r.seq, "at": _instant(r.at), "action": r.action, "outcome": r.outcome, "actor": r.actor,
            "subject": r.subject, "reason": r.reason, "details": r.details, "leaf_hash": r.leaf_hash.hex()}


def as_audit_event(r: AuditRecord) -> dict[str, Any]:
    code, display, action = EVENT_TYPES.get(r.action, ("110100", "Application Activity", "E"))
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"audit-{r.seq}",
        "type": {"system": DCM, "code": code, "display": display},
        "subtype": [{"system": ACTION_SYSTEM, "code": r.action}],
        "action": action,
        "recorded": _instant(r.at),
        "outcome": OUTCOME_CODES[r.outcome],
        "agent": [{"who": {"identifier": {"value": r.actor}}, "requestor": not is_system_actor(r.actor)}],
        "source": {"observer": {"display": "adapter"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                             "code": "4", "display": "Application Server"}]},
        "entity": [{
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "description": "audit log entry",
            "detail": [
                {"type": "seq", "valueString": str(r.seq)},
                {"type": "leaf_hash", "valueBase64Binary": base64.b64encode(r.leaf_hash).decode()},
                {"type": "details", "valueString": json.dumps(r.details, sort_keys=True)},
            ],
        }],
    }
    if r.reason:
        event["outcomeDesc"] = r.reason
    if r.subject.startswith("appointment:"):  # an appointment erased with its patient, by a keyed hash of its ref
        event["entity"].insert(0, {
            "what": {"identifier": {"value": r.subject}},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
        })
    elif r.subject:
        event["entity"].insert(0, {
            "what": {"identifier": {"value": r.subject}},
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
        })
    return event


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
