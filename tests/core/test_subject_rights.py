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


def test_the_erasure_report_says_raw_messages_it_cannot_attribute_stay_until_the_retention_purge(tmp_path):
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


def test_erasure_deletes_the_raw_hl7_messages_and_callbacks_that_held_the_patient_and_keeps_their_rows(
        tmp_path, database_url):
    """A booking over MLLP, its confirmation's delivery reported and the patient's reply,
    both by signed callbacks over HTTP; then erasure. On SQLite nothing of the patient is
    left in the database files, not even sealed: their bytes are searched as they are,
    decrypting nothing. A retransmission is still recognised, and replay says what happened."""
    import asyncio
    from pathlib import Path

    import httpx

    from adapter.models import InboundMessage, InboundRaw, Notification
    from adapter.reply_models import WebhookEvent
    from channels.sandbox import LOCAL_DEVELOPMENT_SECRET, SIGNATURE_HEADER, sign
    from hl7.client import send_messages
    from tests.core.test_compliance_surfaces import FAMILY, GIVEN, PHONE, cli, siu_for_rich_patient
    from tests.core.test_end_to_end import wait_for
    from tests.harness import running_adapter

    settings = settings_for(tmp_path, database_url)
    booking = siu_for_rich_patient("ERASE1", datetime.now(UTC) + timedelta(days=3))
    with running_adapter(settings) as adapter:
        sessions = adapter.container.sessions

        def sent_notice() -> str | None:
            with transaction(sessions) as session:
                return session.scalar(select(Notification.provider_message_id)
                                      .where(Notification.provider_message_id.is_not(None)))

        def callback(kind: str, payload: dict) -> None:
            import json

            body = json.dumps(payload).encode()
            answer = httpx.post(f"{adapter.base_url}/webhooks/sandbox/{kind}", content=body,
                                headers={SIGNATURE_HEADER: sign(body, LOCAL_DEVELOPMENT_SECRET),
                                         "Content-Type": "application/json"})
            assert answer.json()["status"] == "processed", answer.text

        [ack] = asyncio.run(send_messages([booking], "127.0.0.1", adapter.mllp_port))
        assert ack.code.value == "AA"
        provider_id = wait_for(sent_notice)
        callback("status", {"statuses": [{"message_id": provider_id, "status": "delivered"}]})
        callback("inbound", {"messages": [{"message_id": "reply-1", "from": PHONE, "text": "grazie, ci sarò"}]})
        with transaction(sessions) as session:
            patient_id = session.scalar(select(Patient.id))
            sealed = [*session.scalars(select(InboundRaw.raw_enc)), *session.scalars(select(WebhookEvent.request_enc))]
        assert len(sealed) == 3

        erased = adapter.client("admin").delete(f"/api/patients/{patient_id}")
        assert erased.status_code == 200, erased.text
        report = erased.json()
        assert report["rows_deleted"]["inbound_raw"] == 1 and report["rows_deleted"]["webhook_event_request"] == 2

        with transaction(sessions) as session:
            message = session.scalar(select(InboundMessage))
            assert (message.control_id, message.status) == ("ERASE1", "processed")
            assert message.raw_erased_at is not None
            assert session.scalar(select(func.count()).select_from(InboundRaw)) == 0
            assert set(session.scalars(select(WebhookEvent.request_enc))) == {None}
            assert container_audit_ok(adapter.container, session)
        files = list(Path(tmp_path).glob("adapter.db*"))
        assert bool(files) == database_url.startswith("sqlite")
        for secret in [FAMILY, GIVEN, PHONE, PHONE.removeprefix("+39")] + [blob[-32:] for blob in sealed]:
            # The sealed copies are gone too, not just unreadable (a tag is the last 16 bytes).
            secret = secret if isinstance(secret, bytes) else secret.encode()
            assert [path.name for path in files if secret in path.read_bytes()] == [], secret

        [again] = asyncio.run(send_messages([booking], "127.0.0.1", adapter.mllp_port))
        assert again.code.value == "AA"
        with transaction(sessions) as session:
            assert session.scalar(select(InboundMessage.duplicates)) == 1
            assert session.scalar(select(func.count()).select_from(Patient)) == 0

    code, output = cli(settings, "hl7", "replay", str(message.id))
    assert code == 1 and "erased" in output and "retention" not in output


def container_audit_ok(container, session) -> bool:
    return container.audit.verify(session).ok


def test_a_patient_key_another_process_has_cached_stops_working_once_its_erasure_commits(tmp_path, database_url):
    """Process A (here) reads the patient's contact, so holds their key in memory; process
    B (`python -m adapter gdpr erase`) erases them. A's next transaction can neither open a
    copy of the contact it kept (as a backup would) nor seal anything new with that key."""
    import os
    import subprocess
    import sys

    from adapter.models import Contact
    from compliance.errors import KeyDestroyed
    from tests.harness import adapter_env_vars

    settings = settings_for(tmp_path, database_url)
    container = migrated_container(settings)
    with transaction(container.sessions) as session:
        patient_id = upsert_patient(session, container.vault, details(NEW), now=NOW).id
        sealed = container.vault.encrypt_str(session, f"patient:{patient_id}", "+393331234567")
        session.add(Contact(patient_id=patient_id, channel="sms", address_enc=sealed, address_index="i", updated_at=NOW))
    with transaction(container.sessions) as session:
        copy = session.scalar(select(Contact.address_enc))
        assert container.vault.decrypt_str(session, copy) == "+393331234567"  # the key is now cached in A

    erased = subprocess.run([sys.executable, "-m", "adapter", "gdpr", "erase", patient_id, "--yes"],
                            env={**os.environ, **adapter_env_vars(tmp_path, database_url)},
                            capture_output=True, text=True, timeout=120)
    assert erased.returncode == 0, erased.stderr

    with transaction(container.sessions) as session:
        with pytest.raises(KeyDestroyed):
            container.vault.decrypt_str(session, copy)
        with pytest.raises(KeyDestroyed):
            container.vault.encrypt_str(session, f"patient:{patient_id}", "new data for an erased patient")
        assert container.vault.decrypt(session, container.vault.encrypt(session, "system", b"raw")) == b"raw"
    container.engine.dispose()
