"""What became of one inbound message, for the engineer on the phone with a hospital
("did you get message X at 10:02, and did the patient get the SMS?"): the message as
``/api/messages`` lists it, the notifications its events planned and those they
cancelled while they waited, the application ACK owed for it (enhanced mode) and, for
one in the error store, why and whether it can still be replayed.

Notifications are found by the message's id, which they keep from when they are
planned (``notification.message_id``) or withdrawn (``withdrawn_by``), each by its own
partial index: a trace reads the rows of its message, whatever else is stored.
Nothing here holds message content or personal data: notifications by id, kind,
status, channel, times and reason, patients by their pseudonymous id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from adapter.error_store import IN_STORE, not_replayable, raw_held, received, sent_by
from adapter.models import ApplicationAck, InboundMessage, Notification


def message_view(row: InboundMessage) -> dict[str, Any]:
    """An inbound message as operators see it: a processed message received again is
    ``duplicate``."""
    return {
        "id": row.id,
        "source": row.source,
        "sender": row.sender,
        "control_id": row.control_id,
        "type": row.message_type,
        "received_at": row.received_at.isoformat(),
        "status": "duplicate" if row.duplicates and row.status == "processed" else row.status,
        "duplicates": row.duplicates,
        "error": row.error,
    }


# As message_view shows it: a processed message received again is "duplicate".
_SHOWN_STATUS = case(((InboundMessage.duplicates > 0) & (InboundMessage.status == "processed"), "duplicate"),
                     else_=InboundMessage.status)


@dataclass(frozen=True)
class MessageFilter:
    """Which inbound messages, as ``GET /api/messages`` and the console narrow them:
    every one when no field is set. ``status`` as :func:`message_view` shows it
    (``duplicate``: processed, then received again); ``sender`` MSH-4 or the sender as
    listed (:func:`adapter.error_store.sent_by`); ``message_type`` a type or type and
    trigger; ``since`` received at or after (timezone-aware)."""

    source: str | None = None
    status: str | None = None
    control_id: str | None = None
    sender: str | None = None
    message_type: str | None = None
    since: datetime | None = None

    def clauses(self, *, status: bool = True) -> list[ColumnElement[bool]]:
        where = received(self.sender, self.since, self.message_type)
        if self.source:
            where.append(InboundMessage.source == self.source)
        if self.control_id:
            where.append(InboundMessage.control_id == self.control_id)
        if status and self.status == "duplicate":
            where += [InboundMessage.status == "processed", InboundMessage.duplicates > 0]
        elif status and self.status == "processed":
            where += [InboundMessage.status == "processed", InboundMessage.duplicates == 0]
        elif status and self.status:
            where.append(InboundMessage.status == self.status)
        return where


def find_messages(session: Session, matching: MessageFilter, *, limit: int, offset: int = 0
                  ) -> tuple[int, list[dict[str, Any]]]:
    """How many messages match, and ``limit`` of them from ``offset``, newest first,
    as :func:`message_view` shows them."""
    where = matching.clauses()
    total = session.scalar(select(func.count()).select_from(InboundMessage).where(*where)) or 0
    rows = session.scalars(select(InboundMessage).where(*where)
                           .order_by(InboundMessage.id.desc()).limit(limit).offset(offset))
    return total, [message_view(row) for row in rows]


def status_counts(session: Session, matching: MessageFilter) -> dict[str, int]:
    """How many messages ``matching`` (whatever its status) are in each status, as
    :func:`message_view` shows it."""
    return dict(session.execute(select(_SHOWN_STATUS, func.count()).select_from(InboundMessage)
                                .where(*matching.clauses(status=False)).group_by(_SHOWN_STATUS)).all())


@dataclass(frozen=True)
class Notice:
    """A notification a message planned or withdrew, as the trace shows it."""

    id: int
    patient: str
    kind: str
    status: str
    channel: str | None
    scheduled_for: datetime
    status_at: datetime
    reason: str | None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "patient": self.patient, "kind": self.kind, "status": self.status,
                "channel": self.channel, "scheduled_for": self.scheduled_for.isoformat(),
                "status_at": self.status_at.isoformat(), "reason": self.reason}


@dataclass(frozen=True)
class AckOwed:
    """The application ACK owed to the sender (enhanced mode, HL7 v2.5 §2.9.3)."""

    status: str  # pending, done, failed (given up)
    attempts: int
    last_error: str | None
    queued_at: datetime
    done_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "attempts": self.attempts, "last_error": self.last_error,
                "queued_at": self.queued_at.isoformat(), "done_at": self.done_at.isoformat() if self.done_at else None}


@dataclass(frozen=True)
class InErrorStore:
    """Why a message is in the error store, and why it cannot be replayed ("" if it can)."""

    reason: str
    not_replayable: str

    def as_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "replayable": not self.not_replayable, "not_replayable": self.not_replayable}


@dataclass(frozen=True)
class MessageTrace:
    message: dict[str, Any]  # as message_view shows it
    caused: list[Notice]
    withdrew: list[Notice]
    application_ack: AckOwed | None
    error_store: InErrorStore | None

    def as_json(self) -> dict[str, Any]:
        return {**self.message, "caused": [n.as_json() for n in self.caused],
                "withdrew": [n.as_json() for n in self.withdrew],
                "application_ack": self.application_ack.as_json() if self.application_ack else None,
                "error_store": self.error_store.as_json() if self.error_store else None}


_NOTICE = (Notification.id, Notification.patient_id, Notification.kind, Notification.status, Notification.channel,
           Notification.scheduled_for, Notification.status_at, Notification.reason)


def _notices(session: Session, where: ColumnElement[bool]) -> list[Notice]:
    return [Notice(*row) for row in session.execute(select(*_NOTICE).where(where).order_by(Notification.id))]


def trace(session: Session, message_id: int) -> MessageTrace | None:
    """What became of inbound message ``message_id``; None when there is none."""
    found = session.execute(select(InboundMessage, raw_held(message_id)).where(InboundMessage.id == message_id)).first()
    if found is None:
        return None
    row, held = found
    ack = session.scalar(select(ApplicationAck).where(ApplicationAck.inbound_message_id == message_id))
    return MessageTrace(
        message=message_view(row),
        caused=_notices(session, Notification.message_id == message_id),
        withdrew=_notices(session, Notification.withdrawn_by == message_id),
        application_ack=AckOwed(ack.status, ack.attempts, ack.last_error, ack.created_at, ack.done_at) if ack else None,
        error_store=InErrorStore(row.error or "", not_replayable(held, row.raw_erased_at))
        if row.status in IN_STORE else None,
    )


def messages_with_control_id(session: Session, control_id: str, sender: str | None = None) -> list[int]:
    """The ids of the inbound messages of ``control_id`` (MSH-10, or a FHIR version's
    ``Type/id/_history/N``), oldest first: one per sender that used it, unless ``sender``
    (MSH-4 or as listed, see :func:`adapter.error_store.sent_by`) narrows them."""
    query = select(InboundMessage.id).where(InboundMessage.control_id == control_id)
    if sender:
        query = query.where(sent_by(sender))
    return list(session.scalars(query.order_by(InboundMessage.id)))
