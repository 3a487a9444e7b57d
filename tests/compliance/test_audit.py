from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from adapter.db import transaction
from compliance import merkle
from compliance.audit import AuditDraft, AuditLog, InclusionProof
from compliance.errors import AuditError, AuditIntegrityError, PersonalDataInAudit
from compliance.models import AuditEntry, AuditNode, AuditTreeHead
from compliance.signing import AuditSigner, load_public_key

from .conftest import T0

ACTIONS = ["received", "scheduled", "suppressed", "sent", "delivered", "replied", "consent_changed",
           "exported", "erased", "audit_read", "key_rotated", "auth_failed"]


@pytest.fixture
def signer() -> AuditSigner:
    return AuditSigner.generate()


@pytest.fixture
def log(sessions: sessionmaker[Session], signer: AuditSigner) -> AuditLog:
    return AuditLog(sessions, signer)


def fill(log: AuditLog, sessions, n: int, *, sign_every: int = 0) -> None:
    with transaction(sessions) as session:
        for i in range(n):
            log.append(session, action=ACTIONS[i % len(ACTIONS)], actor="system:scheduler",
                       subject_pseudonym=f"patient:p{i % 7}", reason=f"rule r{i % 3}",
                       details={"notification": i, "channel": "sms"}, at=T0 + timedelta(minutes=i))
            if sign_every and (i + 1) % sign_every == 0:
                log.sign_tree_head(session, T0 + timedelta(minutes=i))


def check(log: AuditLog, sessions):
    with transaction(sessions) as session:
        return log.verify(session)


def tamper(sessions, statement) -> None:
    with transaction(sessions) as session:
        session.execute(statement)


def test_an_untouched_log_with_signed_heads_verifies(log, sessions):
    fill(log, sessions, 40, sign_every=10)
    report = check(log, sessions)
    assert report.ok, report.problems
    assert (report.entries, report.heads_checked, report.signed_size, report.unsigned_tail) == (40, 4, 40, 0)


def test_the_stored_root_equals_rfc6962_mth_of_the_entries(log, sessions):
    fill(log, sessions, 13)
    with transaction(sessions) as session:
        leaves = [r.leaf_hash for r in log.entries(session)]
        assert log.root(session, 13) == merkle.root(leaves)
        assert log.root(session, 5) == merkle.root(leaves[:5])


def test_a_modified_field_is_found_at_its_sequence_number(log, sessions):
    fill(log, sessions, 20, sign_every=10)
    tamper(sessions, update(AuditEntry).where(AuditEntry.seq == 7).values(reason="nothing to see"))
    report = check(log, sessions)
    assert not report.ok
    assert report.first_bad_seq == 7
    assert report.problems[0].kind == "modified"


def test_a_modified_entry_with_its_hash_recomputed_is_found_at_its_sequence_number(log, sessions):
    fill(log, sessions, 20)
    with transaction(sessions) as session:
        row = session.get(AuditEntry, 12)
        row.details = json.dumps({"notification": 999, "channel": "sms"}, sort_keys=True, separators=(",", ":"))
        from compliance.audit import entry_bytes
        row.leaf_hash = merkle.leaf_hash(entry_bytes(row))
    report = check(log, sessions)
    assert report.first_bad_seq == 12
    assert report.problems[0].kind == "rewritten"


def test_a_deleted_row_is_found_where_the_gap_is(log, sessions):
    fill(log, sessions, 20, sign_every=20)
    tamper(sessions, delete(AuditEntry).where(AuditEntry.seq == 5))
    report = check(log, sessions)
    assert report.first_bad_seq == 5
    assert report.problems[0].kind == "missing"


def test_a_deleted_row_with_later_rows_renumbered_is_found_where_it_was(log, sessions):
    fill(log, sessions, 12)
    tamper(sessions, delete(AuditEntry).where(AuditEntry.seq == 4))
    with transaction(sessions) as session:
        for seq in range(5, 12):
            session.execute(update(AuditEntry).where(AuditEntry.seq == seq).values(seq=seq - 1))
    report = check(log, sessions)
    assert (report.problems[0].kind, report.first_bad_seq) == ("deleted", 4)


def test_an_inserted_row_with_later_rows_renumbered_is_found_where_it_was_put(log, sessions):
    fill(log, sessions, 12)
    with transaction(sessions) as session:
        for seq in range(11, 5, -1):
            session.execute(update(AuditEntry).where(AuditEntry.seq == seq).values(seq=seq + 1))
        forged = session.get(AuditEntry, 5)
        session.add(AuditEntry(seq=6, at=forged.at, action="sent", outcome="success", actor="system:x",
                               subject="patient:p1", reason="", details="{}", leaf_hash=forged.leaf_hash,
                               root_after=forged.root_after))
    report = check(log, sessions)
    assert report.first_bad_seq == 6
    assert "inserted" in {p.kind for p in report.problems if p.seq == 6}


def test_an_inserted_row_at_the_end_with_a_forged_tree_is_caught_by_the_tree(log, sessions):
    fill(log, sessions, 8)
    with transaction(sessions) as session:
        last = session.get(AuditEntry, 7)
        row = AuditEntry(seq=8, at=last.at, action="sent", outcome="success", actor="system:x",
                         subject="patient:p1", reason="", details="{}", leaf_hash=b"", root_after=last.root_after)
        from compliance.audit import entry_bytes
        row.leaf_hash = merkle.leaf_hash(entry_bytes(row))
        session.add(row)
    report = check(log, sessions)
    assert (report.problems[0].kind, report.first_bad_seq) == ("rewritten", 8)


def test_two_swapped_rows_are_reported_as_reordered_at_both_places(log, sessions):
    fill(log, sessions, 16, sign_every=16)
    with transaction(sessions) as session:
        session.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(seq=-1))
        session.execute(update(AuditEntry).where(AuditEntry.seq == 9).values(seq=3))
        session.execute(update(AuditEntry).where(AuditEntry.seq == -1).values(seq=9))
    report = check(log, sessions)
    reordered = {p.seq for p in report.problems if p.kind == "reordered"}
    assert reordered == {3, 9}
    assert report.first_bad_seq == 3


def test_a_changed_stored_hash_is_reported_as_hash_altered(log, sessions):
    fill(log, sessions, 10)
    tamper(sessions, update(AuditEntry).where(AuditEntry.seq == 2).values(leaf_hash=b"\x00" * 32))
    report = check(log, sessions)
    assert [(p.kind, p.seq) for p in report.problems] == [("hash_altered", 2)]


def test_a_changed_inner_node_is_found_with_the_entries_it_covers(log, sessions):
    fill(log, sessions, 16)
    tamper(sessions, update(AuditNode).where(AuditNode.level == 2, AuditNode.idx == 1).values(hash=b"\x01" * 32))
    report = check(log, sessions)
    assert (report.problems[0].kind, report.first_bad_seq) == ("node_altered", 4)


def test_a_forged_tree_head_fails_its_signature(log, sessions):
    fill(log, sessions, 10, sign_every=5)
    tamper(sessions, update(AuditTreeHead).where(AuditTreeHead.tree_size == 5).values(root_hash=b"\x02" * 32))
    report = check(log, sessions)
    assert [p.kind for p in report.problems] == ["head_signature"]


def test_a_head_signed_by_another_key_is_rejected(log, sessions):
    fill(log, sessions, 4)
    with transaction(sessions) as session:
        AuditLog(sessions, AuditSigner.generate()).sign_tree_head(session, T0)
    assert [p.kind for p in check(log, sessions).problems] == ["head_signature"]


def test_rewriting_everything_after_an_entry_is_still_caught_by_the_signed_head(log, sessions, signer):
    fill(log, sessions, 20, sign_every=10)
    with transaction(sessions) as session:
        entries = list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
        entries[13].reason = "rewritten by an attacker"
        session.execute(delete(AuditNode))
        from compliance.audit import entry_bytes
        edge = merkle.Frontier()
        for row in entries:
            row.leaf_hash = merkle.leaf_hash(entry_bytes(row))
            for lvl, idx, h in edge.append(row.leaf_hash):
                session.add(AuditNode(level=lvl, idx=idx, hash=h))
            row.root_after = edge.root()
    report = check(log, sessions)
    assert [(p.kind, p.seq) for p in report.problems] == [("head_root", 10)]
    assert report.signed_size == 10


def test_truncating_the_log_below_a_signed_head_is_found(log, sessions):
    fill(log, sessions, 10, sign_every=10)
    tamper(sessions, delete(AuditEntry).where(AuditEntry.seq >= 8))
    assert [(p.kind, p.seq) for p in check(log, sessions).problems] == [("truncated", 8)]


def test_a_head_is_not_signed_over_entries_tampered_since_the_last_head(log, sessions):
    fill(log, sessions, 5, sign_every=3)
    tamper(sessions, update(AuditEntry).where(AuditEntry.seq == 4).values(actor="system:other"))
    with pytest.raises(AuditIntegrityError), transaction(sessions) as session:
        log.sign_tree_head(session, T0)


def test_inclusion_and_consistency_proofs_from_the_store_verify(log, sessions):
    fill(log, sessions, 23, sign_every=7)
    for seq, size in [(0, 1), (3, 7), (6, 7), (14, 21), (22, 23)]:
        proof = log.inclusion_proof(seq, size)
        assert proof.verify()
        assert not InclusionProof(proof.leaf_index, size, b"\x00" * 32, proof.path, proof.root_hash).verify()
    with transaction(sessions) as session:
        heads = log.tree_heads(session)
    for old, new in zip(heads, heads[1:]):
        proof = log.consistency_proof(old.tree_size, new.tree_size)
        assert (proof.old_root, proof.new_root) == (old.root_hash, new.root_hash)
        assert proof.verify()


def test_a_proof_beyond_the_log_is_refused(log, sessions):
    fill(log, sessions, 3)
    with pytest.raises(AuditError):
        log.inclusion_proof(1, 4)


@pytest.mark.parametrize("field, value", [
    ("details", {"phone": "x"}),
    ("details", {"note": "write to mario.rossi@example.org"}),
    ("details", {"note": "call +39 333 123 4567"}),
    ("reason", "codice fiscale RSSMRA80A01H501U"),
    ("subject_pseudonym", "Mario Rossi"),
])
def test_personal_data_is_refused_before_it_reaches_a_leaf(log, sessions, field, value):
    kwargs = dict(action="sent", actor="system:worker", subject_pseudonym="patient:p1", reason="",
                  details={}, at=T0)
    kwargs[field] = value
    with pytest.raises(PersonalDataInAudit), transaction(sessions) as session:
        log.append(session, **kwargs)


def test_dates_and_ids_in_details_are_not_mistaken_for_personal_data(log, sessions):
    with transaction(sessions) as session:
        entry = log.append(session, action="scheduled", actor="system:rules", subject_pseudonym="patient:9f1c",
                           reason="reminder 24 h before", at=T0,
                           details={"scheduled_for": "2025-03-02T09:00:00+00:00", "notification": 123456789})
    assert entry.seq == 0


def test_the_signing_key_is_created_once_with_owner_only_permissions(tmp_path):
    path = tmp_path / "keys" / "audit.pem"
    first = AuditSigner.from_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    second = AuditSigner.from_file(path)
    assert first.key_id == second.key_id
    assert load_public_key(first.public_key_pem()).public_bytes_raw() == first.public_key.public_bytes_raw()


def test_appends_from_two_logs_on_one_database_keep_one_tree(sessions, signer):
    a, b = AuditLog(sessions, signer), AuditLog(sessions, signer)
    for i in range(9):
        with transaction(sessions) as session:
            (a if i % 2 else b).append(session, action="sent", actor="system:w", subject_pseudonym="patient:p",
                                       at=T0)
    report = check(a, sessions)
    assert report.ok and report.entries == 9


def test_an_append_rolled_back_with_its_savepoint_leaves_no_gap(log, sessions):
    with transaction(sessions) as session:
        log.append(session, action="sent", actor="system:w", subject_pseudonym="patient:p", at=T0)
        with pytest.raises(RuntimeError), session.begin_nested():
            log.append(session, action="sent", actor="system:w", subject_pseudonym="patient:p", at=T0)
            raise RuntimeError("undo")
        log.append(session, action="sent", actor="system:w", subject_pseudonym="patient:p", at=T0)
    with pytest.raises(RuntimeError), transaction(sessions) as session:
        log.append(session, action="sent", actor="system:w", subject_pseudonym="patient:p", at=T0)
        raise RuntimeError("undo")
    with transaction(sessions) as session:
        assert log.append(session, action="sent", actor="system:w", subject_pseudonym="patient:p", at=T0).seq == 2
    report = check(log, sessions)
    assert report.ok and report.entries == 3


def test_erasing_a_patient_leaves_an_audit_log_that_still_verifies(log, sessions, vault):
    with transaction(sessions) as session:
        vault.encrypt_str(session, "patient:p9", "Mariangela Rossetti")
        log.append(session, action="sent", actor="system:w", subject_pseudonym="patient:p9", at=T0)
        log.sign_tree_head(session, T0)
    with transaction(sessions) as session:
        vault.destroy(session, "patient:p9")
        log.append(session, action="erased", actor="user:admin", subject_pseudonym="patient:p9",
                   reason="art. 17 request", at=T0 + timedelta(days=1))
        log.sign_tree_head(session, T0 + timedelta(days=1))
    report = check(log, sessions)
    assert report.ok and report.signed_size == 2


def test_concurrent_appenders_never_collide_and_the_tree_stays_whole(sessions, signer):
    from concurrent.futures import ThreadPoolExecutor

    def worker(n: int) -> None:
        log = AuditLog(sessions, signer)  # one log object per "process"
        for i in range(25):
            with transaction(sessions) as session:
                log.append(session, action="sent", actor=f"system:w{n}", subject_pseudonym="patient:p", at=T0)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, range(4)))
    report = check(AuditLog(sessions, signer), sessions)
    assert report.ok and report.entries == 100


@pytest.mark.parametrize(
    "value",
    ["Appointment/12345678-1234-1234-1234-123456789abc/_history/2", "12345678-90ab-cdef-1234-567890abcdef",
     "hl7:CUP^OSP:FL98765432", "SIU0000012345"],
)
def test_resource_and_message_references_are_not_mistaken_for_phone_numbers(value):
    from compliance.audit import check_no_personal_data

    check_no_personal_data(actor="adapter", subject="patient:abc", reason="", details={"ref": value})


@pytest.mark.parametrize("details", [
    {"ref": "780123456"}, {"ref": "20240115143022"}, {"sender": "ATHENANET^18802555"},
    {"sender": "LAB^2.16.840.1.113883.19.3.1"}, {"facility": "18802555"},
])
def test_numbered_message_and_sender_ids_are_not_mistaken_for_phone_numbers(details):
    """MSH-10 and MSH-3/MSH-4 as senders write them (Meditech, Athena, OIDs): ids, not phones."""
    from compliance.audit import check_no_personal_data

    check_no_personal_data(actor="adapter", subject="patient:abc", reason="", details=details)


@pytest.mark.parametrize("details", [{"note": "780123456"}, {"ref": "mario.rossi@example.it"}])
def test_the_same_digits_elsewhere_and_an_e_mail_as_a_ref_are_still_refused(details):
    from compliance.audit import check_no_personal_data

    with pytest.raises(PersonalDataInAudit):
        check_no_personal_data(actor="adapter", subject="patient:abc", reason="", details=details)


@pytest.mark.parametrize("value", ["+39 333 1234567", "333-1234567", "call 02 7654 3210 now"])
def test_phone_numbers_are_still_refused_in_audit_details(value):
    from compliance.audit import check_no_personal_data

    with pytest.raises(PersonalDataInAudit):
        check_no_personal_data(actor="adapter", subject="patient:abc", reason="", details={"note": value})


def drafts(n: int, start: int = 0) -> list[AuditDraft]:
    return [AuditDraft(action=ACTIONS[i % len(ACTIONS)], actor="system:scheduler", subject_pseudonym=f"patient:p{i % 7}",
                       reason=f"rule r{i % 3}", details={"notification": i}, at=T0 + timedelta(minutes=i))
            for i in range(start, start + n)]


def test_entries_appended_together_are_rfc6962_leaves_with_every_root_and_subtree_stored(log, sessions):
    from compliance.audit import entry_bytes

    with transaction(sessions) as session:
        records = log.append_many(session, drafts(13))
        stored = list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
        nodes = len(session.scalars(select(AuditNode)).all())
    leaves = [merkle.leaf_hash(entry_bytes(row)) for row in stored]
    assert [r.seq for r in records] == list(range(13)) and [r.leaf_hash for r in records] == leaves
    assert [row.leaf_hash for row in stored] == leaves
    assert [row.root_after for row in stored] == [merkle.root(leaves[: i + 1]) for i in range(13)]
    assert nodes == 13 - 3  # the perfect subtrees of 8 + 4 + 1 leaves: 7 + 3 inner nodes


def test_batched_appends_after_single_ones_verify_and_their_tampering_is_found(log, sessions):
    fill(log, sessions, 5, sign_every=5)
    with transaction(sessions) as session:
        records = log.append_many(session, drafts(6, start=5))
        log.append_many(session, drafts(3, start=11))
        log.sign_tree_head(session, T0 + timedelta(hours=1))
    assert [r.seq for r in records] == list(range(5, 11))
    report = check(log, sessions)
    assert report.ok and report.entries == 14, report.problems
    tamper(sessions, update(AuditEntry).where(AuditEntry.seq == 8).values(reason="rule r9"))
    report = check(log, sessions)
    assert not report.ok and report.first_bad_seq == 8


def test_one_draft_with_personal_data_appends_none_of_its_batch(log, sessions):
    bad = AuditDraft(action="sent", actor="system:w", subject_pseudonym="patient:p", details={"note": "+39 347 123 4567"}, at=T0)
    with transaction(sessions) as session:
        with pytest.raises(PersonalDataInAudit):
            log.append_many(session, [*drafts(2), bad])
        assert log.size(session) == 0
        assert log.append_many(session, []) == []


_TEXT = st.text(max_size=20)  # any characters: quotes, backslashes, control characters, emoji
_PLAIN = st.dictionaries(_TEXT, st.one_of(_TEXT, st.integers(), st.booleans(), st.none()), max_size=5)


@given(action=_TEXT, actor=_TEXT, reason=_TEXT, subject=_TEXT, outcome=_TEXT, details=_PLAIN,
       seq=st.integers(min_value=0, max_value=2**62), micros=st.integers(min_value=0, max_value=10**15))
@settings(max_examples=300, deadline=None)
def test_a_new_entrys_leaf_bytes_are_exactly_those_the_verifier_recomputes(
        action, actor, reason, subject, outcome, details, seq, micros):
    """Appending splices a new entry's leaf from its canonical details JSON instead of
    encoding it all again: the bytes must be the ones :func:`entry_bytes` gives for the
    stored row, or every such entry would read as tampered."""
    from compliance.audit import _NewEntry, _new_entry_bytes, _reads_back_the_same, canonical_details, entry_bytes

    assert _reads_back_the_same(details)
    row = _NewEntry(seq=seq, at=T0 + timedelta(microseconds=micros), action=action, outcome=outcome, actor=actor,
                    subject=subject, reason=reason, details=canonical_details(details))
    assert _new_entry_bytes(row) == entry_bytes(row)


def test_details_that_would_read_back_differently_are_hashed_as_they_read_back(log, sessions):
    """A tuple reads back as a list and an integer key as text: such details take the
    general path, and the entry still verifies."""
    from compliance.audit import _reads_back_the_same

    odd = [{"ids": (1, 2)}, {7: "x"}, {"nested": {"a": 1}}, {"ratio": 0.5}]
    assert not any(_reads_back_the_same(d) for d in odd)
    with transaction(sessions) as session:
        for details in odd:
            log.append(session, action="received", actor="system", subject_pseudonym="patient:p1",
                       details=details, at=T0)
    with transaction(sessions) as session:
        assert log.verify(session).ok


@pytest.mark.parametrize("details, refusal", [
    ({"notification": 3, "urgent": True, "reason": None, "reports": ["hl7:R1", "+39 333 1234567"]},
     "details.reports[1]: looks like a phone number"),
    ({"outer": {"inner": ("hl7:R1", {"email": "x"})}}, "details.outer.inner[1].email: personal field names"),
    ({"kind": "reminder", "note": "write to mario.rossi@example.org"}, "details.note: looks like an e-mail"),
])
def test_personal_data_anywhere_in_audit_details_is_refused_naming_its_place(details, refusal):
    from compliance.audit import check_no_personal_data

    with pytest.raises(PersonalDataInAudit, match=re.escape(refusal)):
        check_no_personal_data(actor="adapter", subject="patient:abc", reason="", details=details)
