"""FHIR intake: store a write, answer, process it after — the model of
:mod:`adapter.intake` for HL7.

A FHIR write (REST, Bundle entry, subscription, poll) stores its resource
version and, in the same transaction, an ``inbound_message`` row (source
``fhir``, control id ``Type/id/_history/N``, status ``stored``): the durable
record that the version's events are still to be published. The answer goes
back after the commit; the events are derived afterwards from the stored
version N and version N-1 (:meth:`fhir.service.FhirService.publish_version`)
and handed to the pipeline in one transaction with marking the row
``processed``. So:

- a crash between the answer and the processing loses nothing: rows left
  ``stored`` are processed at the next start, oldest first;
- a version is published once: the unique (type, id, version) of the stored
  versions and (source, sender, control id) of the rows, and the row status
  changed in the same transaction as the pipeline's work;
- per resource, versions are processed in the order they were stored (rows are
  processed by id), and a version older than one already processed is never
  replayed over it (``ignored``, superseded);
- a failure goes to the error store (``error`` and why, ``/api/messages``,
  ``hl7 errors``, ``hl7 replay``).

``fhir_processing: inline`` (ADAPTER_FHIR_PROCESSING) processes the row in the
write's own transaction instead, for senders who want the pipeline's refusal
(422) in the answer; the write is then rolled back with it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import event, insert, select
from sqlalchemy.orm import Session, sessionmaker

from adapter.clock import Clock
from adapter.waiting import Waiting
from adapter.db import read_transaction, transaction
from adapter.events import AnyEvent
from adapter.metrics import MESSAGES_RECEIVED
from adapter.models import InboundMessage
from adapter.storage_full import NOT_STORED, StorageFull, is_storage_full
from adapter.stored_work import chunk_for, process_all, stored_ids, take_turn_applying
from fhir import store
from fhir.service import FhirService, StoredVersion

log = logging.getLogger(__name__)

SOURCE = "fhir"

# Apply each version's events, each all or nothing: per version, None or the exception
# that undid it (Pipeline.handle_many).
PublishMany = Callable[[Session, list[list[AnyEvent]]], list[Exception | None]]
_WAKE = "adapter.fhir_intake.wake"
_RECEIVED = "adapter.fhir_intake.received"  # versions accepted in the transaction, for the metrics


def control_id(stored: StoredVersion) -> str:
    """The inbound message's control id of a stored version.

    >>> from datetime import UTC, datetime
    >>> control_id(StoredVersion("Appointment", "a1", 3, datetime(2030, 1, 1, tzinfo=UTC), {}))
    'Appointment/a1/_history/3'
    """
    return f"{stored.ref}/_history/{stored.version_id}"


def parse_control_id(value: str) -> tuple[str, str, int] | None:
    """``Type/id/_history/N`` → (type, id, N), else None.

    >>> parse_control_id("Patient/p1/_history/2")
    ('Patient', 'p1', 2)
    """
    parts = value.split("/")
    if len(parts) != 4 or parts[2] != "_history" or not parts[3].isdigit():
        return None
    return parts[0], parts[1], int(parts[3])


class FhirIntake:
    """Records stored FHIR versions (the service's ``accept``) and publishes
    their events afterwards, from the store."""

    def __init__(self, *, sessions: sessionmaker[Session], service: FhirService, clock: Clock,
                 publish_many: PublishMany, inline: bool = False,
                 on_stored: Callable[[], None] | None = None) -> None:
        self.sessions = sessions
        self.publish_many = publish_many
        self.clock = clock
        self.inline = inline
        self.on_stored = on_stored or (lambda: None)
        self.service = service
        self.in_flight = Waiting()  # requests a client is waiting on
        self._seconds_each = 0.002  # applying one version, timed on each chunk (chunk_for)
        service.accept = self.accept

    # -- in the write's transaction ------------------------------------------------

    def accept(self, session: Session, stored: StoredVersion, sender: str) -> None:
        if not session.info.get(_RECEIVED):  # counted in the metrics once committed
            event.listen(session, "after_commit", self._counted, once=True)
            event.listen(session, "after_rollback", self._uncounted, once=True)
        session.info[_RECEIVED] = session.info.get(_RECEIVED, 0) + 1
        row = {"source": SOURCE, "sender": sender[:200], "control_id": control_id(stored),
               "message_type": stored.resource_type, "received_at": stored.last_updated,
               "status": "stored", "duplicates": 0}
        if self.inline:
            message_id = session.connection().execute(
                insert(InboundMessage).returning(InboundMessage.id), row).scalar_one()
            self.service.publish_version(session, stored, sender, message_id=message_id)
            session.connection().execute(
                InboundMessage.__table__.update().where(InboundMessage.id == message_id)
                .values(status="processed", processed_at=self.clock.now()))
            return
        # Its control id names the version just stored: staged with the version's
        # row (one insert for all entries of a transaction Bundle, in their order).
        store.stage(session, InboundMessage.__table__, [row])
        if not session.info.get(_WAKE):
            session.info[_WAKE] = True
            event.listen(session, "after_commit", self._committed, once=True)
            event.listen(session, "after_rollback", self._forget, once=True)

    def _committed(self, session: Session) -> None:
        if session.info.pop(_WAKE, None):
            self.on_stored()

    @staticmethod
    def _forget(session: Session, *_: object) -> None:
        session.info.pop(_WAKE, None)

    @staticmethod
    def _counted(session: Session) -> None:
        MESSAGES_RECEIVED.labels(SOURCE, "accepted").inc(session.info.pop(_RECEIVED, 0))

    @staticmethod
    def _uncounted(session: Session, *_: object) -> None:
        session.info.pop(_RECEIVED, None)

    # -- after the answer -------------------------------------------------------------

    def pending_ids(self, limit: int = 500) -> list[int]:
        return stored_ids(self.sessions, SOURCE, limit)

    def process(self, message_id: int) -> str:
        """Publish one recorded version's events (again, for a replay), in one
        transaction with marking the row. Returns the final status."""
        with transaction(self.sessions) as session:
            take_turn_applying(session)
            row = session.get(InboundMessage, message_id, with_for_update=True)
            if row is None or row.source != SOURCE:
                return "missing"
            self._process_rows(session, [row], self.clock.now())
            return row.status

    def replay(self, message_ids: list[int]) -> dict[int, str]:
        """Process the FHIR versions among ``message_ids`` again (error store,
        after a fix); other ids are not ours and are left out of the answer."""
        with transaction(self.sessions) as session:
            ours = session.scalars(select(InboundMessage.id).where(
                InboundMessage.id.in_(message_ids), InboundMessage.source == SOURCE)).all()
        return {message_id: self.process(message_id) for message_id in sorted(ours)}

    def process_batch(self, message_ids: list[int], *, budget_s: float = 0.1,
                      give_way: Callable[[], bool] = lambda: False,
                      quiet_s: Callable[[], float] = lambda: math.inf, chunk: int = 16) -> int:
        """Process recorded versions a chunk at a time, until ``budget_s`` is spent or
        ``give_way()`` says requests wait; returns how many ids were handled. Each
        chunk's events are derived first, in a read transaction, then applied in a
        write transaction of its own (each version all or nothing). An HL7 ACK or a
        FHIR write waits for that transaction, so a chunk is as many versions
        (``chunk`` at most, one while a request waits) as take half the time the
        feeds have been quiet (``quiet_s()``, :func:`chunk_for`)."""
        done, began = 0, time.perf_counter()
        while done < len(message_ids):
            ids = message_ids[done : done + chunk_for(quiet_s(), self._seconds_each, chunk)]
            derived = self._derive(ids)
            applying = time.perf_counter()
            with transaction(self.sessions) as session:
                take_turn_applying(session)
                rows = session.scalars(
                    select(InboundMessage).where(InboundMessage.id.in_(ids), InboundMessage.status == "stored")
                    .order_by(InboundMessage.id).with_for_update()).all()
                self._process_rows(session, list(rows), self.clock.now(), derived)
            self._seconds_each = (time.perf_counter() - applying) / len(ids)
            done += len(ids)
            if time.perf_counter() - began > budget_s or give_way():
                break
        return done

    def _derive(self, ids: list[int]) -> dict[int, list[AnyEvent] | Exception]:
        """The events of each stored version among ``ids``, or why they could not be
        derived, without the write lock (versions never change once stored). A
        version found missing is left out: it is recorded as such under the lock."""
        derived: dict[int, list[AnyEvent] | Exception] = {}
        with read_transaction(self.sessions) as session:
            rows = session.execute(
                select(InboundMessage.id, InboundMessage.control_id, InboundMessage.sender)
                .where(InboundMessage.id.in_(ids), InboundMessage.status == "stored")).all()
            for message_id, value, sender in rows:
                if (events := self._events(session, message_id, value, sender)) is not None:
                    derived[message_id] = events
        return derived

    def _events(self, session: Session, message_id: int, value: str, sender: str) -> list[AnyEvent] | Exception | None:
        """The events of the stored version ``value`` (the control id of inbound message
        ``message_id``) names, or why they could not be derived; None when that version
        is missing."""
        found = parse_control_id(value)
        stored = found and store.version(session, self.service.codec, *found)
        if not stored:
            return None
        try:
            return self.service.events_of(session, stored, sender, message_id=message_id)
        except Exception as exc:  # noqa: BLE001 - stored in the error store, never lost
            return exc

    def process_pending(self, *, wait_quiet: Callable[[float], None] = lambda _took: None,
                        give_way: Callable[[], bool] = lambda: False,
                        quiet_s: Callable[[], float] = lambda: math.inf) -> int:
        """Process every recorded version not yet processed, oldest first."""
        return process_all(self.pending_ids,
                           lambda ids: self.process_batch(ids, give_way=give_way, quiet_s=quiet_s), wait_quiet)

    def _process_rows(self, session: Session, rows: list[InboundMessage], now: datetime,
                      derived: dict[int, list[AnyEvent] | Exception] | None = None) -> None:
        """Derive each version's events (or take them from ``derived``; a version
        that is missing, superseded or fails here ends with its reason), apply the
        rest together, record each outcome."""
        store.insert_staged(session)  # the core sees what is stored
        ready: list[tuple[InboundMessage, list[AnyEvent]]] = []
        for row in rows:
            if row.status not in ("stored", "error"):
                continue
            row.processed_at = now
            events = (derived or {}).get(row.id)
            if events is None:  # not derived beforehand (a replay), or missing
                events = self._events(session, row.id, row.control_id, row.sender)
            if events is None:
                row.status, row.error = "error", "the stored version is missing"
                continue
            found = parse_control_id(row.control_id)
            assert found is not None  # a version was found by it
            if (newer := self._newer_processed(session, row, *found)) is not None:
                row.status, row.error = "ignored", f"superseded by version {newer}, already processed"
            elif isinstance(events, Exception):
                self._failed(row, events)
            else:
                ready.append((row, events))
        outcomes = self.publish_many(session, [events for _, events in ready])
        for (row, _), failure in zip(ready, outcomes, strict=True):
            if failure is None:
                row.status, row.error = "processed", None
            else:
                self._failed(row, failure)

    @staticmethod
    def _failed(row: InboundMessage, failure: Exception) -> None:
        if is_storage_full(failure):  # not the version's: it stays stored, to be processed once there is room
            raise StorageFull(NOT_STORED) from failure
        if isinstance(failure, ValueError):  # the core refused it, saying why
            row.status, row.error = "error", f"The adapter refused the change: {failure}"[:500]
        else:
            log.error("processing FHIR version %s failed", row.id, exc_info=failure)
            row.status, row.error = "error", f"internal error: {type(failure).__name__}"

    @staticmethod
    def _newer_processed(session: Session, row: InboundMessage, resource_type: str, resource_id: str,
                         version_id: int) -> int | None:
        """The version number of a later version of the same resource already
        processed: replaying this one would undo it."""
        if store.latest_version_id(session, resource_type, resource_id) == version_id:
            return None  # no later version exists (an indexed look-up, unlike the search below)
        prefix = f"{resource_type}/{resource_id}/_history/"
        later = session.scalars(
            select(InboundMessage.control_id).where(
                InboundMessage.source == SOURCE, InboundMessage.id > row.id,
                InboundMessage.status == "processed",
                InboundMessage.control_id.startswith(prefix, autoescape=True))
        ).all()
        numbers = [n for value in later if (p := parse_control_id(value)) and
                   (n := p[2]) > version_id]
        return max(numbers) if numbers else None
