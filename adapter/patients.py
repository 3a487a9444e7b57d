"""Patients and their contacts: found by blind index, stored encrypted.

Only this module and ``compliance/`` see a patient's personal fields; everything
else works with the internal id (a pseudonym).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session
from uuid6 import uuid7

from adapter import events as ev
from adapter.db import execute_prebuilt, insert_rows
from adapter.models import Appointment, Contact, Invoice, Notification, Patient, PatientIdentifier
from adapter.phones import phone
from compliance.crypto import Vault

_PATIENT = Patient.__table__
_IDENTIFIER = PatientIdentifier.__table__
_CONTACT = Contact.__table__
# Built once: constructing a statement costs more than running it. Those run for each
# message about a known patient go through execute_prebuilt (SQLAlchemy's execution costs
# ten times the statement's).
_FIND_IDENTIFIERS = (
    select(_IDENTIFIER.c.identifier_index, _IDENTIFIER.c.patient_id, _PATIENT.c.merged_into)
    .join(_PATIENT, _PATIENT.c.id == _IDENTIFIER.c.patient_id)
    .where(_IDENTIFIER.c.identifier_index.in_(bindparam("indexes", expanding=True)))
)
_MERGED_INTO = select(_PATIENT.c.merged_into).where(_PATIENT.c.id == bindparam("patient"))
_APPOINTMENT = Appointment.__table__
_NOTIFICATION = Notification.__table__
# Which HL7 senders have told us about a patient: their appointments, and the refs
# (``hl7:<MSH-3>^<MSH-4>:<id>``) of notices about their reports.
_HL7_SENDERS_OF = (
    select(_APPOINTMENT.c.sender).where(_APPOINTMENT.c.patient_id == bindparam("patient"), _APPOINTMENT.c.source == "hl7")
    .union(select(_NOTIFICATION.c.subject_ref).where(
        _NOTIFICATION.c.patient_id == bindparam("patient"), _NOTIFICATION.c.subject_ref.like("hl7:%")))
)
_REKEY_IDENTIFIER = _IDENTIFIER.update().where(_IDENTIFIER.c.identifier_index == bindparam("legacy"))
_UPDATE_PATIENT = _PATIENT.update().where(_PATIENT.c.id == bindparam("patient"))
_CONTACTS_OF = select(_CONTACT.c.id, _CONTACT.c.channel, _CONTACT.c.address_index, _CONTACT.c.active).where(
    _CONTACT.c.patient_id == bindparam("patient"))
_UPDATE_CONTACT = _CONTACT.update().where(_CONTACT.c.id == bindparam("contact"))

# Which contact medium each channel needs.
CHANNEL_MEDIUM = {"sms": "phone", "whatsapp": "phone", "telegram": "telegram", "email": "email"}


@dataclass(frozen=True)
class Reachable:
    """A contact usable for a channel, decrypted for the one send that needs it."""

    channel: str
    contact_id: int
    address: str


def identifier_index(vault: Vault, identifier: ev.Identifier) -> str:
    return vault.blind_index("identifier", f"{identifier.system}|{identifier.value}")


def legacy_indexes(vault: Vault, details: ev.PatientDetails) -> dict[str, tuple[str, str]]:
    """For each identifier of ``details`` sent without an assigning authority: the
    index it was stored under before such identifiers were qualified by their sender
    (an empty system) → (its index now, the sender that qualifies it)."""
    return {
        identifier_index(vault, replace(identifier, system="")): (identifier_index(vault, identifier), identifier.system)
        for identifier in (details.key, *details.identifiers) if identifier.authority_assumed
    }


def normalise_phone(value: str, region: str = "IT") -> str | None:
    """E.164, or None for a number that cannot be dialled."""
    read = phone(value, region)
    return read.e164 if read.valid else None


def medium_and_address(point: ev.ContactPoint) -> tuple[str, str] | None:
    """Map a hospital contact point to a medium we can message, normalised."""
    if point.system in ("phone", "sms", "whatsapp"):
        if point.system == "phone" and point.use not in ("mobile", ""):
            return None  # landlines cannot take SMS
        phone = normalise_phone(point.value)
        return ("phone", phone) if phone else None
    if point.system == "email" and "@" in point.value:
        return "email", point.value.strip().lower()
    if point.system == "telegram" and point.value.strip():
        return "telegram", point.value.strip()
    return None


def find_patient(session: Session, vault: Vault, identifier: ev.Identifier) -> Patient | None:
    row = session.scalar(
        select(Patient)
        .join(PatientIdentifier, PatientIdentifier.patient_id == Patient.id)
        .where(PatientIdentifier.identifier_index == identifier_index(vault, identifier))
    )
    while row is not None and row.merged_into:
        row = session.get(Patient, row.merged_into)
    return row


@dataclass(frozen=True)
class UpsertedPatient:
    id: str
    created: bool  # a new patient: nothing of theirs (consent, contacts, keys) existed before


def upsert_patient(
    session: Session, vault: Vault, details: ev.PatientDetails, *, now: datetime
) -> UpsertedPatient:
    """Create or update the patient ``details`` describes. Identifiers are
    added, never removed; contacts the hospital no longer lists are deactivated
    when the update carries a telecom list (``telecom``, or ``telecom_listed``: a list
    of which none is in use). Core statements, no ORM objects."""
    # One look-up for every identifier the message carries; the key wins, then the others in order.
    wanted = identifier_indexes(vault, details)
    legacy = legacy_indexes(vault, details)
    found = {
        index: (patient_id, merged_into)
        for index, patient_id, merged_into in execute_prebuilt(session, _FIND_IDENTIFIERS, {"indexes": list({*wanted, *legacy})})
    }
    first = next((found[index] for index in wanted if index in found), None)
    if first is None:
        first = _claim_legacy(session, legacy, found)
    if first is None:
        return UpsertedPatient(create_patients(session, vault, [details], now=now)[0], created=True)
    patient_id = _survivor(session, *first)
    execute_prebuilt(session, _UPDATE_PATIENT, {**_patient_values(session, vault, patient_id, details, now), "patient": patient_id})
    new_identifiers = {index: kind for index, kind in wanted.items() if index not in found}
    if new_identifiers:
        insert_rows(session, _IDENTIFIER, _identifier_rows(patient_id, new_identifiers))
    if details.telecom or details.telecom_listed:
        _sync_contacts(session, vault, patient_id, details.telecom, now=now)
    return UpsertedPatient(patient_id, created=False)


def known_patients(session: Session, indexes: Sequence[str]) -> set[str]:
    """The patients known by any of these identifier blind indexes (a merged one's
    survivor, one merge followed): whom messages naming them are about, to read what
    applying them needs with one query for all."""
    return {merged_into or patient_id for _, patient_id, merged_into in
            execute_prebuilt(session, _FIND_IDENTIFIERS, {"indexes": list(indexes)})}


def _claim_legacy(
    session: Session, legacy: dict[str, tuple[str, str]], found: dict[str, tuple[str, str | None]]
) -> tuple[str, str | None] | None:
    """A patient stored under an identifier without authority before such identifiers
    were qualified by their sender, if nothing shows that another sender's patient
    shares it: its identifiers are then re-keyed to the qualified form, so the next
    message of any other sender does not find it. ``found`` is updated to match."""
    for legacy_index, (_, sender) in legacy.items():
        if legacy_index not in found:
            continue
        patient_id = _survivor(session, *found[legacy_index])
        if _hl7_senders(session, patient_id) - {sender}:
            continue  # also (or only) another hospital's patient: not this sender's to take
        for other_legacy, (qualified, _) in legacy.items():
            if other_legacy in found and _survivor(session, *found[other_legacy]) == patient_id:
                session.execute(_REKEY_IDENTIFIER, {"legacy": other_legacy, "identifier_index": qualified})
                found[qualified] = found.pop(other_legacy)
        return patient_id, None
    return None


def _patient_with(session: Session, vault: Vault, identifier: ev.Identifier) -> str | None:
    """The id of the (surviving) patient known by ``identifier``, also as stored before
    identifiers without an authority were qualified (see :func:`_claim_legacy`)."""
    index = identifier_index(vault, identifier)
    legacy = legacy_indexes(vault, ev.PatientDetails(key=identifier))
    found = {index: (patient_id, merged_into) for index, patient_id, merged_into
             in session.execute(_FIND_IDENTIFIERS, {"indexes": [index, *legacy]})}
    first = found.get(index) or _claim_legacy(session, legacy, found)
    return _survivor(session, *first) if first is not None else None


def _hl7_senders(session: Session, patient_id: str) -> set[str]:
    """The sending facilities (MSH-4, or the whole sender when it has none) of the HL7
    messages that created the patient's appointments and report notices."""
    out: set[str] = set()
    for (where,) in session.execute(_HL7_SENDERS_OF, {"patient": patient_id}):
        sender = where.split(":", 2)[1] if where.startswith("hl7:") else where
        out.add(sender.rpartition("^")[2] or sender)
    return out


def create_patients(
    session: Session, vault: Vault, patients: Sequence[ev.PatientDetails], *, now: datetime
) -> list[str]:
    """New patients, none of whose identifiers is known (the caller has looked): their
    data keys, rows, identifiers and contacts with one multi-row insert per table.
    Returns their ids, in order."""
    ids = [str(uuid7()) for _ in patients]  # time-ordered: see fhir.service.new_id
    vault.create_keys(session, [f"patient:{patient_id}" for patient_id in ids])  # no look-up: nobody used them
    patient_rows, identifier_rows, contact_rows = [], [], []
    for patient_id, details in zip(ids, patients, strict=True):
        patient_rows.append({"language": "", "given_name_enc": None, "family_name_enc": None,
                             **_patient_values(session, vault, patient_id, details, now),
                             "id": patient_id, "created_at": now})
        identifier_rows += _identifier_rows(patient_id, identifier_indexes(vault, details))
        contact_rows += _contact_changes(session, vault, patient_id, details.telecom, {}, now).added
    insert_rows(session, _PATIENT, patient_rows)
    insert_rows(session, _IDENTIFIER, identifier_rows)
    insert_rows(session, _CONTACT, contact_rows)
    return ids


def identifier_indexes(vault: Vault, details: ev.PatientDetails) -> dict[str, str]:
    """Blind index → identifier kind for every identifier of ``details``, the key first."""
    out: dict[str, str] = {}
    for identifier in (details.key, *details.identifiers):
        out.setdefault(identifier_index(vault, identifier), identifier.kind)
    return out


def _identifier_rows(patient_id: str, indexes: dict[str, str]) -> list[dict[str, str]]:
    return [{"patient_id": patient_id, "identifier_index": index, "kind": kind} for index, kind in indexes.items()]


def _patient_values(
    session: Session, vault: Vault, patient_id: str, details: ev.PatientDetails, now: datetime
) -> dict[str, object]:
    """The patient columns ``details`` sets, personal ones sealed with the patient's key."""
    subject = f"patient:{patient_id}"
    values: dict[str, object] = {"updated_at": now}
    if details.given_name:
        values["given_name_enc"] = vault.encrypt_str(session, subject, details.given_name)
    elif "given_name" in details.cleared:
        values["given_name_enc"] = None
    if details.family_name:
        values["family_name_enc"] = vault.encrypt_str(session, subject, details.family_name)
    elif "family_name" in details.cleared:
        values["family_name_enc"] = None
    if details.language:
        values["language"] = details.language.split("-")[0].lower()[:8]
    elif "language" in details.cleared:
        values["language"] = ""  # the clinic's default, from the next message on
    return values


def _survivor(session: Session, patient_id: str, merged_into: str | None) -> str:
    """Follow A40 merges to the record that is kept."""
    while merged_into:
        patient_id = merged_into
        merged_into = session.execute(_MERGED_INTO, {"patient": patient_id}).scalar()
    return patient_id


class _StoredContact(NamedTuple):
    id: int
    channel: str
    address_index: str
    active: bool


@dataclass
class _ContactChanges:
    added: list[dict[str, object]]
    kept: dict[int, dict[str, object]]  # contact id → new values
    dropped: list[int]


def _sync_contacts(
    session: Session, vault: Vault, patient_id: str, telecom: tuple[ev.ContactPoint, ...], *, now: datetime
) -> None:
    existing = {(row.channel, row.address_index): row for row in map(
        _StoredContact._make, execute_prebuilt(session, _CONTACTS_OF, {"patient": patient_id}))}
    changes = _contact_changes(session, vault, patient_id, telecom, existing, now)
    insert_rows(session, _CONTACT, changes.added)
    for contact_id, values in changes.kept.items():
        execute_prebuilt(session, _UPDATE_CONTACT, {**values, "contact": contact_id})
    if changes.dropped:  # the hospital no longer lists them
        session.execute(_CONTACT.update().where(_CONTACT.c.id.in_(changes.dropped)).values(active=False, updated_at=now))


def _contact_changes(
    session: Session, vault: Vault, patient_id: str, telecom: tuple[ev.ContactPoint, ...],
    existing: dict[tuple[str, str], _StoredContact], now: datetime,
) -> _ContactChanges:
    """What the hospital's telecom list changes in the patient's ``existing`` contacts
    (rows with id, channel, address_index, active, by (medium, address index))."""
    added: dict[tuple[str, str], dict[str, object]] = {}
    kept: dict[int, dict[str, object]] = {}
    for position, point in enumerate(telecom):
        mapped = medium_and_address(point)
        if mapped is None:
            continue
        medium, address = mapped
        key = (medium, vault.blind_index(medium, address))
        rank = point.rank if point.rank is not None else 10 + position
        if key in existing:
            kept[existing[key].id] = {"rank": rank, "use": point.use, "active": True, "updated_at": now}
        elif key in added:
            added[key].update(rank=rank, use=point.use)  # listed twice: the last listing wins
        else:
            added[key] = {
                "patient_id": patient_id, "channel": medium, "address_index": key[1], "rank": rank,
                "use": point.use, "active": True, "updated_at": now,
                "address_enc": vault.encrypt_str(session, f"patient:{patient_id}", address),
            }
    dropped = [row.id for row in existing.values() if row.id not in kept and row.channel != "telegram" and row.active]
    return _ContactChanges(list(added.values()), kept, dropped)


def link_contact(session: Session, vault: Vault, patient_id: str, medium: str, address: str, *,
                 now: datetime) -> Contact:
    """A contact the patient gave us themselves (a Telegram chat linked by deep link):
    sealed and blind-indexed like the hospital's, and the only active one of its medium,
    so that the latest link is the one used."""
    index = vault.blind_index(medium, address)
    contact = None
    for other in session.scalars(select(Contact).where(Contact.patient_id == patient_id, Contact.channel == medium)):
        if other.address_index == index:
            contact = other
        elif other.active:
            other.active, other.updated_at = False, now
    if contact is None:
        contact = Contact(patient_id=patient_id, channel=medium, address_index=index, rank=0, use="linked",
                          address_enc=vault.encrypt_str(session, f"patient:{patient_id}", address), updated_at=now)
        session.add(contact)
    contact.active, contact.updated_at = True, now
    session.flush()
    return contact


_USABLE_CONTACTS = "usable_contacts"  # session.info: {patient id: usable contacts}, see load_usable_contacts


def _usable(patient_ids: Sequence[str]) -> Any:
    return (select(Contact)
            .where(Contact.patient_id.in_(patient_ids), Contact.active.is_(True), Contact.suspended_at.is_(None))
            .order_by(Contact.rank, Contact.id))


def load_usable_contacts(session: Session, patient_ids: Sequence[str]) -> None:
    """Read the usable contacts of many patients with one query, for :func:`reachable`
    in this session: a dispatcher round, which changes no contact while it prepares
    (anything that changes one uses a transaction of its own)."""
    found: dict[str, list[Contact]] = {patient_id: [] for patient_id in patient_ids}
    for contact in session.scalars(_usable(list(found))):
        found[contact.patient_id].append(contact)
    session.info.setdefault(_USABLE_CONTACTS, {}).update(found)


def reachable(session: Session, vault: Vault, patient_id: str, channels: list[str]) -> list[Reachable]:
    """The patient's usable contacts, in the order the channels are preferred,
    then by rank. Suspended (STOP, wrong number) and dropped contacts are skipped."""
    loaded = session.info.get(_USABLE_CONTACTS, {})
    contacts = loaded[patient_id] if patient_id in loaded else list(session.scalars(_usable([patient_id])))
    out: list[Reachable] = []
    for channel in channels:
        medium = CHANNEL_MEDIUM.get(channel)
        for contact in contacts:
            if medium is None or contact.channel == medium:
                out.append(Reachable(channel, contact.id, vault.decrypt_str(session, contact.address_enc)))
                break
    return out


def first_name(session: Session, vault: Vault, patient: Patient) -> str:
    if patient.given_name_enc is None:
        return ""
    return vault.decrypt_str(session, patient.given_name_enc).split(" ")[0]


def merge_patients(
    session: Session, vault: Vault, surviving: ev.PatientDetails, retired: Sequence[ev.Identifier], *, now: datetime
) -> tuple[str, str | None]:
    """HL7 A40: the retired record (the first patient other than the survivor that one of
    ``retired`` names) passes its identifiers, contacts, appointments and pending
    notifications to the survivor and points at it. Returns the survivor's id and the
    retired patient's id (None when we never knew them, or they are already the survivor:
    a repeated merge)."""
    keeper = upsert_patient(session, vault, surviving, now=now).id
    known = {identifier_index(vault, identifier): (identifier, _patient_with(session, vault, identifier))
             for identifier in retired}
    old_id = next((patient_id for _, patient_id in known.values() if patient_id not in (None, keeper)), None)
    # Identifiers never seen are remembered, so that later messages with them find the survivor.
    session.add_all(PatientIdentifier(patient_id=keeper, identifier_index=index, kind=identifier.kind)
                    for index, (identifier, patient_id) in known.items() if patient_id is None)
    old = session.get(Patient, old_id) if old_id is not None else None
    if old is None:
        return keeper, None
    for table in (PatientIdentifier, Appointment, Notification):
        session.execute(update(table).where(table.patient_id == old.id).values(patient_id=keeper))
    known = {c.address_index for c in session.scalars(select(Contact).where(Contact.patient_id == keeper))}
    for contact in session.scalars(select(Contact).where(Contact.patient_id == old.id)):
        if contact.address_index in known:
            session.delete(contact)
        else:
            # Re-seal under the survivor's key so erasing one never breaks the other.
            address = vault.decrypt_str(session, contact.address_enc)
            contact.address_enc = vault.encrypt_str(session, f"patient:{keeper}", address)
            contact.patient_id = keeper
    for invoice in session.scalars(select(Invoice).where(Invoice.patient_id == old.id)):
        invoice.details_enc = vault.encrypt_str(session, f"patient:{keeper}",
                                                vault.decrypt_str(session, invoice.details_enc))
        invoice.patient_id = keeper
    old.merged_into = keeper
    old.updated_at = now
    session.flush()
    return keeper, old.id
