from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from adapter.compliance_gate import SYSTEM_ACTOR
from adapter.db import transaction
from adapter.housekeeping import HOUSEKEEPER
from compliance.audit import AuditLog, AuditRecord
from compliance.audit_export import EVENT_TYPES, as_audit_event, export
from compliance.purposes import load_policy
from compliance.records import record_of_processing, retention_cutoffs
from compliance.signing import AuditSigner

from .conftest import T0

POLICY = load_policy()


def test_the_record_of_processing_lists_every_purpose_basis_recipient_and_retention():
    record = record_of_processing(POLICY, channels=["sms", "email"])
    md = record.to_markdown()
    for purpose in POLICY.purposes:
        assert f"| {purpose} |" in md
    assert "GDPR art. 6(1)(a)" in md and "report_ready" in md
    assert set(record.recipients) == {"sms", "email"}
    data = json.loads(record.to_json())
    assert data["retention"]["inbound_raw_days"] == POLICY.retention.inbound_raw_days


def test_retention_cutoffs_follow_the_configured_days():
    cut = retention_cutoffs(POLICY, T0)
    assert T0 - cut.inbound_raw_before == timedelta(days=POLICY.retention.inbound_raw_days)
    assert T0 - cut.sent_body_before == timedelta(days=POLICY.retention.sent_body_days)


def test_every_action_exports_as_a_valid_fhir_audit_event_and_as_jsonl(sessions):
    log = AuditLog(sessions, AuditSigner.generate())
    with transaction(sessions) as session:
        for i, action in enumerate(EVENT_TYPES):
            log.append(session, action=action, actor="token:1:officer" if i % 2 else SYSTEM_ACTOR,
                       subject_pseudonym="patient:3f2a" if i % 3 else "", reason="why" if i % 2 else "",
                       details={"n": i}, at=T0 + timedelta(seconds=i),
                       outcome="minor_failure" if action == "auth_failed" else "success")
    with transaction(sessions) as session:
        lines = list(export(log, session, T0 + timedelta(seconds=2), "fhir"))
        jsonl = [json.loads(x) for x in export(log, session, None, "jsonl")]
    assert len(lines) == len(EVENT_TYPES) - 2 and len(jsonl) == len(EVENT_TYPES)
    for line in lines:
        event = AuditEvent.model_validate_json(line)
        assert event.action in {"C", "R", "U", "D", "E"}
    failed = next(json.loads(x) for x in lines if '"auth_failed"' in x)
    assert failed["outcome"] == "4" and failed["type"]["code"] == "110114"
    assert jsonl[0]["seq"] == 0 and len(jsonl[0]["leaf_hash"]) == 64
    assert all("patient:" in (e["subject"] or "patient:") for e in jsonl)


@pytest.mark.parametrize("actor, requestor", [
    (SYSTEM_ACTOR, False), (HOUSEKEEPER, False), ("token:7:officer", True), ("cli", True),
    ("adapterish", True),
])
def test_an_audit_event_names_a_requestor_only_when_a_person_asked(actor, requestor):
    record = AuditRecord(0, T0, "sent", "success", actor, "patient:3f2a", "sent by sms", {}, bytes(32))
    assert as_audit_event(record)["agent"][0]["requestor"] is requestor
