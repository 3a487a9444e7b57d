"""adapter.db.execute_prebuilt: a prebuilt statement run on the DB-API cursor of the
session's transaction reads and writes exactly what ``session.execute`` does, on SQLite
and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, select, text, update

from adapter.db import execute_prebuilt, insert_rows, transaction
from adapter.models import Contact, Notification, Patient
from tests.harness import migrated_container, settings_for

NOTIFICATION = Notification.__table__
ROME = timezone(timedelta(hours=1))
NOW = datetime(2026, 11, 27, 9, 30, 15, 123456, tzinfo=ROME)

_OF_PATIENT = select(
    NOTIFICATION.c.id, NOTIFICATION.c.scheduled_for, NOTIFICATION.c.sent_at, NOTIFICATION.c.urgent,
    NOTIFICATION.c.decision, NOTIFICATION.c.tried_channels, NOTIFICATION.c.body_enc, NOTIFICATION.c.reason,
).where(NOTIFICATION.c.patient_id == bindparam("patient"),
        NOTIFICATION.c.status.in_(bindparam("statuses", expanding=True)),
        NOTIFICATION.c.kind != "survey").order_by(NOTIFICATION.c.id)
_SET_BY_ID = NOTIFICATION.update().where(NOTIFICATION.c.id == bindparam("notification"))
_CANCEL = update(NOTIFICATION).where(
    NOTIFICATION.c.patient_id == bindparam("patient"), NOTIFICATION.c.status == "scheduled",
).values(status="cancelled", status_at=bindparam("at")).returning(NOTIFICATION.c.id, NOTIFICATION.c.status_at)
# Every stored column as the database holds it (text on SQLite, JSON as written), to
# compare what two writes left.
_STORED = {
    "sqlite": "SELECT scheduled_for, sent_at, urgent, decision, tried_channels, body_enc, reason, status_at "
              "FROM notification WHERE id = :id",
    "postgresql": "SELECT scheduled_for::text, sent_at::text, urgent::text, decision::text, tried_channels::text, "
                  "encode(body_enc, 'hex'), reason, status_at::text FROM notification WHERE id = :id",
}


@pytest.fixture
def container(tmp_path, database_url):
    container = migrated_container(settings_for(tmp_path, database_url))
    yield container
    container.engine.dispose()


def _notification(key: str, **values) -> dict:
    return {"patient_id": "p-1", "kind": "booking_confirmation", "rule_id": "confirm", "subject_ref": "appt|1",
            "scheduled_for": NOW + timedelta(hours=1), "status": "scheduled", "urgent": True, "idempotency_key": key,
            "reason": None, "status_at": NOW, "created_at": NOW, "tried_channels": ["sms"], "attempts": 0, "sent_at": None,
            "body_enc": None,
            "decision": {"rule": {"id": "confirm"}, "note": "Nicolò D'Alò"}, **values}


def _stored(container, *notifications: dict) -> list[int]:
    with transaction(container.sessions) as session:
        insert_rows(session, Patient.__table__, [{"id": "p-1", "given_name_enc": None, "family_name_enc": None,
                                                  "language": "it", "created_at": NOW, "updated_at": NOW}])
        return [notification_id for (notification_id,) in insert_rows(session, NOTIFICATION, list(notifications),
                                                                       returning=("id",))]


def test_rows_come_back_as_session_execute_returns_them(container):
    _stored(container,
            _notification("k1"),
            _notification("k2", status="sent", sent_at=NOW + timedelta(minutes=5), urgent=False, reason="why",
                          body_enc=b"\x00sealed\xff", decision={}, tried_channels=[]),
            _notification("k3", kind="survey"))
    with transaction(container.sessions) as session:
        for statuses in (["scheduled", "sent"], ["sent"], ["claimed", "read", "scheduled"], []):
            parameters = {"patient": "p-1", "statuses": statuses}
            expected = [tuple(row) for row in session.execute(_OF_PATIENT, parameters)]
            assert execute_prebuilt(session, _OF_PATIENT, parameters) == expected
        first, second = execute_prebuilt(session, _OF_PATIENT, {"patient": "p-1", "statuses": ["scheduled", "sent"]})
    assert first[1:] == (datetime(2026, 11, 27, 9, 30, 15, 123456, tzinfo=UTC), None, True,
                         {"rule": {"id": "confirm"}, "note": "Nicolò D'Alò"}, ["sms"], None, None)
    assert second[1:] == (datetime(2026, 11, 27, 9, 30, 15, 123456, tzinfo=UTC),
                          datetime(2026, 11, 27, 8, 35, 15, 123456, tzinfo=UTC), False, {}, [], b"\x00sealed\xff", "why")


def test_values_are_stored_as_session_execute_stores_them(container):
    # The same values written to two rows, one each way, leave the same stored text.
    ours, theirs = _stored(container, _notification("k1"), _notification("k2"))
    values = {"scheduled_for": NOW + timedelta(days=1), "sent_at": None, "urgent": False, "decision": None,
              "tried_channels": ["sms", "email"], "body_enc": b"\x00\x01\xfe", "reason": "Nicolò's", "status_at": NOW}
    with transaction(container.sessions) as session:
        assert execute_prebuilt(session, _SET_BY_ID, {**values, "notification": ours}) == []
        session.execute(_SET_BY_ID, {**values, "notification": theirs})
        dialect = session.get_bind().dialect.name
        stored = [tuple(session.execute(text(_STORED[dialect]), {"id": notification_id}).one())
                  for notification_id in (ours, theirs)]
    assert stored[0] == stored[1]
    assert None not in (stored[0][3], stored[0][5])  # JSON null and the bytes, not SQL NULL


def test_returning_rows_come_back_converted(container):
    ids = _stored(container, _notification("k1"), _notification("k2", status="sent"), _notification("k3"))
    at = datetime(2026, 11, 28, 1, 0, tzinfo=ROME)
    with transaction(container.sessions) as session:
        cancelled = execute_prebuilt(session, _CANCEL, {"patient": "p-1", "at": at})
        statuses = dict(session.execute(select(NOTIFICATION.c.id, NOTIFICATION.c.status)).all())
    assert sorted(cancelled) == [(ids[0], at.astimezone(UTC)), (ids[2], at.astimezone(UTC))]
    assert statuses == {ids[0]: "cancelled", ids[1]: "sent", ids[2]: "cancelled"}


def test_statements_run_in_the_callers_transaction_and_savepoints(container):
    (notification_id,) = _stored(container, _notification("k1"))
    with transaction(container.sessions) as session:
        execute_prebuilt(session, _SET_BY_ID, {"notification": notification_id, "reason": None})  # before the savepoint
        with pytest.raises(RuntimeError, match="undo"), session.begin_nested():
            execute_prebuilt(session, _SET_BY_ID, {"notification": notification_id, "reason": "in the savepoint"})
            assert session.scalar(select(NOTIFICATION.c.reason)) == "in the savepoint"  # seen by the session
            raise RuntimeError("undo")
        assert session.scalar(select(NOTIFICATION.c.reason)) is None
        execute_prebuilt(session, _SET_BY_ID, {"notification": notification_id, "reason": "kept"})
    with pytest.raises(RuntimeError, match="undo"), transaction(container.sessions) as session:
        execute_prebuilt(session, _SET_BY_ID, {"notification": notification_id, "reason": "rolled back"})
        raise RuntimeError("undo")
    with transaction(container.sessions) as session:
        assert session.scalar(select(NOTIFICATION.c.reason)) == "kept"


def test_a_column_that_python_would_fill_in_is_refused(container):
    _stored(container)
    contact = {"patient_id": "p-1", "channel": "sms", "address_enc": b"x", "address_index": "i", "active": True,
               "updated_at": NOW}  # no rank, no use: both have Python-side defaults
    with transaction(container.sessions) as session:
        with pytest.raises(ValueError, match="give rank, use"):
            execute_prebuilt(session, Contact.__table__.insert(), contact)
        assert session.execute(select(Contact.id)).all() == []


def test_each_transaction_of_a_session_runs_on_its_own_connection(container):
    _stored(container, _notification("k1"))
    of_patient = {"patient": "p-1", "statuses": ["scheduled"]}
    with container.sessions() as session:
        with session.begin():
            assert len(execute_prebuilt(session, _OF_PATIENT, of_patient)) == 1
        container.engine.dispose()  # the first transaction's connection is closed
        with session.begin():
            session.execute(NOTIFICATION.insert(), _notification("k2"))  # seen only in this transaction
            assert len(execute_prebuilt(session, _OF_PATIENT, of_patient)) == 2
