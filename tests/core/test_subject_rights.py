"""Data-subject rights over a real migrated SQLite database: erasure (art. 17) and export
(art. 15, 20) reach every record held on the patient, including records merged into them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from adapter import events as ev
from adapter.contact_models import ContactPreference, TelegramLink
from adapter.db import transaction
from adapter.models import OutboxMessage, Patient
from adapter.patients import merge_patients, upsert_patient
from adapter.reply_models import Incident, PatientReply, Writeback
from adapter.subject_rights import erase_patient, export_patient
from compliance.errors import CryptoError
from tests.harness import migrated_container, settings_for

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OLD = ev.Identifier("OSP", "MRN-OLD", "MR")
NEW = ev.Identifier("OSP", "MRN-NEW", "MR")


def details(key: ev.Identifier) -> ev.PatientDetails:
    return ev.PatientDetails(key=key, given_name="Ermenegilda", family_name="Pazzaglini")


def add_patient_records(container, session, patient_id: str) -> list[bytes]:
    """A sandbox message, a reply, a channel preference and a Telegram link of this
    patient; returns the blobs sealed under their key."""
    vault = container.vault
    sent = vault.encrypt(session, f"patient:{patient_id}", b"Gentile Ermenegilda")
    wrote = vault.encrypt(session, f"patient:{patient_id}", b"non posso venire, sono in ospedale")
    session.add_all([
        OutboxMessage(idempotency_key=f"k-{patient_id}", patient_id=patient_id, created_at=NOW,
                      to_enc=vault.encrypt(session, f"patient:{patient_id}", b"+393331234567"), body_enc=sent),
        PatientReply(provider="sandbox", provider_message_id=f"m-{patient_id}", channel="sms", patient_id=patient_id,
                     intent="other", action="none", status="open", text_enc=wrote, received_at=NOW),
        ContactPreference(patient_id=patient_id, channel="email", source="reply/1", updated_at=NOW),
        TelegramLink(digest=f"d-{patient_id}", patient_id=patient_id, expires_at=NOW, created_at=NOW),
    ])
    session.flush()
    return [sent, wrote]


def test_erasing_the_survivor_of_a_merge_erases_the_retired_record_and_what_it_held(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    with transaction(container.sessions) as session:
        old_id = upsert_patient(session, container.vault, details(OLD), now=NOW).id
        sealed = add_patient_records(container, session, old_id)
        upsert_patient(session, container.vault, details(NEW), now=NOW)
    with transaction(container.sessions) as session:
        keeper, retired = merge_patients(session, container.vault, details(NEW), [OLD], now=NOW)
    assert retired == old_id

    with transaction(container.sessions) as session:
        report = erase_patient(session, container, keeper, actor="officer", now=NOW)

    assert report.rows_deleted["patient"] == 2
    with transaction(container.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Patient)) == 0
        for model in (OutboxMessage, PatientReply, ContactPreference, TelegramLink):
            assert session.scalar(select(func.count()).select_from(model)) == 0, model.__tablename__
        for blob in sealed:
            with pytest.raises(CryptoError):
                container.vault.decrypt(session, blob)
        assert container.audit.verify(session).ok
        erased = [e.subject for e in container.audit.entries(session) if e.action == "erased"]
    assert set(erased) == {f"patient:{keeper}", f"patient:{old_id}"}
    container.engine.dispose()


def test_the_fhir_export_names_its_entries_by_valid_uuid_urns_and_a_failed_message_is_not_marked_entered_in_error():
    import uuid

    from adapter.subject_rights import export_bundle

    data = {"patient": {"id": "p-1", "given_name": "Ermenegilda", "family_name": "Pazzaglini", "language": "it"},
            "contacts": [], "appointments": [], "consents": [], "messages_sent_in_sandbox": [], "fhir_resources": [],
            "notifications": [{"id": 1, "kind": "reminder", "status": "failed", "sent_at": None, "body": "Gentile",
                               "reason": "undelivered"}]}
    bundle = export_bundle(data)

    for entry in bundle["entry"]:  # R4 §2.1.0.3 uuid: urn:uuid: and an RFC 4122 UUID, lower case
        prefix, _, value = entry["fullUrl"].partition("urn:uuid:")
        assert prefix == "" and str(uuid.UUID(value)) == value, entry["fullUrl"]
    assert len({e["fullUrl"] for e in bundle["entry"]}) == len(bundle["entry"])
    failed = next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "notification-1")
    assert failed["status"] == "not-done" and failed["statusReason"] == {"text": "undelivered"}


def test_the_export_holds_what_the_patient_wrote_and_every_record_erasure_treats_as_theirs(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    with transaction(container.sessions) as session:
        old_id = upsert_patient(session, container.vault, details(OLD), now=NOW).id
        add_patient_records(container, session, old_id)
        keeper = upsert_patient(session, container.vault, details(NEW), now=NOW).id
        add_patient_records(container, session, keeper)
        reply = session.scalar(select(PatientReply.id).where(PatientReply.patient_id == keeper))
        session.add_all([
            Incident(kind="wrong_number", patient_id=keeper, reply_id=reply, channel="sms", status="open",
                     opened_at=NOW, deadline_at=NOW),
            Writeback(reply_id=reply, appointment_ref="Appointment/1", patient_id=keeper, action="cancel",
                      target="fhir", status="pending", next_attempt_at=NOW, created_at=NOW),
        ])
    with transaction(container.sessions) as session:
        merge_patients(session, container.vault, details(NEW), [OLD], now=NOW)

    with transaction(container.sessions) as session:
        exported = export_patient(session, container, keeper, actor="officer", now=NOW)

    assert exported["patient"]["merged_records"] == [old_id]
    assert [r["text"] for r in exported["replies"]] == ["non posso venire, sono in ospedale"] * 2
    assert [p["channel"] for p in exported["contact_preference"]] == ["email", "email"]
    assert len(exported["telegram_links"]) == 2 and all("digest" not in link for link in exported["telegram_links"])
    assert [i["kind"] for i in exported["incidents"]] == ["wrong_number"]
    assert [w["action"] for w in exported["writebacks"]] == ["cancel"]
    assert len(exported["messages_sent_in_sandbox"]) == 2
    container.engine.dispose()


def test_the_erasure_report_says_the_raw_messages_stay_until_the_retention_purge(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    with transaction(container.sessions) as session:
        patient_id = upsert_patient(session, container.vault, details(NEW), now=NOW).id
    with transaction(container.sessions) as session:
        report = erase_patient(session, container, patient_id, actor="officer", now=NOW)

    days = container.gate.policy.retention.inbound_raw_days
    raw = next(line for line in report.kept if line.startswith("HL7 v2 messages"))
    assert f"{days} days after receipt" in raw
    assert (NOW + timedelta(days=days)).date().isoformat() in raw
    container.engine.dispose()
