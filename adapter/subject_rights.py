"""Data-subject rights (GDPR art. 15, 17, 20, 21) and consent from the console or API.

The HTTP API, the console and the CLI call these; each one audits itself. Personal
data leaves the vault only in an export, for the officer who asked for it.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import MetaData, Table, delete, select, tuple_, update
from sqlalchemy.orm import Session

from adapter.bootstrap import Container
from adapter.db import Base, overwriting_deleted
from adapter.events import Identifier
from adapter.models import (
    Appointment,
    Contact,
    InboundMessage,
    InboundRaw,
    Notification,
    OutboxMessage,
    Patient,
    PatientIdentifier,
)
from adapter.patients import identifier_index
from adapter.reply_models import WebhookEvent, WebhookEventPatient
from compliance import consent_store
from compliance.consent import ANY
from compliance.errors import ComplianceError, CryptoError
from compliance.models import ConsentRecord
import fhir.models  # noqa: F401 - the FHIR store's tables, exported and erased with the patient

FHIR_PATIENT_SYSTEM = "fhir:Patient"
# The tables export_patient() reads with a section of its own; every other table that
# erasure deletes as the patient's is exported row by row under EXPORT_SECTIONS' name
# (the table's own name when it has none), its sealed columns decrypted.
EXPORTED_BY_NAME = frozenset({"patient_identifier", "contact", "appointment", "notification", "outbox_message",
                              "consent_record"})
EXPORT_SECTIONS = {"patient_reply": "replies", "contact_preference": "contact_preference",
                   "incident": "incidents", "writeback": "writebacks", "telegram_link": "telegram_links",
                   "webhook_event_patient": "provider_callbacks"}
# Kept on erasure: the audit log holds pseudonyms only, and verifies afterwards.
KEPT_TABLES = frozenset({"audit_entry", "audit_node", "audit_tree_head", "data_key"})


class UnknownPatient(ComplianceError):
    """No patient with that internal id (never known, or erased)."""


class InvalidConsent(ComplianceError):
    """A consent statement naming an unknown purpose, channel or decision, or a period that is not one."""


@dataclass(frozen=True)
class ErasureReport:
    patient_id: str
    rows_deleted: dict[str, int]
    keys_destroyed: int
    # What erasure does not reach, and until when it is kept (said, not hidden).
    kept: tuple[str, ...] = ()


def patient_or_raise(session: Session, patient_id: str) -> Patient:
    patient = session.get(Patient, patient_id)
    if patient is None:
        raise UnknownPatient(f"no patient {patient_id!r}")
    return patient


def find_patient_id(session: Session, container: Container, *, phone: str = "", identifier: str = "") -> str | None:
    """The internal id of the patient with this phone number or identifier
    (``system|value``, or a bare FHIR Patient id), through the blind indexes."""
    vault = container.vault
    if phone:
        from adapter.patients import normalise_phone

        e164 = normalise_phone(phone)
        if e164:
            found = session.scalar(select(Contact.patient_id).where(
                Contact.address_index == vault.blind_index("phone", e164)).limit(1))
            if found:
                return found
    if identifier:
        system, _, value = identifier.rpartition("|")
        index = identifier_index(vault, Identifier(system or FHIR_PATIENT_SYSTEM, value))
        return session.scalar(select(PatientIdentifier.patient_id).where(PatientIdentifier.identifier_index == index))
    return None


PatientKey = Literal["id", "identifier", "phone"]
KEY_NAMES: dict[str, str] = {"id": "internal id", "identifier": "identifier", "phone": "phone number"}


def patient_id_by(session: Session, container: Container, value: str, *, by: PatientKey = "id") -> str:
    """The internal id of the patient an officer names by internal id, by identifier
    (``system|value`` as the hospital sends it, or a bare FHIR Patient id) or by phone
    number; :class:`UnknownPatient` when none. Only an internal id is repeated in the
    error: the others are personal data."""
    value = value.strip()
    if by == "id":
        return patient_or_raise(session, value).id
    found = find_patient_id(session, container, **{by: value}) if value else None
    if found is None:
        raise UnknownPatient(f"no patient with this {KEY_NAMES[by]}")
    return found


# -- export (art. 15, 20) ---------------------------------------------------------------


def export_patient(session: Session, container: Container, patient_id: str, *, actor: str, now: datetime,
                   fmt: str = "json") -> dict[str, Any]:
    """Everything held on the patient, decrypted; audited ``exported``. What erasure deletes
    as theirs is here, the records merged into them (HL7 A40) included."""
    patient = patient_or_raise(session, patient_id)
    patient_ids = [patient_id, *_merged_into(session, patient_id)]
    reveal = _Revealer(session, container)
    fhir_ids = _fhir_patient_ids(session, container, patient_id)
    data: dict[str, Any] = {
        "patient": {
            "id": patient.id,
            "given_name": reveal(patient.given_name_enc),
            "family_name": reveal(patient.family_name_enc),
            "language": patient.language,
            "created_at": patient.created_at.isoformat(),
            "updated_at": patient.updated_at.isoformat(),
            "fhir_ids": sorted(fhir_ids),
            "merged_records": patient_ids[1:],
        },
        "identifiers": [
            {"kind": row.kind, "stored_as": "blind index (HMAC-SHA256)", "index": row.identifier_index}
            for row in session.scalars(select(PatientIdentifier).where(PatientIdentifier.patient_id == patient_id))
        ],
        "contacts": [
            {"channel": row.channel, "address": reveal(row.address_enc), "rank": row.rank, "use": row.use,
             "active": row.active, "suspended_reason": row.suspended_reason}
            for row in session.scalars(select(Contact).where(Contact.patient_id == patient_id))
        ],
        "appointments": [
            {"ref": row.ref, "start": row.start.isoformat(), "status": row.status, "source": row.source,
             "location": row.location, "service_code": row.service_code}
            for row in session.scalars(select(Appointment).where(Appointment.patient_id == patient_id))
        ],
        "notifications": [
            {"id": row.id, "kind": row.kind, "status": row.status, "scheduled_for": row.scheduled_for.isoformat(),
             "channel": row.channel, "reason": row.reason, "sent_at": row.sent_at.isoformat() if row.sent_at else None,
             "body": reveal(row.body_enc), "decision": row.decision}
            for row in session.scalars(select(Notification).where(Notification.patient_id == patient_id)
                                       .order_by(Notification.id))
        ],
        "messages_sent_in_sandbox": [
            {"to": reveal(row.to_enc), "body": reveal(row.body_enc), "at": row.created_at.isoformat()}
            for row in session.scalars(select(OutboxMessage).where(OutboxMessage.patient_id.in_(patient_ids)))
        ],
        "consents": [consent_view(row) for row in consent_store.records_for(session, patient_id)],
        **{section: _table_rows(session, reveal, table, patient_ids) for section, table in _other_tables(session)},
        "fhir_resources": _fhir_resources(session, reveal, fhir_ids),
        "audit": [
            {"seq": r.seq, "at": r.at.isoformat(), "action": r.action, "reason": r.reason}
            for r in container.audit.entries(session, subject=f"patient:{patient_id}")
        ],
    }
    container.audit.append(session, action="exported", actor=actor, subject_pseudonym=f"patient:{patient_id}",
                           reason=f"data-subject export ({fmt})", details={"format": fmt}, at=now)
    return data


def export_bundle(data: dict[str, Any]) -> dict[str, Any]:
    """The export as a FHIR R4 ``collection`` Bundle (art. 20: machine-readable): the
    patient, their appointments and consents, every message as a Communication (the
    notices, what the sandbox sent, and the replies the patient wrote), the FHIR
    resources stored for them, and the JSON export itself as a DocumentReference, so
    that what no FHIR resource here carries (identifiers, channel preference,
    incidents, write-backs, the audit trail, a table added later) is in it too."""
    pid = data["patient"]["id"]
    ref = {"reference": f"Patient/{pid}"}
    patient: dict[str, Any] = {"resourceType": "Patient", "id": pid,
                               "name": [{"given": [data["patient"]["given_name"] or ""],
                                         "family": data["patient"]["family_name"] or ""}],
                               "telecom": [{"system": "email" if c["channel"] == "email" else "phone"
                                            if c["channel"] == "phone" else "other", "value": c["address"]}
                                           for c in data["contacts"] if c["address"]]}
    if data["patient"]["language"]:
        patient["communication"] = [{"language": {"coding": [{"system": "urn:ietf:bcp:47",
                                                              "code": data["patient"]["language"]}]}}]
    resources: list[dict[str, Any]] = [patient]
    for a in data["appointments"]:
        resources.append({"resourceType": "Appointment", "id": _fhir_id(a["ref"]), "status": _appointment_status(a["status"]),
                          "start": a["start"], "participant": [{"actor": ref, "status": "accepted"}]})
    for c in data["consents"]:
        resources.append({
            "resourceType": "Consent", "id": f"consent-{c['id']}", "status": "active" if c["active"] else "inactive",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": ref, "dateTime": c["recorded_at"],
            "provision": {"type": c["decision"], "purpose": [{"code": c["purpose"]}], "actor": [],
                          "action": [{"text": f"channel {c['channel']}"}]},
        })
    for n in data["notifications"]:
        comm: dict[str, Any] = {"resourceType": "Communication", "id": f"notification-{n['id']}", "subject": ref,
                                "status": _communication_status(n["status"]), "category": [{"text": n["kind"]}]}
        if n["sent_at"]:
            comm["sent"] = n["sent_at"]
        if n["body"]:
            comm["payload"] = [{"contentString": n["body"]}]
        if n["reason"]:
            comm["statusReason"] = {"text": n["reason"]}
        resources.append(comm)
    for i, m in enumerate(data["messages_sent_in_sandbox"]):
        resources.append(_communication(f"sandbox-message-{i + 1}", ref, m["body"], recipient=ref, sent=m["at"],
                                        medium="sandbox"))
    for r in data.get(EXPORT_SECTIONS["patient_reply"], []):
        reply = _communication(f"reply-{r['id']}", ref, r.get("text"), sender=ref, received=r.get("received_at"),
                               medium=r.get("channel"))
        if r.get("notification_id"):
            reply["inResponseTo"] = [{"reference": f"Communication/notification-{r['notification_id']}"}]
        resources.append(reply)
    resources.extend(r for r in data["fhir_resources"] if isinstance(r, dict) and r.get("resourceType"))
    resources.append({
        "resourceType": "DocumentReference", "id": "data-subject-export", "status": "current", "subject": ref,
        "description": "Everything held on the patient (GDPR art. 15, 20), as the adapter's JSON export",
        "content": [{"attachment": {
            "contentType": "application/json", "title": "export.json",
            "data": base64.b64encode(json.dumps(data, ensure_ascii=False, sort_keys=True, default=str).encode()).decode()}}],
    })
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": _full_url(r, i), "resource": r} for i, r in enumerate(resources)]}


# The namespace of the export Bundle's fullUrls (UUID version 5, RFC 4122 §4.3).
EXPORT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://adapter.example.org/fhir/data-subject-export")


def _full_url(resource: dict[str, Any], index: int) -> str:
    """An entry's fullUrl: a ``urn:uuid:`` needs an RFC 4122 UUID (R4 §2.24.0.8), so one
    derived from the resource's type and id, the same for every version of it (bdl-7).

    >>> _full_url({"resourceType": "Patient", "id": "p1"}, 0) == _full_url({"resourceType": "Patient", "id": "p1"}, 3)
    True
    """
    name = f"{resource['resourceType']}/{resource.get('id', index)}"
    return f"urn:uuid:{uuid.uuid5(EXPORT_NAMESPACE, name)}"


def _communication(cid: str, patient: dict[str, str], text: str | None, *, medium: str | None,
                   sender: dict[str, str] | None = None, recipient: dict[str, str] | None = None,
                   sent: str | None = None, received: str | None = None) -> dict[str, Any]:
    """A message to or from the patient as a completed R4 Communication; a text the
    retention purge or a destroyed key took away leaves no payload."""
    comm: dict[str, Any] = {"resourceType": "Communication", "id": cid, "status": "completed", "subject": patient}
    if medium:
        comm["medium"] = [{"text": medium}]
    if sender:
        comm["sender"] = sender
    if recipient:
        comm["recipient"] = [recipient]
    if sent:
        comm["sent"] = sent
    if received:
        comm["received"] = received
    if text is not None:
        comm["payload"] = [{"contentString": text}]
    return comm


# -- erasure (art. 17) --------------------------------------------------------------------


def erase_patient(session: Session, container: Container, patient_id: str, *, actor: str, now: datetime) -> ErasureReport:
    """Destroy the patient's data keys (crypto-shredding every copy of their data) and
    delete their rows; the audit log keeps its pseudonymous entries and still verifies.
    The records merged into the patient (HL7 A40, at any depth) are the same person's
    and are erased with them: their rows deleted, their keys destroyed."""
    patient_or_raise(session, patient_id)
    merged = _merged_into(session, patient_id)
    patient_ids = [patient_id, *merged]
    fhir_ids = set().union(*(_fhir_patient_ids(session, container, pid) for pid in patient_ids))
    appointments = list(session.scalars(select(Appointment.ref).where(Appointment.patient_id.in_(patient_ids))))
    with overwriting_deleted(session):
        deleted = _erase_as_received(session, container, patient_ids, now=now)
        for table in _tables_with_patient_id(session):
            result = session.execute(delete(table).where(table.c.patient_id.in_(patient_ids)))
            if result.rowcount:
                deleted[table.name] = result.rowcount
        deleted.update(_erase_fhir(session, fhir_ids))
        session.execute(delete(Patient).where(Patient.id.in_(patient_ids)))
    deleted["patient"] = len(patient_ids)
    # An EHR's Patient id comes back when it sends that patient again: a new key then.
    destroyed = sum(container.vault.destroy(session, f"patient:{pid}", at=now) for pid in patient_ids) + sum(
        container.vault.destroy(session, f"patient:{fid}", at=now, reusable=True) for fid in fhir_ids - set(patient_ids))
    container.gate.appointments_erased(session, appointments, actor=actor, now=now)
    for pid in merged:
        container.audit.append(session, action="erased", actor=actor, subject_pseudonym=f"patient:{pid}",
                               reason="data-subject erasure (art. 17) of the patient this record was merged into",
                               details={"merged_into": f"patient:{patient_id}"}, at=now)
    container.audit.append(session, action="erased", actor=actor, subject_pseudonym=f"patient:{patient_id}",
                           reason="data-subject erasure (art. 17)",
                           details={"rows": sum(deleted.values()), "keys_destroyed": destroyed,
                                    "merged_records": len(merged),
                                    "raw_messages_erased": deleted.get("inbound_raw", 0),
                                    "callbacks_erased": deleted.get("webhook_event_request", 0)},
                           at=now)
    return ErasureReport(patient_id, deleted, destroyed, _kept_after_erasure(container, now))


def _erase_as_received(session: Session, container: Container, patient_ids: list[str], *,
                       now: datetime) -> dict[str, int]:
    """Delete what was received about the patients as it came, sealed with the system
    key: the raw bytes of the HL7 messages that concerned them (found by the audit's
    ``received`` entries, which name each message by sender and control id) and the
    requests of the provider callbacks that did (``webhook_event_patient``, recorded when
    processed). The rows stay, so a retransmission is still recognised and answered from
    them; a message's says when its raw bytes were erased (``hl7 replay`` tells)."""
    received: set[tuple[str, str]] = set()
    for pid in patient_ids:
        for entry in container.audit.entries(session, subject=f"patient:{pid}"):
            details = entry.details
            if (entry.action == "received" and details.get("source", details.get("origin")) == "hl7"
                    and details.get("ref")):
                received.add((str(details.get("sender", ""))[:200], str(details["ref"])[:200]))
    erased: dict[str, int] = {}
    messages: list[int] = []
    for batch in _batches(sorted(received)):
        messages += session.scalars(select(InboundRaw.message_id).join(
            InboundMessage, InboundMessage.id == InboundRaw.message_id).where(
            InboundMessage.source == "hl7", tuple_(InboundMessage.sender, InboundMessage.control_id).in_(batch)))
    callbacks = list(session.scalars(select(WebhookEventPatient.event_id).distinct()
                                     .where(WebhookEventPatient.patient_id.in_(patient_ids))))
    for batch in _batches(messages):
        erased["inbound_raw"] = erased.get("inbound_raw", 0) + session.execute(
            delete(InboundRaw).where(InboundRaw.message_id.in_(batch))).rowcount
        session.execute(update(InboundMessage).where(InboundMessage.id.in_(batch)).values(raw_erased_at=now))
    for batch in _batches(callbacks):
        erased["webhook_event_request"] = erased.get("webhook_event_request", 0) + session.execute(
            update(WebhookEvent).where(WebhookEvent.id.in_(batch), WebhookEvent.request_enc.is_not(None))
            .values(request_enc=None)).rowcount
    return {table: count for table, count in erased.items() if count}


def _batches(items: list[Any], size: int = 500) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _kept_after_erasure(container: Container, now: datetime) -> tuple[str, ...]:
    """What erasure leaves, and until when: HL7 messages it could not tie to the patient
    (never processed: in the error store or still waiting), and callbacks from an
    address no patient had, stay until the retention purge."""
    retention = container.gate.policy.retention
    raw_until = (now + timedelta(days=retention.inbound_raw_days)).date().isoformat()
    return (
        f"HL7 v2 messages never processed (error store) and provider callbacks matched to no patient, as "
        f"received and sealed with the system key: erasure cannot tell whose they are; deleted by the retention "
        f"purge {retention.inbound_raw_days} days after receipt (config/purposes.yaml, retention.inbound_raw_days), "
        f"by {raw_until} for what is already held",
        f"audit entries: pseudonymous, kept {retention.audit_years} years (retention.audit_years); among them a "
        f"keyed hash of each appointment's reference, so a later message about one says it was erased",
    )


def _merged_into(session: Session, patient_id: str) -> list[str]:
    """The ids of the records merged into this patient, directly or through another merged record."""
    found: list[str] = []
    frontier = [patient_id]
    while frontier:
        frontier = [pid for pid in session.scalars(select(Patient.id).where(Patient.merged_into.in_(frontier)))
                    if pid != patient_id and pid not in found]
        found.extend(frontier)
    return found


# -- consent and objection (art. 7, 21) ---------------------------------------------------


def consent_view(row: ConsentRecord) -> dict[str, Any]:
    return {"id": row.id, "purpose": row.purpose, "channel": row.channel, "decision": row.decision,
            "source": row.source, "source_ref": row.source_ref, "active": row.active,
            "period_start": row.period_start.isoformat() if row.period_start else None,
            "period_end": row.period_end.isoformat() if row.period_end else None,
            "recorded_at": row.recorded_at.isoformat(), "recorded_by": row.recorded_by}


def record_consent(session: Session, container: Container, patient_id: str, *, purpose: str, channel: str,
                   decision: str, actor: str, now: datetime, source: str = "api",
                   start: datetime | None = None, end: datetime | None = None) -> ConsentRecord:
    """A consent statement from the console or API; audited; a deny cancels what it now
    forbids among the patient's pending notifications."""
    patient_or_raise(session, patient_id)
    _check_statement(container, purpose, channel, decision)
    _check_period(start, end)
    row = consent_store.record_consent(session, patient_id=patient_id, purpose=purpose, channel=channel,
                                       decision=decision, source=source, at=now, start=start, end=end,
                                       recorded_by=actor[:120])
    container.audit.append(session, action="consent_changed", actor=actor, subject_pseudonym=f"patient:{patient_id}",
                           reason=f"consent record {row.id}: {decision} {purpose} on {channel}",
                           details={"consent_record": row.id, "source": source}, at=now)
    container.gate.recheck_pending(session, patient_id, now=now)
    return row


def _check_period(start: datetime | None, end: datetime | None) -> None:
    """A period is two instants: a time without an offset could be the clinic's or UTC."""
    for name, moment in (("start", start), ("end", end)):
        if moment is not None and moment.tzinfo is None:
            raise InvalidConsent(f"the consent {name} needs a UTC offset (e.g. +01:00 or Z)")
    if start is not None and end is not None and end <= start:
        raise InvalidConsent("the consent period ends before it starts")


def object_to(session: Session, container: Container, patient_id: str, *, purposes: list[str], channel: str,
              actor: str, now: datetime) -> list[ConsentRecord]:
    """Objection (art. 21): a deny for each purpose objected to; pending notices for them end."""
    patient_or_raise(session, patient_id)
    for purpose in purposes:
        _check_statement(container, purpose, channel, "deny")
    rows = [consent_store.withdraw(session, patient_id=patient_id, purpose=purpose, channel=channel, source="api",
                                   at=now, recorded_by=actor[:120]) for purpose in purposes]
    container.audit.append(session, action="objected", actor=actor, subject_pseudonym=f"patient:{patient_id}",
                           reason=f"objection to {', '.join(purposes)} on {channel}",
                           details={"consent_records": [r.id for r in rows]}, at=now)
    container.gate.recheck_pending(session, patient_id, now=now)
    return rows


# -- internals ----------------------------------------------------------------------------


class _Revealer:
    """Decrypts a blob for the export; a destroyed or missing key gives ``None``."""

    def __init__(self, session: Session, container: Container) -> None:
        self.session, self.vault = session, container.vault

    def __call__(self, blob: bytes | None) -> str | None:
        if blob is None:
            return None
        try:
            return self.vault.decrypt(self.session, blob).decode()
        except CryptoError:
            return None


def _check_statement(container: Container, purpose: str, channel: str, decision: str) -> None:
    if purpose != ANY and purpose not in container.gate.policy.purposes:
        raise InvalidConsent(f"unknown purpose {purpose!r}")
    if channel != ANY and channel not in ("sms", "whatsapp", "telegram", "email", "sandbox"):
        raise InvalidConsent(f"unknown channel {channel!r}")
    if decision not in consent_store.DECISIONS:
        raise InvalidConsent("decision must be permit or deny")


def _tables_with_patient_id(session: Session) -> list[Table]:
    """Every table holding rows keyed by the internal patient id, children first:
    reflected from the database, so tables added by any module are covered."""
    metadata = MetaData()
    metadata.reflect(bind=session.connection())
    return [t for t in reversed(metadata.sorted_tables)
            if "patient_id" in t.c and t.name not in KEPT_TABLES | {"patient", "fhir_resource"}]


def _other_tables(session: Session) -> list[tuple[str, Table]]:
    """The tables erasure deletes as the patient's that no named export section covers."""
    tables = sorted((t for t in _tables_with_patient_id(session) if t.name not in EXPORTED_BY_NAME),
                    key=lambda t: t.name)
    # The declared table when there is one: its column types read times back in UTC.
    return [(EXPORT_SECTIONS.get(t.name, t.name), Base.metadata.tables.get(t.name, t)) for t in tables]


def _table_rows(session: Session, reveal: _Revealer, table: Table, patient_ids: list[str]) -> list[dict[str, Any]]:
    """The patient's rows of ``table``: ``<name>_enc`` columns decrypted under ``<name>``,
    times in ISO 8601. Left out: the patient id, and a Telegram link's digest (the hash
    of a one-time credential, not data about the patient)."""
    order = list(table.primary_key.columns)
    out: list[dict[str, Any]] = []
    for row in session.execute(select(table).where(table.c.patient_id.in_(patient_ids)).order_by(*order)).mappings():
        item: dict[str, Any] = {}
        for name, value in row.items():
            if name in ("patient_id", "digest"):
                continue
            if name.endswith("_enc"):
                item[name.removesuffix("_enc")] = reveal(value)
            elif isinstance(value, datetime):
                item[name] = value.isoformat()
            elif isinstance(value, bytes):
                item[name] = value.hex()
            else:
                item[name] = value
        out.append(item)
    return out


def _fhir_patient_ids(session: Session, container: Container, patient_id: str) -> set[str]:
    """The FHIR Patient ids stored for this patient, matched through the blind index."""
    table = Base.metadata.tables.get("fhir_resource")
    if table is None:
        return set()
    ours = set(session.scalars(select(PatientIdentifier.identifier_index)
                               .where(PatientIdentifier.patient_id == patient_id)))
    candidates = session.scalars(select(table.c.patient_id).where(table.c.patient_id.is_not(None)).distinct())
    return {pid for pid in candidates
            if identifier_index(container.vault, Identifier(FHIR_PATIENT_SYSTEM, pid)) in ours}


def _fhir_resources(session: Session, reveal: _Revealer, fhir_ids: set[str]) -> list[Any]:
    table = Base.metadata.tables.get("fhir_resource")
    if table is None or not fhir_ids:
        return []
    out: list[Any] = []
    for row in session.execute(select(table.c.content).where(table.c.patient_id.in_(fhir_ids))
                               .order_by(table.c.pk)):
        text = reveal(row.content)
        if text is not None:
            try:
                out.append(json.loads(text))
            except ValueError:
                out.append(text)
    return out


def _erase_fhir(session: Session, fhir_ids: set[str]) -> dict[str, int]:
    resources = Base.metadata.tables.get("fhir_resource")
    if resources is None or not fhir_ids:
        return {}
    refs = session.execute(select(resources.c.resource_type, resources.c.resource_id)
                           .where(resources.c.patient_id.in_(fhir_ids))).all()
    identifiers = Base.metadata.tables.get("fhir_identifier")
    if identifiers is not None:
        for kind, rid in set(refs):
            session.execute(delete(identifiers).where(identifiers.c.resource_type == kind,
                                                      identifiers.c.resource_id == rid))
    result = session.execute(delete(resources).where(resources.c.patient_id.in_(fhir_ids)))
    deleted = {"fhir_resource": result.rowcount} if result.rowcount else {}
    # Their versions' rows in the inbound queue go too: the EHR that still holds the
    # patient sends them again, as first versions with the same ids, and the patient
    # starts afresh (the rows kept, ``Patient/p1/_history/1`` took the new version's id).
    queued: list[int] = []
    for kind, rid in set(refs):
        queued += session.scalars(delete(InboundMessage).where(
            InboundMessage.source == "fhir",
            InboundMessage.control_id.startswith(f"{kind}/{rid}/_history/", autoescape=True))
            .returning(InboundMessage.id)).all()
    if queued:
        deleted["inbound_message"] = len(queued)
        # SQLite gives the largest id again: no other patient's notice stays filed under a new message.
        for column in (Notification.message_id, Notification.withdrawn_by):
            session.execute(update(Notification).where(column.in_(queued)).values({column: None}))
    return deleted


def _fhir_id(ref: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in ref)[:64]


def _appointment_status(status: str) -> str:
    return status if status in ("booked", "cancelled", "fulfilled", "noshow", "pending", "arrived") else "booked"


def _communication_status(status: str) -> str:
    """R4 EventStatus of a notification. A failed one was not done: entered-in-error
    would say the record itself is a mistake, and readers hide such records."""
    return {"sent": "completed", "delivered": "completed", "read": "completed", "failed": "not-done",
            "suppressed": "not-done", "cancelled": "not-done", "scheduled": "preparation",
            "claimed": "in-progress"}.get(status, "unknown")
