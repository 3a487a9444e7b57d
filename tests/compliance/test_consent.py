from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from adapter.db import transaction
from adapter.events import ConsentChanged, ConsentProvision, Identifier, Origin, PatientDetails
from compliance.consent import Statement, evaluate
from compliance.consent_store import (
    apply_consent_event, decide, load_records, new_patient, record_consent, records_for, withdraw,
)
from compliance.errors import ComplianceError
from compliance.purposes import load_policy

POLICY = load_policy()
T = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def s(purpose, channel, decision, minutes, **kw):
    return Statement(purpose=purpose, channel=channel, decision=decision,
                     recorded_at=T + timedelta(minutes=minutes), id=minutes, **kw)


STOP_SMS = s("*", "sms", "deny", 10, source="reply")
START_SMS = s("*", "sms", "permit", 20, source="reply")

CASES = [
    # (description, records, purpose, channel, allowed, winning record id)
    ("care reminder with no records rests on care", [], "care_reminder", "sms", True, None),
    ("marketing with no records needs consent", [], "marketing", "sms", False, None),
    ("a STOP on sms blocks care reminders on sms", [STOP_SMS], "care_reminder", "sms", False, 10),
    ("a STOP on sms leaves e-mail alone", [STOP_SMS], "care_reminder", "email", True, None),
    ("START after STOP lets care reminders through again", [STOP_SMS, START_SMS], "care_reminder", "sms", True, 20),
    ("a blanket permit is not specific consent for marketing", [s("*", "*", "permit", 1)], "marketing", "sms", False, None),
    ("START after STOP does not restore marketing consent",
     [s("marketing", "sms", "permit", 1), STOP_SMS, START_SMS], "marketing", "sms", False, 10),
    ("a specific marketing permit allows it", [s("marketing", "*", "permit", 1)], "marketing", "email", True, 1),
    ("a later STOP withdraws an earlier specific permit on that channel",
     [s("marketing", "sms", "permit", 1), STOP_SMS], "marketing", "sms", False, 10),
    ("a channel-specific permit beats a general deny of the purpose",
     [s("marketing", "*", "deny", 1), s("marketing", "sms", "permit", 2)], "marketing", "sms", True, 2),
    ("channel-specific beats purpose-specific when neither replaces the other",
     [STOP_SMS, s("care_reminder", "*", "permit", 30)], "care_reminder", "sms", False, 10),
    ("a newer general withdrawal replaces older specific permits",
     [s("survey", "email", "permit", 1), s("survey", "*", "deny", 2)], "survey", "email", False, 2),
    ("newest wins between two statements of the same scope",
     [s("survey", "sms", "deny", 1), s("survey", "sms", "permit", 2)], "survey", "sms", True, 2),
    ("an expired permit no longer applies",
     [s("marketing", "*", "permit", 1, period_end=T)], "marketing", "sms", False, None),
    ("a permit that has not started yet does not apply",
     [s("marketing", "*", "permit", 1, period_start=T + timedelta(days=1))], "marketing", "sms", False, None),
    ("an objection to everything stops care messages too", [s("*", "*", "deny", 1)], "follow_up", "email", False, 1),
    ("a report notice needs online-delivery consent", [], "report_notice", "sms", False, None),
    ("a FHIR set: a nested permit inside a general deny",
     [s("*", "*", "deny", 1, source_ref="Consent/1"), s("report_notice", "*", "permit", 1, source_ref="Consent/1")],
     "report_notice", "sms", True, 1),
    ("a newer set from the same Consent replaces the older set",
     [s("marketing", "*", "permit", 1, source_ref="Consent/1"), s("survey", "*", "permit", 5, source_ref="Consent/1")],
     "marketing", "sms", False, None),
    ("an inactive Consent leaves nothing in force",
     [s("marketing", "*", "permit", 1, source_ref="Consent/1"),
      s("*", "*", "deny", 5, source_ref="Consent/1", active=False)], "marketing", "sms", False, None),
    # Channel "*": at scheduling, before a channel is chosen.
    ("at scheduling a permit on one channel is enough",
     [s("report_notice", "email", "permit", 1)], "report_notice", "*", True, 1),
    ("at scheduling a deny on one channel does not block a permit on another",
     [s("marketing", "email", "permit", 1), s("marketing", "sms", "deny", 2)], "marketing", "*", True, 1),
    ("at scheduling a deny on every channel still blocks",
     [s("marketing", "email", "permit", 1), s("*", "*", "deny", 2)], "marketing", "*", False, 2),
    ("at scheduling a deny on one channel alone is no consent",
     [s("marketing", "sms", "deny", 1)], "marketing", "*", False, None),
    ("at scheduling a STOP on sms leaves care reminders to other channels",
     [STOP_SMS], "care_reminder", "*", True, None),
]


@pytest.mark.parametrize("description, records, purpose, channel, allowed, record_id", CASES,
                         ids=[c[0] for c in CASES])
def test_consent_evaluation_table(description, records, purpose, channel, allowed, record_id):
    decision = evaluate(records, purpose=purpose, channel=channel, at=T + timedelta(hours=1),
                        basis=POLICY.basis(purpose))
    assert (decision.allowed, decision.record_id) == (allowed, record_id), decision.reason
    assert decision.basis.startswith(POLICY.purposes[purpose].lawful_basis)
    assert decision.reason


def test_every_message_kind_has_a_purpose_and_a_lawful_basis():
    kinds = ["booking_confirmation", "reminder", "reschedule_notice", "cancellation_notice", "follow_up",
             "recall", "report_ready", "pre_visit_instructions", "payment_reminder", "contact_check"]
    POLICY.check_kinds(kinds)
    assert POLICY.basis_for_kind("report_ready").explicit_consent
    assert not POLICY.basis_for_kind("reminder").explicit_consent
    for name in ["marketing", "prevention_campaign", "survey", "review_request"]:
        assert POLICY.basis(name).explicit_consent and "6(1)(a)" in POLICY.basis(name).articles


def test_a_bad_purposes_file_names_the_field(tmp_path):
    bad = tmp_path / "purposes.yaml"
    from compliance.purposes import DEFAULT_PATH

    text = DEFAULT_PATH.read_text()
    bad.write_text(text.replace("payment_reminder: administrative", "payment_reminder: billing"))
    with pytest.raises(ComplianceError, match="payment_reminder"):
        load_policy(bad)
    bad.write_text(text.replace("lawful_basis: consent\n    articles: GDPR art. 6(1)(a) and 7\n    explicit_consent: true",
                                "lawful_basis: consent\n    articles: GDPR art. 6(1)(a) and 7\n    explicit_consent: false", 1))
    with pytest.raises(ComplianceError, match="purposes.survey"):
        load_policy(bad)


def consent_event(*provisions, active=True, ref="Consent/42"):
    patient = PatientDetails(key=Identifier("urn:oid:mrn", "123"))
    return ConsentChanged(origin=Origin("fhir", "https://ehr.example.org"), occurred_at=T, patient=patient,
                          consent_ref=ref, active=active, provisions=tuple(provisions))


def test_the_registry_keeps_history_and_decides_from_it(sessions):
    with transaction(sessions) as session:
        apply_consent_event(session, "p1", consent_event(ConsentProvision("permit", "marketing", "*")), at=T)
        assert decide(session, POLICY, patient_id="p1", kind="reminder", channel="sms", at=T).allowed
        withdraw(session, patient_id="p1", channel="sms", source="reply", at=T + timedelta(minutes=5))
        sms = decide(session, POLICY, patient_id="p1", kind="reminder", channel="sms", at=T + timedelta(hours=1))
        assert not sms.allowed and "reply" in sms.reason
        apply_consent_event(session, "p1", consent_event(active=False), at=T + timedelta(minutes=10))
        record_consent(session, patient_id="p1", purpose="survey", channel="email", decision="permit",
                       source="operator", at=T + timedelta(minutes=20), recorded_by="user:officer1")
    with transaction(sessions) as session:
        history = records_for(session, "p1")
        assert [(r.purpose, r.channel, r.decision, r.active) for r in history] == [
            ("marketing", "*", "permit", True), ("*", "sms", "deny", True), ("*", "*", "deny", False),
            ("survey", "email", "permit", True)]
        later = T + timedelta(hours=1)
        assert not decide(session, POLICY, patient_id="p1", kind="payment_reminder", channel="sms", at=later).allowed
        assert decide(session, POLICY, patient_id="p1", kind="contact_check", channel="email", at=later).allowed
        assert records_for(session, "other") == []


def test_many_patients_histories_are_read_at_once_and_read_the_same(sessions):
    from sqlalchemy import event

    with transaction(sessions) as session:
        for n, patient_id in enumerate(["p1", "p2", "p1"]):
            record_consent(session, patient_id=patient_id, purpose="marketing", channel="sms",
                           decision="permit" if n < 2 else "deny", source="operator", at=T + timedelta(minutes=n))
    with transaction(sessions) as session:
        one_by_one = {p: [(r.id, r.decision) for r in records_for(session, p)] for p in ("p1", "p2", "p3")}
    queries: list[str] = []

    def note(_conn, _cursor, statement, *_):
        queries.append(statement)

    with transaction(sessions) as session:
        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", note)
        try:
            load_records(session, ["p1", "p2", "p3", "p1"])
            at_once = {p: [(r.id, r.decision) for r in records_for(session, p)] for p in ("p1", "p2", "p3")}
        finally:
            event.remove(engine, "before_cursor_execute", note)
    assert at_once == one_by_one and at_once["p3"] == []
    assert len([q for q in queries if "consent_record" in q]) == 1  # one query for the three


def test_a_new_patient_is_decided_without_a_look_up_until_their_first_consent_is_recorded(sessions):
    with transaction(sessions) as session:
        new_patient(session, "p-new")
        assert records_for(session, "p-new") == []
        assert decide(session, POLICY, patient_id="p-new", kind="reminder", channel="sms", at=T).allowed
        withdraw(session, patient_id="p-new", channel="sms", source="reply", at=T)
        assert not decide(session, POLICY, patient_id="p-new", kind="reminder", channel="sms",
                          at=T + timedelta(minutes=1)).allowed


def test_a_consent_period_is_stored_and_honoured(sessions):
    with transaction(sessions) as session:
        apply_consent_event(session, "p2", consent_event(
            ConsentProvision("permit", "report_notice", "*", start=T, end=T + timedelta(days=30))), at=T)
        inside = decide(session, POLICY, patient_id="p2", kind="report_ready", channel="sms", at=T + timedelta(days=1))
        after = decide(session, POLICY, patient_id="p2", kind="report_ready", channel="sms", at=T + timedelta(days=31))
    assert inside.allowed and not after.allowed


@pytest.mark.parametrize("kw", [{"decision": "maybe"}, {"source": "fax"}, {"at": datetime(2025, 1, 1)}])
def test_a_malformed_consent_statement_is_refused(sessions, kw):
    args = dict(patient_id="p", purpose="*", channel="*", decision="permit", source="api", at=T) | kw
    with pytest.raises(ComplianceError), transaction(sessions) as session:
        record_consent(session, **args)


def test_consent_written_in_a_rolled_back_savepoint_is_not_decided_from_afterwards(sessions):
    """The session's copy of a history read inside a savepoint that is then undone (a
    batch of messages done again one by one) is read again, without what was undone."""
    with transaction(sessions) as session:
        assert decide(session, POLICY, patient_id="p2", kind="reminder", channel="sms", at=T).allowed
        with pytest.raises(RuntimeError), session.begin_nested():
            withdraw(session, patient_id="p2", channel="sms", source="reply", at=T)
            assert not decide(session, POLICY, patient_id="p2", kind="reminder", channel="sms", at=T).allowed
            raise RuntimeError("another message of the batch failed")
        assert records_for(session, "p2") == []
        assert decide(session, POLICY, patient_id="p2", kind="reminder", channel="sms", at=T).allowed
