"""The error store as operators search it: inbound messages that could not be
processed (status ``error`` or ``rejected``), narrowed by sender, time, type and
reason. ``hl7 errors`` lists them and ``hl7 replay --all`` replays them with the
same filters. What it returns never holds message content (personal data): ids,
control ids, sender, type, times and the reason only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session

from adapter.db import read_transaction, transaction
from adapter.models import InboundMessage, InboundRaw

if TYPE_CHECKING:
    from adapter.bootstrap import Container

IN_STORE = ("error", "rejected")


def since_moment(text: str, now: datetime) -> datetime:
    """A ``--since`` as an engineer types it: a duration back from ``now`` (``30m``,
    ``2h``, ``7d``) or a date or date and time, UTC unless it has an offset.

    >>> since_moment("2h", datetime(2026, 11, 28, 10, tzinfo=UTC))
    datetime.datetime(2026, 11, 28, 8, 0, tzinfo=datetime.timezone.utc)
    >>> since_moment("2026-11-28T09:00:00+01:00", datetime(2026, 11, 28, 10, tzinfo=UTC)).isoformat()
    '2026-11-28T08:00:00+00:00'
    """
    from adapter.rules import parse_duration
    from compliance.audit_export import parse_since

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = parse_since(text)
    except ValueError as exc:
        raise ValueError(f"{exc}, or a duration back from now (30m, 2h, 7d)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def sent_by(facility: str) -> ColumnElement[bool]:
    """Inbound messages from ``facility``: the sender as stored (``CUP^OSP_SLUCA``) or,
    for HL7, its sending facility alone (MSH-4, ``OSP_SLUCA``)."""
    return or_(InboundMessage.sender == facility, InboundMessage.sender.endswith("^" + facility, autoescape=True))


def of_type(message_type: str) -> ColumnElement[bool]:
    """Inbound messages of a type (``SIU``) or type and trigger (``SIU^S12``)."""
    return or_(InboundMessage.message_type == message_type,
               InboundMessage.message_type.startswith(message_type + "^", autoescape=True))


def received(sender: str | None, since: datetime | None, message_type: str | None) -> list[ColumnElement[bool]]:
    """Inbound messages from ``sender`` (:func:`sent_by`), received at or after ``since``,
    of ``message_type`` (:func:`of_type`); each left out when not given."""
    where: list[ColumnElement[bool]] = []
    if sender:
        where.append(sent_by(sender))
    if since is not None:
        where.append(InboundMessage.received_at >= since)
    if message_type:
        where.append(of_type(message_type))
    return where


@dataclass(frozen=True)
class ErrorFilter:
    """Which error-store messages: every one when no field is set.

    ``facility`` is the sender as listed (``CUP^OSP_SLUCA``) or its sending facility
    alone (MSH-4, ``OSP_SLUCA``); ``message_type`` a type (``SIU``) or type and
    trigger (``SIU^S12``); ``reason`` a piece of the reason, any case."""

    facility: str | None = None
    since: datetime | None = None
    message_type: str | None = None
    reason: str | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        where = [InboundMessage.status.in_(IN_STORE), *received(self.facility, self.since, self.message_type)]
        if self.reason:
            where.append(func.lower(InboundMessage.error).contains(self.reason.lower(), autoescape=True))
        return where

    def select_ids(self) -> Select[tuple[int]]:
        return select(InboundMessage.id).where(*self.clauses()).order_by(InboundMessage.id)


@dataclass(frozen=True)
class ErrorEntry:
    """One message in the error store, as listed; ``not_replayable`` says why it
    cannot be replayed (empty when it can)."""

    id: int
    source: str
    received_at: datetime
    sender: str
    control_id: str
    message_type: str
    status: str
    reason: str
    not_replayable: str

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "received_at": self.received_at.isoformat(),
                "sender": self.sender, "control_id": self.control_id, "type": self.message_type,
                "status": self.status, "reason": self.reason, "replayable": not self.not_replayable,
                "not_replayable": self.not_replayable}


def find_errors(session: Session, matching: ErrorFilter, *, limit: int, newest: bool) -> tuple[int, list[ErrorEntry]]:
    """How many messages match, and the first ``limit`` of them, oldest (or newest) first."""
    where = matching.clauses()
    total = session.scalar(select(func.count()).select_from(InboundMessage).where(*where)) or 0
    rows = session.execute(
        select(InboundMessage, raw_held(InboundMessage.id)).where(*where)
        .order_by(InboundMessage.id.desc() if newest else InboundMessage.id).limit(limit)
    ).all()
    return total, [
        ErrorEntry(row.id, row.source, row.received_at, row.sender, row.control_id, row.message_type, row.status,
                   row.error or "", not_replayable(replayable, row.raw_erased_at))
        for row, replayable in rows
    ]


def raw_held(message_id: int | ColumnElement[int]) -> ColumnElement[bool]:
    """Whether message ``message_id`` can be read again to replay it: a FHIR version
    always can (the store keeps it), an HL7 message while its raw bytes are kept."""
    return (InboundMessage.source != "hl7") | select(InboundRaw.message_id).where(
        InboundRaw.message_id == message_id).exists()


def not_replayable(held: bool, raw_erased_at: datetime | None) -> str:
    """Why a message in the error store cannot be replayed, or "" when it can."""
    if held:
        return ""
    return "raw erased with the patient (art. 17)" if raw_erased_at else "raw deleted after retention"


PROCESSED = "processed"
STILL_FAILING = "still failing: "
NO_SUCH_MESSAGE = "no such message"


def replay_outcomes(statuses: dict[int, str], reasons: dict[int, str]) -> dict[int, str]:
    """What to say of each replayed message, from the status replay left it in and the
    reason stored for those that failed again: ``processed``, ``still failing: why``,
    ``no such message``, or what replay said (not replayable, not in the error store)."""

    def said(message_id: int, status: str) -> str:
        if status in IN_STORE:
            return STILL_FAILING + (reasons.get(message_id) or status)
        return NO_SUCH_MESSAGE if status == "missing" else status

    return {message_id: said(message_id, status) for message_id, status in statuses.items()}


def outcome_code(outcome: str) -> str:
    """A replay's outcome (:func:`replay_outcomes`) as one word, for the audit log and
    the console: ``processed``, ``still_failing``, ``no_such_message`` or ``not_replayed``.

    >>> outcome_code("still failing: no start time"), outcome_code("raw deleted after retention")
    ('still_failing', 'not_replayed')
    """
    if outcome == PROCESSED:
        return "processed"
    if outcome.startswith(STILL_FAILING):
        return "still_failing"
    return "no_such_message" if outcome == NO_SUCH_MESSAGE else "not_replayed"


def audit_replays(container: Container, outcomes: dict[int, str], *, actor: str) -> None:
    """One ``hl7_replayed`` entry per message: who asked (``cli``, ``token:<id>:<role>``),
    which message and what came of it. Not about a patient (a replay may not reach one),
    and never the message's content or its stored reason."""
    from compliance.audit import AuditDraft

    now = container.clock.now()
    with transaction(container.sessions) as session:
        container.audit.append_many(session, [
            AuditDraft(action="hl7_replayed", actor=actor, subject_pseudonym="", at=now,
                       reason="replayed at an operator's request",
                       details={"message": message_id, "outcome": outcome_code(outcome)},
                       outcome="success" if outcome == PROCESSED else "minor_failure")
            for message_id, outcome in outcomes.items()
        ])


def replay(container: Container, message_ids: list[int], *, actor: str) -> dict[int, str]:
    """Process error-store messages (HL7 messages and FHIR versions) again, after a fix,
    each in its own transaction, and say what became of each (:func:`replay_outcomes`),
    in the order given; each is audited as asked for by ``actor`` (:func:`audit_replays`).
    A message not in the error store (processed since, or a duplicate) is not replayed,
    so its patient is not notified twice; one whose raw bytes are gone cannot be, and
    the outcome says why. ``hl7 replay`` and the console's Replay button."""
    ids = list(dict.fromkeys(message_ids))
    with read_transaction(container.sessions) as session:
        settled = dict(session.execute(select(InboundMessage.id, InboundMessage.status).where(
            InboundMessage.id.in_(ids), InboundMessage.status.notin_(("stored", *IN_STORE)))).all())
    gone = container.intake.without_raw(list(settled))  # purged or erased: replay says which
    settled = {i: status for i, status in settled.items() if i not in gone}
    todo = [i for i in ids if i not in settled]
    fhir = container.fhir.replay(todo)
    statuses = {**container.intake.replay([i for i in todo if i not in fhir]), **fhir,
                **{i: f"not replayed: it is {status}, not in the error store" for i, status in settled.items()}}
    with read_transaction(container.sessions) as session:
        reasons = dict(session.execute(select(InboundMessage.id, InboundMessage.error).where(
            InboundMessage.id.in_(ids), InboundMessage.status.in_(IN_STORE))).all())
    outcomes = replay_outcomes({i: statuses[i] for i in ids}, reasons)
    audit_replays(container, outcomes, actor=actor)
    return outcomes


def replay_summary(outcomes: dict[int, str]) -> list[str]:
    """The lines that close a replay: how many were processed and how many were not,
    then one line per reason they were not, most common first.

    >>> replay_summary({1: "processed", 2: "still failing: no start time", 3: "still failing: no start time"})
    ['3 messages: 1 processed, 2 not', '  2 still failing: no start time']
    """
    processed = sum(outcome == PROCESSED for outcome in outcomes.values())
    why = Counter(outcome for outcome in outcomes.values() if outcome != PROCESSED)
    return ([f"{len(outcomes)} messages: {processed} processed, {len(outcomes) - processed} not"]
            + [f"  {count} {outcome}" for outcome, count in why.most_common()])
