"""Issue 7's must-shows through the public surfaces: a running adapter over real HTTP and
MLLP, the CLI, real SQLite and PostgreSQL databases, the sandbox channel."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import MetaData, delete, insert, select, update
from typer.testing import CliRunner

from adapter.db import transaction
from adapter.subject_rights import find_patient_id
from compliance.models import AuditEntry
from hl7.client import send_messages
from tests.core.test_end_to_end import FHIR, appointment, notifications, outbox_count, wait_for
from tests.harness import running_adapter, settings_for

GIVEN, FAMILY = "Ermenegilda", "Pazzaglini"
PHONE_NATIONAL, PHONE = "3471239876", "+393471239876"
EMAIL = "ermenegilda.pazzaglini@example.org"
FISCAL_CODE = "PZZRMN80A41H501U"


def rich_patient(pid: str) -> dict:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": "http://hl7.it/sid/codiceFiscale", "value": FISCAL_CODE,
                        "type": {"coding": [{"code": "NNITA"}]}}],
        "name": [{"given": [GIVEN], "family": FAMILY}],
        "telecom": [{"system": "phone", "use": "mobile", "value": PHONE},
                    {"system": "email", "value": EMAIL}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "it"}]}}],
    }


def siu_for_rich_patient(control_id: str, start: datetime) -> bytes:
    ts = start.strftime("%Y%m%d%H%M%S+0000")
    return ("\r".join([
        f"MSH|^~\\&|CUP|OSP_TEST|ADAPTER|NOTIFY|20260101000000||SIU^S12^SIU_S12|{control_id}|P|2.5||||||UNICODE UTF-8",
        f"SCH|PL9^CUP|FL9^OSP_TEST|||||VIS^Visita||30|min|^^^{ts}|||||||||||||Booked",
        f"PID|1||0099887^^^OSP_TEST^MR~{FISCAL_CODE}^^^MEF^NNITA||{FAMILY}^{GIVEN}||19800101|F|||||"
        f"^PRN^CP^^39^347^1239876~^NET^Internet^{EMAIL}||it",
        f"AIS|1||CARD01^Visita^L|{ts}|0|min|30|min",
    ]) + "\r").encode()


def internal_id(adapter, fhir_id: str) -> str:
    with transaction(adapter.container.sessions) as session:
        found = find_patient_id(session, adapter.container, identifier=fhir_id)
    assert found, f"no patient for FHIR id {fhir_id}"
    return found


def test_a_consent_that_denies_the_channel_suppresses_with_the_reason_and_names_the_record(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        assert ehr.put("/fhir/R4/Patient/p1", json=rich_patient("p1"), headers=FHIR).status_code in (200, 201)
        adapter.fhir_processed()
        patient = internal_id(adapter, "p1")
        given = officer.post("/api/consents", json={"patient": patient, "purpose": "care_reminder",
                                                    "channel": "sandbox", "decision": "deny"})
        assert given.status_code == 201, given.text
        record = given.json()["id"]

        start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        assert ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", start), headers=FHIR).status_code in (200, 201)
        confirmation = wait_for(lambda: [i for i in notifications(officer, patient=patient)
                                         if i["kind"] == "booking_confirmation" and i["status"] == "suppressed"])[0]

        assert f"consent record {record}" in confirmation["reason"]
        assert outbox_count(adapter) == 0
        why = officer.get(f"/api/notifications/{confirmation['id']}/why").json()
        assert why["decision"]["at_send"]["consent"]["consent_record"] == record
        assert why["decision"]["at_send"]["consent"]["allowed"] is False
        history = officer.get("/api/consents", params={"patient": patient}).json()["items"]
        assert [(h["id"], h["decision"], h["channel"]) for h in history] == [(record, "deny", "sandbox")]


def test_withdrawing_consent_from_the_api_cancels_what_is_pending(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        ehr.put("/fhir/R4/Patient/p2", json=rich_patient("p2"), headers=FHIR).raise_for_status()
        adapter.fhir_processed()
        patient = internal_id(adapter, "p2")
        start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        ehr.put("/fhir/R4/Appointment/a2", json=appointment("a2", "p2", start), headers=FHIR).raise_for_status()
        wait_for(lambda: [i for i in notifications(officer, patient=patient) if i["kind"] == "reminder"])

        objected = officer.post(f"/api/patients/{patient}/objection", json={"purposes": ["care_reminder"]})
        assert objected.status_code == 201, objected.text

        reminders = [i for i in notifications(officer, patient=patient) if i["kind"] == "reminder"]
        assert reminders and all(i["status"] == "cancelled" and "withdrawn" in i["reason"] for i in reminders)
        assert officer.post("/api/consents", json={"patient": patient, "purpose": "no_such_purpose",
                                                   "decision": "deny"}).status_code == 422


def plaintexts() -> dict[str, str]:
    return {"given name": GIVEN, "family name": FAMILY, "phone": PHONE_NATIONAL, "e-mail": EMAIL,
            "fiscal code": FISCAL_CODE}


def test_the_raw_database_holds_no_plaintext_name_phone_email_fiscal_code_or_message_body(tmp_path, database_url):
    with running_adapter(settings_for(tmp_path, database_url)) as adapter:
        ehr = adapter.client("ehr")
        start = (datetime.now(UTC) + timedelta(days=4)).replace(second=0, microsecond=0)
        ehr.put("/fhir/R4/Patient/p3", json=rich_patient("p3"), headers=FHIR).raise_for_status()
        ehr.put("/fhir/R4/Appointment/a3", json=appointment("a3", "p3", start), headers=FHIR).raise_for_status()
        asyncio.run(send_messages([siu_for_rich_patient("RAW1", start + timedelta(days=1))], "127.0.0.1", adapter.mllp_port))
        wait_for(lambda: outbox_count(adapter) >= 2)

        from adapter.models import OutboxMessage

        needles = plaintexts()
        with transaction(adapter.container.sessions) as session:
            for n, row in enumerate(session.scalars(select(OutboxMessage))):
                body = adapter.container.vault.decrypt(session, row.body_enc).decode()
                needles[f"message body {n}"] = body
                assert GIVEN in body  # the body is personal: it greets the patient
        needles["HL7 segment"] = f"{FAMILY}^{GIVEN}"

        found = []
        with adapter.container.engine.connect() as conn:
            metadata = MetaData()
            metadata.reflect(bind=conn)
            assert {"patient", "contact", "notification", "outbox_message", "inbound_message", "fhir_resource",
                    "audit_entry", "consent_record"} <= set(metadata.tables)
            for table in metadata.sorted_tables:
                for row in conn.execute(select(table)):
                    for column, value in row._mapping.items():
                        found += [f"{what} in {table.name}.{column}" for what, needle in needles.items()
                                  if contains(value, needle)]
        assert not found
        if database_url.startswith("sqlite"):
            path = Path(database_url.removeprefix("sqlite:///"))
            for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                if file.exists():
                    raw = file.read_bytes()
                    found += [f"{what} in {file.name}" for what, needle in needles.items()
                              if needle.encode() in raw or needle.lower().encode() in raw.lower()]
            assert not found


def contains(value: object, needle: str) -> bool:
    if value is None:
        return False
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return needle.encode() in data or needle.lower().encode() in data.lower()
    return needle.lower() in str(value).lower()


# -- the audit log through the CLI and the API ---------------------------------------------


def cli(settings, *args: str) -> tuple[int, str]:
    from adapter.cli import app
    from adapter.settings import get_settings

    env = {"ADAPTER_ENVIRONMENT": "test", "ADAPTER_DATABASE_URL": settings.database_url,
           "ADAPTER_VAR_DIR": str(settings.var_dir), "ADAPTER_MASTER_KEY_FILE": str(settings.master_key_file),
           "ADAPTER_AUDIT_SIGNING_KEY_FILE": str(settings.audit_signing_key_file)}
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, list(args), env=env)
    finally:
        get_settings.cache_clear()
    return result.exit_code, result.output


def tamper_modify(session) -> tuple[str, int]:
    session.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(reason="nothing to see"))
    return "modified", 3


def tamper_delete(session) -> tuple[str, int]:
    session.execute(delete(AuditEntry).where(AuditEntry.seq == 4))
    return "missing", 4


def tamper_insert(session) -> tuple[str, int]:
    last = session.scalar(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1))
    for seq in range(last, 4, -1):
        session.execute(update(AuditEntry).where(AuditEntry.seq == seq).values(seq=seq + 1))
    copy = session.execute(select(AuditEntry.__table__).where(AuditEntry.seq == 4)).one()._asdict()
    session.execute(insert(AuditEntry).values({**copy, "id": None, "seq": 5, "reason": "forged"}
                                              if "id" in copy else {**copy, "seq": 5, "reason": "forged"}))
    return "inserted", 5


def tamper_reorder(session) -> tuple[str, int]:
    session.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(seq=-1))
    session.execute(update(AuditEntry).where(AuditEntry.seq == 6).values(seq=2))
    session.execute(update(AuditEntry).where(AuditEntry.seq == -1).values(seq=6))
    return "reordered", 2


@pytest.mark.parametrize("tamper", [tamper_modify, tamper_delete, tamper_insert, tamper_reorder],
                         ids=["modified", "deleted", "inserted", "reordered"])
def test_audit_verify_on_the_cli_and_the_api_finds_each_kind_of_tampering_and_says_where(tmp_path, tamper):
    settings = settings_for(tmp_path)
    with running_adapter(settings) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        ehr.put("/fhir/R4/Patient/p4", json=rich_patient("p4"), headers=FHIR).raise_for_status()
        start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        ehr.put("/fhir/R4/Appointment/a4", json=appointment("a4", "p4", start), headers=FHIR).raise_for_status()
        wait_for(lambda: outbox_count(adapter) >= 1)
        assert cli(settings, "audit", "sign")[0] == 0
        clean = officer.get("/api/audit/verify").json()
        assert clean["ok"] and clean["entries"] >= 7, clean
        assert cli(settings, "audit", "verify")[0] == 0

        with transaction(adapter.container.sessions) as session:
            kind, where = tamper(session)

        report = officer.get("/api/audit/verify").json()
        assert not report["ok"]
        assert {"kind": kind, "seq": where} in [{"kind": p["kind"], "seq": p["seq"]} for p in report["problems"]], report
        assert report["first_bad_seq"] == where  # the entry itself, not the start of a subtree
        code, output = cli(settings, "audit", "verify")
        assert code == 1
        assert "NOT intact" in output and f"{kind} at entry {where}" in output, output


def test_audit_entries_proofs_and_tree_heads_are_served_and_reading_is_audited(tmp_path):
    settings = settings_for(tmp_path)
    with running_adapter(settings) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        ehr.put("/fhir/R4/Patient/p5", json=rich_patient("p5"), headers=FHIR).raise_for_status()
        adapter.fhir_processed()
        assert cli(settings, "audit", "sign")[0] == 0
        first = officer.get("/api/audit", params={"limit": 1}).json()
        assert [e["seq"] for e in first["items"]] == [0] and first["total"] >= 1
        second = officer.get("/api/audit", params={"limit": 1, "offset": first["total"]}).json()
        assert [e["action"] for e in second["items"]] == ["audit_read"]
        entries = officer.get("/api/audit", params={"limit": 1000}).json()["items"]
        assert entries[-1]["action"] == "audit_read"

        heads = officer.get("/api/audit/tree-heads").json()
        assert "BEGIN PUBLIC KEY" in heads["public_key"] and heads["heads"]
        size = heads["heads"][-1]["tree_size"]
        inclusion = officer.get("/api/audit/proof/inclusion", params={"seq": 0, "tree_size": size}).json()
        assert inclusion["verified"] and inclusion["root_hash"] == heads["heads"][-1]["root_hash"]
        total = len(officer.get("/api/audit", params={"limit": 1000}).json()["items"])
        consistency = officer.get("/api/audit/proof/consistency", params={"old": size, "new": total}).json()
        assert consistency["verified"] and consistency["old_root"] == heads["heads"][-1]["root_hash"]
        assert officer.get("/api/audit/proof/inclusion", params={"seq": 0, "tree_size": 10**6}).status_code == 404

        code, output = cli(settings, "audit", "export", "--since", "2000-01-01", "--format", "fhir")
        lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        assert code == 0 and lines and all(doc["resourceType"] == "AuditEvent" for doc in lines)
        record = officer.get("/api/processing-record").json()
        assert {a["purpose"] for a in record["activities"]} >= {"care_reminder", "report_notice", "marketing"}
        assert record["retention"]["inbound_raw_days"] > 0


def test_export_then_erasure_leaves_nothing_readable_and_a_clean_audit_verify(tmp_path, database_url):
    settings = settings_for(tmp_path, database_url)
    with running_adapter(settings) as adapter:
        ehr, officer, admin = adapter.client("ehr"), adapter.client("officer"), adapter.client("admin")
        ehr.put("/fhir/R4/Patient/p6", json=rich_patient("p6"), headers=FHIR).raise_for_status()
        start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        ehr.put("/fhir/R4/Appointment/a6", json=appointment("a6", "p6", start), headers=FHIR).raise_for_status()
        wait_for(lambda: outbox_count(adapter) >= 1)
        patient = internal_id(adapter, "p6")

        exported = officer.get(f"/api/patients/{patient}/export").json()
        assert exported["patient"]["given_name"] == GIVEN
        assert {c["address"] for c in exported["contacts"]} == {PHONE, EMAIL}
        assert exported["notifications"] and exported["messages_sent_in_sandbox"]
        assert any(r.get("resourceType") == "Patient" for r in exported["fhir_resources"])
        bundle = officer.get(f"/api/patients/{patient}/export", params={"format": "fhir"}).json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
        kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
        assert {"Patient", "Appointment", "Communication"} <= kinds

        assert officer.delete(f"/api/patients/{patient}").status_code == 403
        erased = admin.delete(f"/api/patients/{patient}")
        assert erased.status_code == 200, erased.text
        assert erased.json()["keys_destroyed"] >= 1

        assert officer.get(f"/api/patients/{patient}/export").status_code == 404
        assert notifications(officer, patient=patient) == []
        report = officer.get("/api/audit/verify").json()
        assert report["ok"], report
        actions = [e["action"] for e in officer.get("/api/audit", params={"patient": patient, "limit": 1000}).json()["items"]]
        assert "exported" in actions and actions[-1] == "erased"
        assert cli(settings, "audit", "sign")[0] == 0
        assert cli(settings, "audit", "verify")[0] == 0


def sandbox_reply(adapter, text: str, message_id: str) -> None:
    """The patient's reply, as the sandbox provider posts it (signed) to the running adapter."""
    from channels.sandbox import LOCAL_DEVELOPMENT_SECRET, SIGNATURE_HEADER, sign

    body = json.dumps({"messages": [{"message_id": message_id, "from": PHONE, "text": text}]}).encode()
    with adapter.client("ehr") as http:
        response = http.post("/webhooks/sandbox/inbound", content=body, headers={
            SIGNATURE_HEADER: sign(body, LOCAL_DEVELOPMENT_SECRET), "Content-Type": "application/json"})
    assert response.status_code == 200, response.text


def test_the_fhir_bundle_export_holds_what_the_json_export_holds_the_patient_s_replies_included(tmp_path):
    import base64

    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        ehr.put("/fhir/R4/Patient/p7", json=rich_patient("p7"), headers=FHIR).raise_for_status()
        start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        ehr.put("/fhir/R4/Appointment/a7", json=appointment("a7", "p7", start), headers=FHIR).raise_for_status()
        wait_for(lambda: outbox_count(adapter) >= 1)
        sandbox_reply(adapter, "non posso venire, sono in ospedale", "reply-7")
        patient = internal_id(adapter, "p7")
        wait_for(lambda: officer.get(f"/api/patients/{patient}/export").json()["replies"])

        exported = officer.get(f"/api/patients/{patient}/export").json()
        bundle = officer.get(f"/api/patients/{patient}/export", params={"format": "fhir"}).json()

    resources = [e["resource"] for e in bundle["entry"]]
    replies = [r for r in resources if r["resourceType"] == "Communication" and r.get("sender")]
    assert [r["payload"][0]["contentString"] for r in replies] == ["non posso venire, sono in ospedale"]
    assert replies[0]["sender"] == {"reference": f"Patient/{patient}"} and replies[0]["received"]
    sent = [r for r in resources if r["resourceType"] == "Communication" and r.get("recipient")]
    assert {r["payload"][0]["contentString"] for r in sent} == {m["body"] for m in exported["messages_sent_in_sandbox"]}
    # What has no FHIR resource of its own (identifiers, audit entries, incidents, write-backs,
    # a table added later) travels as the JSON export itself, attached.
    document = next(r for r in resources if r["resourceType"] == "DocumentReference")
    attached = json.loads(base64.b64decode(document["content"][0]["attachment"]["data"]))
    assert set(attached) == set(exported)
    assert attached["replies"] == exported["replies"] and attached["identifiers"] == exported["identifiers"]


def test_audit_entries_since_a_date_or_a_time_without_offset_are_read_as_utc_as_on_the_cli(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        ehr.put("/fhir/R4/Patient/p9", json=rich_patient("p9"), headers=FHIR).raise_for_status()
        adapter.fhir_processed()
        today = datetime.now(UTC).date()
        tomorrow = today + timedelta(days=1)
        for since in (today.isoformat(), f"{today.isoformat()}T00:00:00"):
            answer = officer.get("/api/audit", params={"since": since})
            assert answer.status_code == 200, answer.text
            assert any(e["action"] == "received" for e in answer.json()["items"])
        for since in (tomorrow.isoformat(), f"{tomorrow.isoformat()}T00:00:00"):
            answer = officer.get("/api/audit", params={"since": since})
            assert answer.status_code == 200, answer.text
            assert answer.json()["items"] == []
        assert officer.get("/api/audit", params={"since": "yesterday"}).status_code == 422


def test_audit_entries_total_counts_what_the_filters_select_so_pages_end_where_the_entries_do(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        for pid in ("p10", "p11"):
            ehr.put(f"/fhir/R4/Patient/{pid}", json=rich_patient(pid) | {"identifier": []}, headers=FHIR).raise_for_status()
        adapter.fhir_processed()
        patient = internal_id(adapter, "p10")
        whole = officer.get("/api/audit", params={"limit": 1000}).json()
        assert whole["total"] == len(whole["items"]) and whole["items"][-1]["seq"] == whole["total"] - 1

        theirs = officer.get("/api/audit", params={"patient": patient, "limit": 1000}).json()
        assert theirs["items"] and all(e["subject"] == f"patient:{patient}" for e in theirs["items"])
        assert theirs["total"] == len(theirs["items"]) < whole["total"]
        page = officer.get("/api/audit", params={"patient": patient, "limit": 1}).json()
        assert page["total"] == theirs["total"] + 1  # reading their entries is audited under their pseudonym

        later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        assert officer.get("/api/audit", params={"since": later}).json() == {"total": 0, "items": []}


def test_a_consent_period_without_offset_or_ending_before_it_starts_is_refused_in_the_caller_s_terms(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        ehr.put("/fhir/R4/Patient/p12", json=rich_patient("p12"), headers=FHIR).raise_for_status()
        adapter.fhir_processed()
        patient = internal_id(adapter, "p12")
        statement = {"patient": patient, "purpose": "report_notice", "channel": "sms", "decision": "permit"}
        for period, field in (({"start": "2026-11-27T10:00:00"}, "start"), ({"end": "2026-12-27"}, "end")):
            answer = officer.post("/api/consents", json=statement | period)
            assert answer.status_code == 422, answer.text
            assert field in answer.text and "offset" in answer.text
        backwards = officer.post("/api/consents", json=statement | {"start": "2026-11-27T10:00:00+01:00",
                                                                   "end": "2026-11-27T09:00:00+01:00"})
        assert backwards.status_code == 422, backwards.text
        assert "ends before it starts" in backwards.text
        assert officer.get("/api/consents", params={"patient": patient}).json()["items"] == []
        given = officer.post("/api/consents", json=statement | {"start": "2026-11-27T10:00:00+01:00",
                                                               "end": "2027-11-27T10:00:00Z"})
        assert given.status_code == 201, given.text


def test_gdpr_export_and_erase_on_the_cli_find_the_patient_by_hospital_identifier_or_phone(tmp_path):
    settings = settings_for(tmp_path)
    with running_adapter(settings) as adapter:
        adapter.client("ehr").put("/fhir/R4/Patient/p13", json=rich_patient("p13"), headers=FHIR).raise_for_status()
        adapter.fhir_processed()
        patient = internal_id(adapter, "p13")
        fiscal_code = f"http://hl7.it/sid/codiceFiscale|{FISCAL_CODE}"

        for by, value in (("identifier", fiscal_code), ("phone", PHONE_NATIONAL), ("id", patient)):
            code, output = cli(settings, "gdpr", "export", value, "--by", by)
            assert code == 0, output
            assert json.loads(output)["patient"]["id"] == patient

        code, output = cli(settings, "gdpr", "export", "http://hl7.it/sid/codiceFiscale|XXXXXX00A00A000X",
                           "--by", "identifier")
        assert code == 1 and "no patient with this identifier" in output, output
        code, output = cli(settings, "gdpr", "export", "3470000000", "--by", "phone")
        assert code == 1 and "no patient with this phone number" in output and "3470000000" not in output, output
        assert cli(settings, "gdpr", "export", patient, "--by", "name")[0] == 2

        code, output = cli(settings, "gdpr", "erase", fiscal_code, "--by", "identifier", "--yes")
        assert code == 0, output
        assert f"erased {patient}" in output
        assert cli(settings, "gdpr", "export", patient)[0] == 1


def test_the_consent_history_of_a_patient_not_held_is_a_404_not_an_empty_history(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr, officer, admin = adapter.client("ehr"), adapter.client("officer"), adapter.client("admin")
        ehr.put("/fhir/R4/Patient/p14", json=rich_patient("p14"), headers=FHIR).raise_for_status()
        adapter.fhir_processed()
        patient = internal_id(adapter, "p14")
        assert officer.get("/api/consents", params={"patient": patient}).json() == {"patient": patient, "items": []}

        unknown = officer.get("/api/consents", params={"patient": "0000-not-a-patient"})
        assert unknown.status_code == 404, unknown.text
        assert "no patient" in unknown.json()["detail"]
        admin.delete(f"/api/patients/{patient}").raise_for_status()
        assert officer.get("/api/consents", params={"patient": patient}).status_code == 404


def test_gdpr_export_refuses_a_format_it_does_not_write_and_exports_nothing(tmp_path):
    settings = settings_for(tmp_path)
    with running_adapter(settings) as adapter:
        adapter.client("ehr").put("/fhir/R4/Patient/p15", json=rich_patient("p15"), headers=FHIR).raise_for_status()
        adapter.fhir_processed()
        patient = internal_id(adapter, "p15")
        code, output = cli(settings, "gdpr", "export", patient, "--format", "xml")
        assert code == 2, output
        assert "--format must be json or fhir" in output and GIVEN not in output
        actions = [e["action"] for e in adapter.client("officer").get(
            "/api/audit", params={"patient": patient, "limit": 1000}).json()["items"]]
        assert "exported" not in actions
        code, output = cli(settings, "gdpr", "export", patient, "--format", "fhir")
        assert code == 0 and json.loads(output)["resourceType"] == "Bundle"


def test_a_since_written_as_a_bare_number_is_refused_not_read_as_a_unix_time(tmp_path):
    """20261128 (a date as HL7 writes it) was read as 23 August 1970: the whole log."""
    settings = settings_for(tmp_path)
    with running_adapter(settings) as adapter:
        officer = adapter.client("officer")
        officer.get("/api/audit").raise_for_status()
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y%m%d")
        answer = officer.get("/api/audit", params={"since": tomorrow})
        assert answer.status_code == 422, answer.text
        assert "not a number" in answer.text
        code, output = cli(settings, "audit", "export", "--since", tomorrow)
        assert code == 2 and "not a number" in output, output
        assert cli(settings, "audit", "export", "--since", "2026-01-01T00:00:00+01:00")[0] == 0
