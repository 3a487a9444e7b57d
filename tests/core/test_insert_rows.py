"""adapter.db.insert_rows: the pipeline's multi-row inserts on the DB-API cursor
store what SQLAlchemy's own insert stores, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from adapter.db import insert_rows, transaction
from adapter.models import Notification, Patient
from compliance.models import DataKey
from tests.harness import migrated_container, settings_for

NOTIFICATION = Notification.__table__
ROME = timezone(timedelta(hours=1))


@pytest.fixture
def container(tmp_path, database_url):
    container = migrated_container(settings_for(tmp_path, database_url))
    yield container
    container.engine.dispose()


def _patient(session, patient_id: str, now: datetime) -> None:
    insert_rows(session, Patient.__table__, [{"id": patient_id, "given_name_enc": b"\x00sealed\xff", "family_name_enc": None,
                                              "language": "it", "created_at": now, "updated_at": now}])


def _notification(patient_id: str, key: str, now: datetime, **values) -> dict:
    return {"patient_id": patient_id, "kind": "booking_confirmation", "rule_id": "confirm", "subject_ref": "appt|1",
            "scheduled_for": now + timedelta(hours=1), "status": "scheduled", "urgent": True, "idempotency_key": key,
            "reason": None, "status_at": now, "created_at": now, "tried_channels": ["sms"], "attempts": 0,
            "decision": {"rule": {"id": "confirm"}, "consent": {"allowed": True, "note": "Nicolò D'Alò"}}, **values}


def test_rows_read_back_as_sqlalchemy_would_have_stored_them(container):
    # A time in another zone comes back as the same instant in UTC; JSON, booleans,
    # bytes and NULLs as given.
    now = datetime(2026, 11, 27, 9, 30, 15, 123456, tzinfo=ROME)
    with transaction(container.sessions) as session:
        _patient(session, "p-1", now)
        returned = insert_rows(session, NOTIFICATION, [_notification("p-1", f"k{i}", now) for i in range(3)],
                               returning=("idempotency_key", "id"))
    with transaction(container.sessions) as session:
        patient = session.get(Patient, "p-1")
        rows = session.execute(select(NOTIFICATION).order_by(NOTIFICATION.c.id)).all()
        # Compared in SQL as SQLAlchemy stores times (on SQLite: text, naive UTC).
        due = session.scalars(select(NOTIFICATION.c.idempotency_key).where(
            NOTIFICATION.c.scheduled_for < datetime(2026, 11, 27, 9, 45, tzinfo=UTC))).all()
    assert patient.given_name_enc == b"\x00sealed\xff" and patient.family_name_enc is None
    assert patient.created_at == now.astimezone(UTC) and patient.created_at.tzinfo is not None
    assert sorted(returned) == sorted((row.idempotency_key, row.id) for row in rows)
    assert [row.idempotency_key for row in rows] == ["k0", "k1", "k2"]
    assert sorted(due) == ["k0", "k1", "k2"]
    first = rows[0]
    assert first.scheduled_for == datetime(2026, 11, 27, 9, 30, 15, 123456, tzinfo=UTC)  # 10:30 in Rome
    assert first.urgent is True and first.tried_channels == ["sms"] and first.reason is None
    assert first.decision == {"rule": {"id": "confirm"}, "consent": {"allowed": True, "note": "Nicolò D'Alò"}}


def test_more_rows_than_one_statement_takes_are_all_inserted_in_the_callers_transaction(container):
    now = datetime.now(UTC)
    count = 1234  # several statements of at most 500 rows
    with transaction(container.sessions) as session:
        _patient(session, "p-1", now)
    with pytest.raises(RuntimeError, match="undo"):
        with transaction(container.sessions) as session:
            insert_rows(session, NOTIFICATION, [_notification("p-1", f"k{i}", now) for i in range(count)])
            assert len(session.execute(select(NOTIFICATION.c.id)).all()) == count  # seen by the session
            raise RuntimeError("undo")
    with transaction(container.sessions) as session:
        assert session.execute(select(NOTIFICATION.c.id)).all() == []  # rolled back with it
        returned = insert_rows(session, NOTIFICATION, [_notification("p-1", f"k{i}", now) for i in range(count)],
                               returning=("idempotency_key",))
    assert sorted(key for (key,) in returned) == sorted(f"k{i}" for i in range(count))


def test_on_conflict_do_nothing_keeps_the_existing_row_and_returns_only_the_new_ones(container):
    now = datetime.now(UTC)
    key_row = {"id": 7, "subject": "patient:a", "master_key_id": "m1", "wrapped": b"first", "created_at": now}
    with transaction(container.sessions) as session:
        insert_rows(session, DataKey.__table__, [key_row])
        returned = insert_rows(session, DataKey.__table__, [
            {**key_row, "id": 8, "wrapped": b"second"},  # same subject: stays as it was
            {**key_row, "id": 9, "subject": "patient:b", "wrapped": b"b"},
        ], returning=("subject",), on_conflict_do_nothing=True)
    assert returned == [("patient:b",)]
    with transaction(container.sessions) as session:
        stored = {row.subject: row.wrapped for row in session.scalars(select(DataKey).where(DataKey.subject.like("patient:%")))}
    assert stored == {"patient:a": b"first", "patient:b": b"b"}


def test_a_missing_defaulted_column_or_uneven_rows_are_refused_before_anything_is_written(container):
    now = datetime.now(UTC)
    with transaction(container.sessions) as session:
        _patient(session, "p-1", now)
        without_attempts = _notification("p-1", "k1", now)
        del without_attempts["attempts"]  # has a Python-side default that nothing here applies
        with pytest.raises(ValueError, match="give attempts"):
            insert_rows(session, NOTIFICATION, [without_attempts])
        with pytest.raises(ValueError, match="same columns"):
            insert_rows(session, NOTIFICATION, [_notification("p-1", "k2", now), {**_notification("p-1", "k3", now), "sent_at": now}])
        assert insert_rows(session, NOTIFICATION, []) == []
        assert session.execute(select(NOTIFICATION.c.id)).all() == []
