"""Scheduled compliance jobs and key rotation: retention purge, periodic signed tree heads,
``keys rotate`` while another adapter process keeps running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


from sqlalchemy import select

from adapter.clock import FrozenClock
from adapter.db import transaction
from adapter.housekeeping import purge_expired, sign_tree_head_if_due
from adapter.key_rotation import adopt_master_key_if_changed, master_key_path
from adapter.models import InboundMessage, InboundRaw, Notification, Patient
from adapter.subject_rights import export_patient
from compliance.crypto import LocalMasterKey
from tests.core.test_compliance_surfaces import cli
from tests.harness import migrated_container, settings_for

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def add_rows(container, *, age: timedelta, tag: str) -> tuple[int, int]:
    with transaction(container.sessions) as session:
        at = NOW - age
        patient = Patient(id=f"p-{tag}", language="it", created_at=at, updated_at=at,
                          given_name_enc=container.vault.encrypt(session, f"patient:p-{tag}", b"Ada"))
        inbound = InboundMessage(source="hl7", sender="OSP", control_id=tag, received_at=at, status="processed")
        session.add_all([patient, inbound])
        session.flush()
        session.add(InboundRaw(message_id=inbound.id, raw_enc=container.vault.encrypt(session, "system", b"MSH|...")))
        sent = Notification(patient_id=patient.id, kind="reminder", rule_id="r", scheduled_for=at, status="sent",
                            idempotency_key=tag, sent_at=at, status_at=at, created_at=at, decision={},
                            body_enc=container.vault.encrypt(session, f"patient:p-{tag}", b"Gentile Ada"))
        session.add(sent)
        session.flush()
        return inbound.id, sent.id


def test_retention_purges_raw_messages_and_sent_bodies_past_their_periods_and_audits_it(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    retention = container.gate.policy.retention
    old = add_rows(container, age=timedelta(days=retention.sent_body_days + 1), tag="old")
    recent = add_rows(container, age=timedelta(days=retention.inbound_raw_days - 1), tag="new")

    report = purge_expired(container, now=NOW)

    assert (report.inbound_raw, report.sent_bodies) == (1, 1)
    with transaction(container.sessions) as session:
        assert session.get(InboundRaw, old[0]) is None
        assert session.get(InboundMessage, old[0]).status == "processed"  # the message's row stays
        assert session.get(Notification, old[1]).body_enc is None
        assert session.get(Notification, old[1]).status == "sent"  # the row and its why-record stay
        assert session.get(InboundRaw, recent[0]) is not None
        assert session.get(Notification, recent[1]).body_enc is not None
        actions = [r.action for r in container.audit.entries(session)]
    assert actions == ["retention_purged"]
    assert purge_expired(container, now=NOW).inbound_raw == 0
    container.engine.dispose()


def test_an_invoice_settled_longer_ago_than_its_retention_is_deleted_one_still_due_stays(tmp_path):
    """The adapter keeps an invoice's amount, number and notice code to remind the patient;
    once it is paid or cancelled, only for questions about a reminder, and not for ever."""
    from adapter.models import Invoice

    container = migrated_container(settings_for(tmp_path))
    days = container.gate.policy.retention.settled_invoice_days
    add_rows(container, age=timedelta(days=1), tag="payer")
    with transaction(container.sessions) as session:
        for ref, status, age in (("paid-long-ago", "balanced", days + 1), ("paid-lately", "balanced", days - 1),
                                 ("cancelled-long-ago", "cancelled", days + 1), ("due-long-since", "issued", days + 1)):
            at = NOW - timedelta(days=age)
            session.add(Invoice(ref=ref, patient_id="p-payer", status=status, issued_at=at, source="fhir",
                                details_enc=container.vault.encrypt(session, "patient:p-payer", b"{}"), updated_at=at))

    assert purge_expired(container, now=NOW).settled_invoices == 2
    with transaction(container.sessions) as session:
        assert sorted(session.scalars(select(Invoice.ref))) == ["due-long-since", "paid-lately"]
        [purged] = [r.details for r in container.audit.entries(session) if r.action == "retention_purged"]
    assert purged["settled_invoices"] == 2
    container.engine.dispose()


def test_a_tree_head_is_signed_when_entries_wait_and_the_last_head_is_old_enough(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    assert sign_tree_head_if_due(container, now=NOW) is None  # an empty log needs no head

    def append() -> None:
        with transaction(container.sessions) as session:
            container.audit.append(session, action="accessed", actor="test", subject_pseudonym="", at=NOW)

    append()
    first = sign_tree_head_if_due(container, now=NOW)
    assert first is not None and first.tree_size == 1
    assert sign_tree_head_if_due(container, now=NOW + timedelta(minutes=5)) is None  # nothing new
    append()
    assert sign_tree_head_if_due(container, now=NOW + timedelta(seconds=20)) is None  # too soon
    second = sign_tree_head_if_due(container, now=NOW + timedelta(minutes=2))
    assert second is not None and second.tree_size == 2
    with transaction(container.sessions) as session:
        assert container.audit.verify(session).ok
    container.engine.dispose()


def test_keys_rotate_rewraps_every_key_and_a_running_adapter_adopts_the_new_one(tmp_path):
    settings = settings_for(tmp_path)
    running = migrated_container(settings)  # stands for an adapter serving throughout
    add_rows(running, age=timedelta(days=1), tag="k")
    old_id = running.vault.master.key_id

    code, output = cli(settings, "keys", "rotate", "--grace", "0")

    assert code == 0, output
    new_id = LocalMasterKey.from_file(master_key_path(settings)).key_id
    assert new_id != old_id
    assert (tmp_path / f"master.key.retired-{old_id}").exists()
    assert oct((tmp_path / "master.key").stat().st_mode & 0o777) == "0o600"
    assert adopt_master_key_if_changed(running) is not None
    assert running.vault.master.key_id == new_id
    with transaction(running.sessions) as session:
        assert running.vault.count_wrapped_by(session, old_id) == 0
        assert "key_rotated" in [r.action for r in running.audit.entries(session)]
    running.engine.dispose()

    fresh = migrated_container(settings)  # a process started after the rotation
    with transaction(fresh.sessions) as session:
        exported = export_patient(session, fresh, "p-k", actor="test", now=NOW)
    assert exported["patient"]["given_name"] == "Ada"
    fresh.engine.dispose()


def test_what_the_purge_removes_leaves_no_copy_in_the_database_files(tmp_path):
    """The sealed raw message and body are gone from the files, not only from the rows:
    the system key that opens a raw message stays."""
    container = migrated_container(settings_for(tmp_path))
    retention = container.gate.policy.retention
    old = add_rows(container, age=timedelta(days=retention.sent_body_days + 1), tag="old")
    with transaction(container.sessions) as session:
        sealed = [session.get(InboundRaw, old[0]).raw_enc, session.get(Notification, old[1]).body_enc]

    report = purge_expired(container, now=NOW)

    assert (report.inbound_raw, report.sent_bodies) == (1, 1)
    files = list(tmp_path.glob("adapter.db*"))
    for blob in sealed:
        tag = blob[-16:]  # AES-GCM's tag ends every sealed value
        assert [path.name for path in files if tag in path.read_bytes()] == []
    container.engine.dispose()


def test_retention_also_purges_stored_callbacks_reply_texts_and_the_sandbox_outbox(tmp_path):
    from adapter.models import OutboxMessage
    from adapter.reply_models import PatientReply, WebhookEvent

    container = migrated_container(settings_for(tmp_path), FrozenClock(NOW))
    old = NOW - timedelta(days=400)
    with transaction(container.sessions) as session:
        seal = lambda text: container.vault.encrypt(session, "system", text.encode())  # noqa: E731
        session.add(WebhookEvent(provider="twilio", kind="inbound", dedupe_key="k1", received_at=old, status="processed",
                                 request_enc=seal("From=+393331234567&Body=2"), processed_at=old))
        session.add(WebhookEvent(provider="twilio", kind="inbound", dedupe_key="k2", received_at=NOW, status="processed",
                                 request_enc=seal("From=+393331234567&Body=1"), processed_at=NOW))
        session.add(PatientReply(provider="twilio", provider_message_id="SM1", channel="sms", intent="cancel",
                                 action="cancelled", status="done", text_enc=seal("2"), received_at=old))
        session.add(OutboxMessage(idempotency_key="old", to_enc=seal("+393331234567"), body_enc=seal("Gentile"),
                                  created_at=old))
    report = purge_expired(container, now=NOW)
    assert (report.webhooks, report.reply_texts, report.sandbox_outbox) == (1, 1, 1)
    with transaction(container.sessions) as session:
        kept = {row.dedupe_key: row.request_enc for row in session.scalars(select(WebhookEvent))}
        assert kept["k1"] is None and kept["k2"] is not None
        assert session.scalar(select(PatientReply.text_enc)) is None
        assert session.scalar(select(OutboxMessage.id)) is None
    container.engine.dispose()


def _inbound(container, *, age: timedelta, tag: str, status: str = "processed") -> int:  # noqa: ANN001
    with transaction(container.sessions) as session:
        message = InboundMessage(source="hl7", sender="OSP", control_id=tag, received_at=NOW - age, status=status)
        session.add(message)
        session.flush()
        session.add(InboundRaw(message_id=message.id, raw_enc=container.vault.encrypt(session, "system", b"MSH|...")))
        return message.id


def test_raw_messages_go_oldest_first_and_one_waiting_to_be_processed_keeps_its_own(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    days = container.gate.policy.retention.inbound_raw_days
    expired, kept = timedelta(days=days + 1), timedelta(days=days - 1)
    first = _inbound(container, age=expired, tag="first")
    waiting = _inbound(container, age=expired, tag="waiting", status="stored")
    second = _inbound(container, age=expired, tag="second")
    recent = _inbound(container, age=kept, tag="recent")
    late = _inbound(container, age=expired, tag="late")  # stored after a newer one: out of order

    assert purge_expired(container, now=NOW).inbound_raw == 2
    with transaction(container.sessions) as session:
        assert {i for i in (first, waiting, second, recent, late) if session.get(InboundRaw, i)} == {waiting, recent, late}
    # Once the newer one has expired too, the one stored out of order goes with it.
    assert purge_expired(container, now=NOW + timedelta(days=2)).inbound_raw == 2
    with transaction(container.sessions) as session:
        assert {i for i in (first, waiting, second, recent, late) if session.get(InboundRaw, i)} == {waiting}
    container.engine.dispose()


def test_a_purge_with_nothing_expired_reads_no_whole_table(tmp_path):
    """Every minute, in a write transaction ACKs wait for: its work must not grow with
    what is kept (SQLite steps, 20,000 of each kind of row against one)."""
    from sqlalchemy import text

    from tests.harness import SqliteSteps

    container = migrated_container(settings_for(tmp_path))
    steps = SqliteSteps(container.engine)
    add_rows(container, age=timedelta(days=1), tag="kept")
    steps.reset()
    assert not any(vars(purge_expired(container, now=NOW)).values())
    few = steps.count
    with container.engine.begin() as connection:
        for table, copied in (
            ("inbound_message", "source, sender, control_id || '-' || i, message_type, received_at, status, duplicates"),
            ("notification", "patient_id, kind, rule_id, subject_ref, scheduled_for, status, urgent,"
                             " idempotency_key || '-' || i, status_at, created_at, tried_channels, attempts, decision,"
                             " sent_at, body_enc"),
        ):
            columns = copied.replace(" || '-' || i", "")
            connection.execute(text(f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)"
                                    f" INSERT INTO {table} ({columns}) SELECT {copied} FROM {table}, n"))
        connection.execute(text("INSERT INTO inbound_raw (message_id, raw_enc) SELECT m.id, x'00' FROM inbound_message m"
                                " WHERE m.id NOT IN (SELECT message_id FROM inbound_raw)"))
        assert connection.scalar(text("SELECT count(*) FROM notification WHERE body_enc IS NOT NULL")) > 20_000
    steps.reset()
    assert not any(vars(purge_expired(container, now=NOW)).values())
    assert few > 0 and steps.count < 2 * few, (few, steps.count)
    container.engine.dispose()


def test_serve_with_celery_workers_still_runs_the_retention_purge(tmp_path):
    """``serve --workers celery`` runs no in-process worker; the minute jobs (the
    purge, tree heads, a rotated master key) used to run only with that worker, so a
    Celery deployment kept raw messages forever. Every deployment has a serve."""
    from tests.core.test_end_to_end import wait_for
    from tests.harness import running_adapter

    settings = settings_for(tmp_path)
    container = migrated_container(settings, clock=FrozenClock(NOW))
    old = add_rows(container, age=timedelta(days=container.gate.policy.retention.sent_body_days + 1), tag="old")
    container.engine.dispose()
    with running_adapter(settings, clock=FrozenClock(NOW), embedded_worker=False) as adapter:
        def purged() -> bool:
            with transaction(adapter.container.sessions) as session:
                return session.get(InboundRaw, old[0]) is None
        assert wait_for(purged)


def test_a_process_that_never_looks_for_a_rotated_key_wraps_new_patients_with_it_not_the_retired_one(tmp_path):
    """A Celery worker maps new patients but runs no housekeeping, so it never adopts a
    rotated key by itself. It used to wrap their keys under the retired master until it
    met a rewrapped key: once the retired file was deleted, as `keys rotate` allows when
    no old backup is kept, those patients' data could never be read again."""
    settings = settings_for(tmp_path)
    worker = migrated_container(settings)  # stands for a worker started before the rotation
    add_rows(worker, age=timedelta(days=1), tag="before")
    old_id = worker.vault.master.key_id

    code, output = cli(settings, "keys", "rotate", "--grace", "0")
    assert code == 0, output
    new_id = LocalMasterKey.from_file(master_key_path(settings)).key_id

    add_rows(worker, age=timedelta(days=1), tag="after")  # a new patient, in the worker
    with transaction(worker.sessions) as session:
        assert worker.vault.count_wrapped_by(session, old_id) == 0
    worker.engine.dispose()

    (tmp_path / f"master.key.retired-{old_id}").unlink()
    fresh = migrated_container(settings)
    with transaction(fresh.sessions) as session:
        assert fresh.vault.count_wrapped_by(session, new_id) >= 3
        exported = export_patient(session, fresh, "p-after", actor="test", now=NOW)
    assert exported["patient"]["given_name"] == "Ada"
    fresh.engine.dispose()


def test_a_serving_adapter_that_wrapped_a_new_key_with_the_rotated_master_still_rewraps_the_rest(tmp_path):
    """A new patient registered between the new key file and housekeeping's next look makes
    the vault wrap with the new master at once. Housekeeping then found the vault already
    on the file's key and rewrapped nothing: the keys of everyone registered before stayed
    under the retired master, which the operator may delete."""
    from adapter.key_rotation import install_new_master

    settings = settings_for(tmp_path)
    running = migrated_container(settings)
    add_rows(running, age=timedelta(days=1), tag="before")
    old, new = install_new_master(settings)  # `keys rotate`, before its own rewrap
    add_rows(running, age=timedelta(days=1), tag="after")  # wrapped with the new key at once
    assert running.vault.master.key_id == new.key_id

    assert adopt_master_key_if_changed(running) is not None
    with transaction(running.sessions) as session:
        assert running.vault.count_wrapped_by(session, old.key_id) == 0
    assert adopt_master_key_if_changed(running) is None  # done: nothing more to adopt
    running.engine.dispose()
