"""Patients and their contacts: found by blind index, stored encrypted.

Only this module and ``compliance/`` see a patient's personal fields; everything
else works with the internal id (a pseudonym).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import phonenumbers
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from adapter import events as ev
from adapter.models import Appointment, Contact, Notification, Patient, PatientIdentifier
from compliance.crypto import Vault

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


def normalise_phone(value: str, region: str = "IT") -> str | None:
    """E.164, or None for a number that cannot be dialled."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


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


def upsert_patient(
    session: Session, vault: Vault, details: ev.PatientDetails, *, now: datetime
) -> Patient:
    """Create or update the patient ``details`` describes. Identifiers are
    added, never removed; contacts the hospital no longer lists are deactivated
    when the update carries a telecom list."""
    # One look-up for every identifier the message carries; the key wins, then the others in order.
    wanted = {identifier: identifier_index(vault, identifier) for identifier in (details.key, *details.identifiers)}
    known = dict(
        session.execute(
            select(PatientIdentifier.identifier_index, PatientIdentifier.patient_id).where(
                PatientIdentifier.identifier_index.in_(set(wanted.values()))
            )
        ).all()
    )
    patient = None
    for index in wanted.values():
        if index in known:
            patient = session.get(Patient, known[index])
            while patient is not None and patient.merged_into:
                patient = session.get(Patient, patient.merged_into)
            break
    if patient is None:
        patient = Patient(id=str(uuid.uuid4()), language="", created_at=now, updated_at=now)
        session.add(patient)
    subject = f"patient:{patient.id}"
    for identifier, index in wanted.items():
        if index not in known:
            known[index] = patient.id
            session.add(PatientIdentifier(patient_id=patient.id, identifier_index=index, kind=identifier.kind))
    if details.given_name:
        patient.given_name_enc = vault.encrypt_str(session, subject, details.given_name)
    if details.family_name:
        patient.family_name_enc = vault.encrypt_str(session, subject, details.family_name)
    if details.language:
        patient.language = details.language.split("-")[0].lower()[:8]
    patient.updated_at = now
    if details.telecom:
        _sync_contacts(session, vault, patient, details.telecom, now=now)
    session.flush()
    return patient


def _sync_contacts(
    session: Session, vault: Vault, patient: Patient, telecom: tuple[ev.ContactPoint, ...], *, now: datetime
) -> None:
    subject = f"patient:{patient.id}"
    existing = {
        (c.channel, c.address_index): c
        for c in session.scalars(select(Contact).where(Contact.patient_id == patient.id))
    }
    listed: set[tuple[str, str]] = set()
    for position, point in enumerate(telecom):
        mapped = medium_and_address(point)
        if mapped is None:
            continue
        medium, address = mapped
        key = (medium, vault.blind_index(medium, address))
        listed.add(key)
        rank = point.rank if point.rank is not None else 10 + position
        contact = existing.get(key)
        if contact is None:
            contact = Contact(
                patient_id=patient.id,
                channel=medium,
                address_enc=vault.encrypt_str(session, subject, address),
                address_index=key[1],
                rank=rank,
                use=point.use,
                updated_at=now,
            )
            session.add(contact)
            existing[key] = contact
        else:
            contact.rank, contact.use, contact.active, contact.updated_at = rank, point.use, True, now
    for key, contact in existing.items():
        if key not in listed and contact.channel != "telegram" and contact.active:
            contact.active = False  # the hospital no longer lists it
            contact.updated_at = now


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


def reachable(session: Session, vault: Vault, patient_id: str, channels: list[str]) -> list[Reachable]:
    """The patient's usable contacts, in the order the channels are preferred,
    then by rank. Suspended (STOP, wrong number) and dropped contacts are skipped."""
    contacts = list(
        session.scalars(
            select(Contact)
            .where(Contact.patient_id == patient_id, Contact.active.is_(True), Contact.suspended_at.is_(None))
            .order_by(Contact.rank, Contact.id)
        )
    )
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
    session: Session, vault: Vault, surviving: ev.PatientDetails, retired: ev.Identifier, *, now: datetime
) -> tuple[Patient, str | None]:
    """HL7 A40: the retired record's identifiers, contacts, appointments and pending
    notifications move to the survivor; the retired row points at it. Returns the
    survivor and the retired patient's id (None when we never knew them)."""
    keeper = upsert_patient(session, vault, surviving, now=now)
    old = find_patient(session, vault, retired)
    if old is None or old.id == keeper.id:
        if old is None:  # remember the retired identifier so later messages find the survivor
            index = identifier_index(vault, retired)
            session.add(PatientIdentifier(patient_id=keeper.id, identifier_index=index, kind=retired.kind))
        return keeper, None
    for table in (PatientIdentifier, Appointment, Notification):
        session.execute(update(table).where(table.patient_id == old.id).values(patient_id=keeper.id))
    known = {c.address_index for c in session.scalars(select(Contact).where(Contact.patient_id == keeper.id))}
    for contact in session.scalars(select(Contact).where(Contact.patient_id == old.id)):
        if contact.address_index in known:
            session.delete(contact)
        else:
            # Re-seal under the survivor's key so erasing one never breaks the other.
            address = vault.decrypt_str(session, contact.address_enc)
            contact.address_enc = vault.encrypt_str(session, f"patient:{keeper.id}", address)
            contact.patient_id = keeper.id
    old.merged_into = keeper.id
    old.updated_at = now
    session.flush()
    return keeper, old.id
