"""Sending claimed notifications: the one place that decides retries and failover,
the same way for every provider (STYLE.md "A channel, as we want it to look").

For each claimed notification: check consent again for each channel, pick the
patient's preferred reachable channel, render the template, make one attempt,
then record the outcome: ``sent``; a retryable error backs off with jitter; a
final error fails over to the next channel, or ends as ``failed``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from adapter.clock import Clock
from adapter.compliance_gate import ComplianceGate
from adapter.contact_check import load_preferences, ordered_channels
from adapter.db import all_or_each, read_transaction, transaction
from adapter.metrics import DISPATCH_OUTCOMES
from adapter.models import Appointment, Invoice, Notification, Patient
from adapter.patients import first_name, load_usable_contacts, reachable
from adapter.payments import PaymentConfig
from adapter.quiet_hours import SendingWindow, facility_of
from adapter.rules import RuleSet, invoice_moot_at_send, moot_at_send
from adapter.service_catalogue import INSTRUCTION_KINDS, ServiceCatalogue, hospital_appointment_id
from adapter.scheduler import claim_due, hold, release
from adapter.storage_full import is_storage_full
from adapter.reply_models import PatientReply
from adapter.templates import TemplateBook, money_text, when_text
from channels.base import Channel, OutboundMessage, Outcome, SendResult

log = logging.getLogger(__name__)

MAX_ATTEMPTS_PER_CHANNEL = 5
# One send attempt ends within this (or half the claim's lease, when shorter), and starts
# only while the lease has that long left: once the lease has run out another dispatcher
# may claim the notification again, and it must not find it still on the wire here
# (a provider such as WhatsApp or Telegram delivers a second request twice).
ATTEMPT_TIMEOUT = timedelta(seconds=30)
# A message that waited longer than this after its round was prepared (its channel's
# rate limit, a free slot) is looked at again just before it goes: a STOP, a "wrong
# number" or a cancellation may have come meanwhile, and consent counts as of the send.
RECHECK_AFTER_S = 1.0
# How long a notification waits when the provider refused the adapter's account
# (Outcome.REFUSED_ACCOUNT) before it is tried again; an operator fixes the settings.
REFUSED_ACCOUNT_WAIT = timedelta(minutes=5)
REFUSED_ACCOUNT = "the provider refused the adapter's account (credentials); waiting for an operator to fix it"
# Errors after which the provider may or may not have accepted the message.
AMBIGUOUS_ERRORS = frozenset({"timeout", "disconnected"})
# An outcome that could not be recorded is recorded again this long after, then twice as
# long each time up to the second figure (see Dispatcher._record_as_finished).
RECORD_RETRY_S = 0.2
RECORD_RETRY_MAX_S = 2.0


# What a notice can be about, each read for a whole round at once (Dispatcher._load_round):
# session.info[key] is {subject ref: the row or None}.
_SUBJECTS = {Appointment: "round_appointments", Invoice: "round_invoices"}
_Subject = TypeVar("_Subject", Appointment, Invoice)


def _notifications(session: Session, ids: list[int]) -> list[Notification]:
    """The notifications of ``ids`` into the session (``session.get`` finds them there),
    locked until the transaction ends (PostgreSQL; SQLite serialises writers): a claimer
    skips them, so whose claim each is cannot change while this transaction decides."""
    return list(session.scalars(select(Notification).where(Notification.id.in_(ids)).with_for_update()))


@dataclass(frozen=True)
class Clinic:
    name: str
    phone: str


@dataclass(frozen=True)
class NotSent:
    """No attempt was made; the notification goes back to the queue, and the next round
    prepares it again (and ends it, with its reason, when it no longer may be sent)."""

    reason: str


@dataclass(frozen=True)
class SendJob:
    notification_id: int
    channel: str
    message: OutboundMessage
    template_id: str
    template_version: str
    body: str


# A send's outcome, waiting to be recorded: the notification, what was sent (None: no
# attempt of ours, or it failed in our code), what came of it, and when the channel
# answered, by the adapter's clock (None: no answer); an acceptance is dated by it, not
# by when its record lands, which retries can make seconds later.
Finished = tuple[int, SendJob | None, SendResult | NotSent, datetime | None]


class Throttle:
    """A provider's rate limit: at most ``rate`` sends per second from this process,
    spaced evenly (the dispatcher alone throttles, the same way for every channel)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self, start_by: float = math.inf) -> bool:
        """Wait for this send's turn and return True; or False at once, leaving the
        turn to the next, when it would come after ``start_by`` (event loop time)."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            if max(self._next, loop.time()) > start_by:
                return False
            delay = self._next - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            # From the moment this send is let through, not from its planned slot:
            # a loop that woke late (a busy machine) must not let the next one
            # through sooner than the interval.
            self._next = loop.time() + self.interval
            return True


def _facility(row: Notification) -> str:
    """The facility whose local holidays the notification keeps: where its event came
    from, as its why-record says."""
    event = (row.decision or {}).get("event") or {}
    return facility_of(str(event.get("source", "")), str(event.get("sender", "")))


def _booked_since(session: Session, visit: Appointment) -> bool:
    """Whether the patient of ``visit`` has an appointment of the same service (any, when
    the visit's service is not known) starting after it, booked or fulfilled."""
    later = select(Appointment.id).where(
        Appointment.patient_id == visit.patient_id, Appointment.ref != visit.ref, Appointment.start > visit.start,
        Appointment.status.in_(("booked", "fulfilled")))
    if visit.service_code:
        later = later.where(Appointment.service_code == visit.service_code)
    return session.scalar(later.limit(1)) is not None


def _claimed_by(row: Notification | None, leased_until: datetime) -> bool:
    """Whether ``row`` is still the claim that runs out at ``leased_until`` (a later
    claim of it sets another ``claimed_until``)."""
    return row is not None and row.status == "claimed" and row.claimed_until == leased_until


def _internal(notification_id: int, exc: BaseException) -> SendResult:
    """A failure of ours while dispatching: logged, then retried like a provider's."""
    log.error("dispatch of notification %s failed", notification_id, exc_info=exc)
    return SendResult.retry("internal", type(exc).__name__)


async def _finished_meanwhile(finished: asyncio.Queue[Finished], *, running: bool,
                              within: float | None) -> list[Finished]:
    """What is in ``finished`` once one more outcome comes, or ``within`` seconds have
    passed (None: however long it takes); with no send ``running``, after those seconds."""
    outcomes = []
    if running:
        try:
            outcomes.append(await asyncio.wait_for(finished.get(), within))
        except TimeoutError:
            pass
    else:
        await asyncio.sleep(within or 0)
    while not finished.empty():
        outcomes.append(finished.get_nowait())
    return outcomes


def backoff(attempt: int, *, retry_after: float | None = None, base: float = 30.0, cap: float = 3600.0) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential with full jitter,
    never less than the provider's own Retry-After."""
    delay = random.uniform(0, min(cap, base * (2 ** max(attempt - 1, 0))))
    return max(delay, retry_after or 0.0, 1.0)


class Dispatcher:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        gate: ComplianceGate,
        templates: TemplateBook,
        channels: dict[str, Channel],
        preference: list[str],
        clock: Clock,
        clinic: Clinic,
        rules: RuleSet,
        services: ServiceCatalogue | None = None,
        batch_size: int = 50,
        lease: timedelta = timedelta(minutes=2),
        attempt_timeout: timedelta | None = None,
        concurrency: int = 32,
        window: SendingWindow | None = None,
        rate_limits: dict[str, float] | None = None,
        payments: PaymentConfig | None = None,
    ) -> None:
        self.sessions = sessions
        self.gate = gate
        self.templates = templates
        self.channels = channels
        self.preference = [name for name in preference if name in channels]
        self.clock = clock
        self.clinic = clinic
        self.rules = rules
        self.services = services or ServiceCatalogue()
        self.payments = payments or PaymentConfig()
        self.batch_size = batch_size
        self.lease = lease
        self.attempt_timeout = attempt_timeout or min(ATTEMPT_TIMEOUT, lease / 2)
        self._limit = asyncio.Semaphore(concurrency)
        self.window = window
        self._throttles = {name: Throttle(rate) for name, rate in (rate_limits or {}).items() if rate > 0}
        self.accounts_refused: dict[str, datetime] = {}  # channel → when its provider last refused our account
        self._refusal_logged: dict[str, datetime] = {}  # channel → when that was last logged
        # Set by ``serve``: whether an ACK or a FHIR request waits (see adapter/waiting.py).
        self.others_waiting: Callable[[], bool] = lambda: False
        # Set by ``serve``: before each transaction after a round's first, wait for a pause
        # in the feeds, told how long the one before took (adapter.runtime.give_way).
        self.wait_turn: Callable[[float], None] = lambda _took: None

    async def run_once(self) -> int:
        """Claim one batch of due notifications and send them; return how many."""
        now = self.clock.now()
        ids, leased_until = await asyncio.to_thread(self._claim, now)
        await self.deliver(ids, leased_until)
        return len(ids)

    async def deliver(self, ids: list[int], leased_until: datetime) -> None:
        """Send notifications claimed until ``leased_until`` (here, or by a Celery
        worker's claim loop). Safe to call twice for the same ids, and after the
        claim has run out: one no longer ``claimed``, or claimed again since (its
        ``claimed_until`` is another's), is skipped; no attempt starts unless it can
        end (``attempt_timeout``) before the lease does, so another dispatcher never
        claims one this one still has on the wire.

        The database sees a round, not each notification: every one is prepared in
        one transaction (a savepoint each), and outcomes are recorded as sends
        finish, everything finished meanwhile in one transaction (with SQLite each
        transaction is an fsync that a waiting ACK stands behind). It returns once
        every outcome is recorded: one that could not be is recorded again until it
        lands (:meth:`_record_as_finished`)."""
        if not ids:
            return
        prepared = await asyncio.to_thread(self._prepare_all, ids, leased_until)
        finished: asyncio.Queue[Finished] = asyncio.Queue()
        sends = []
        prepared_at, start_by = asyncio.get_running_loop().time(), self._start_by(leased_until)
        for notification_id, job in prepared:
            if isinstance(job, SendJob):
                sends.append(asyncio.create_task(
                    self._send(notification_id, job, leased_until, prepared_at, start_by, finished)))
            elif isinstance(job, Exception):
                finished.put_nowait((notification_id, None, _internal(notification_id, job), None))
        try:
            await self._record_as_finished(finished, len(sends) + finished.qsize(), leased_until)
        finally:
            for task in sends:
                task.cancel()  # stopped mid-round: the claims' leases end, the sends are retried

    async def _record_as_finished(self, finished: asyncio.Queue[Finished], count: int, leased_until: datetime) -> None:
        """Record the outcomes of ``count`` sends as they finish, everything finished
        meanwhile in one transaction; return once every one has landed.

        One that could not be recorded (its :meth:`_record` raised, or the transaction
        failed: the database locked or unavailable, the connection dropped) is kept and
        recorded again ``RECORD_RETRY_S`` later, then twice as long each time (at most
        ``RECORD_RETRY_MAX_S``), with whatever finished meanwhile, until it lands;
        :meth:`_record` writes it only while it is still this claim's to write (a
        provider's acceptance: while the notification is still claimed, by anyone).
        Left unrecorded, an accepted message's claim would run out still ``claimed``
        and the message go out again: no provider de-duplicates. Every outcome is kept
        alike, the others too (a time-out's record, ``unclear_on``, is what keeps a
        message the provider may have from going out on another channel); recording
        one again does nothing once it has landed (the notification is no longer
        ``claimed``), as when a failed commit had in fact gone through.

        What keeps a second sender off meanwhile: nobody may claim the notification
        again before its lease runs out, and a claim is a write, which the same outage
        mostly refuses; this round does not end meanwhile, so the in-process worker
        claims nothing. If the lease runs out first, the acceptance is still written
        over a later claim, and the dispatcher that made it finds the notification sent
        when it prepares it (or re-checks it, when its send waited).

        A full disk (:func:`is_storage_full`) refuses the outcome, which grows the row
        and adds an audit entry, yet may take a claim, a rewrite in place: so while an
        outcome waits for space its claim is held, extended a lease from each try
        (:meth:`_hold`, the same rewrite in place; what refuses it refuses a claim
        too), and it is never given up: space returns when an operator frees it, and
        then it lands. A second send remains possible only if this process ends before
        the outcome lands (at-least-once, as with any crash between the provider's
        answer and its record: milliseconds while the database answers), or if the
        database refuses this process's writes past the lease yet takes another's
        claim, or if recording keeps failing for another reason a whole lease past the
        claim's: it is then given up (logged), lest one outcome the database always
        refuses stop this process's sending for good."""
        # An outcome, how many times recording it failed, and whether the last time for want of space.
        unrecorded: list[tuple[Finished, int, bool]] = []
        held: dict[int, datetime] = {}  # notification → when its claim runs out, as held while its outcome waits
        delay = RECORD_RETRY_S
        give_up_at = leased_until + self.lease
        while count or unrecorded:
            outcomes = await _finished_meanwhile(finished, running=count > 0, within=delay if unrecorded else None)
            count -= len(outcomes)
            batch = [(outcome, 0, False) for outcome in outcomes] + unrecorded
            errors = await asyncio.to_thread(self._record_all, [outcome for outcome, *_ in batch], leased_until, held)
            kept = []
            for (outcome, failed, _), error in zip(batch, errors, strict=True):
                if error is None:
                    if failed:
                        log.warning("the outcome of notification %s was recorded after %d failed tries", outcome[0], failed)
                    continue
                failed, full = failed + 1, is_storage_full(error)
                if failed == 1:  # a full disk is logged once, when writes are first refused (adapter.storage_full)
                    log.error("recording the outcome of notification %s failed; trying again", outcome[0],
                              exc_info=None if full else error)
                elif failed & (failed - 1) == 0:  # 2, 4, 8, ... times: an outage is logged, not each try
                    log.error("recording the outcome of notification %s failed %d times (%s); trying again",
                              outcome[0], failed, type(error).__name__)
                kept.append((outcome, failed, full))
            if kept and self.clock.now() >= give_up_at:
                # A failure that never clears (a bug, a value the column refuses) would stop
                # every later round of this process: after a lease more, as before this retry.
                for (notification_id, *_), failed, _ in [entry for entry in kept if not entry[2]]:
                    log.error("gave up recording the outcome of notification %s after %d tries and a lease past"
                              " its claim; it may be sent again", notification_id, failed)
                kept = [entry for entry in kept if entry[2]]
            if waiting_for_space := [outcome[0] for outcome, _, full in kept if full]:
                await asyncio.to_thread(self._hold, waiting_for_space, leased_until, held)
            delay = min(2 * delay, RECORD_RETRY_MAX_S) if kept and unrecorded else RECORD_RETRY_S
            unrecorded = kept

    def _hold(self, ids: list[int], leased_until: datetime, held: dict[int, datetime]) -> None:
        """Extend the claims of ``ids`` (this round's, running out at ``leased_until``, or
        as ``held`` says) to a lease from now, and note it in ``held``; whose outcome
        waits for space. Refused too, it is tried again with the next try to record."""
        until = self.clock.now() + self.lease
        try:
            with transaction(self.sessions) as session:
                extended = [notification_id for notification_id in ids if hold(
                    session, notification_id, leased_until=held.get(notification_id, leased_until), until=until)]
        except Exception as exc:  # noqa: BLE001 - the claims stand as they were; tried again shortly
            if not is_storage_full(exc):
                log.warning("holding the claims of outcomes waiting for space failed (%s)", type(exc).__name__)
            return
        held.update(dict.fromkeys(extended, until))

    def _claim(self, now: datetime) -> tuple[list[int], datetime]:
        """Claim a batch; its ids, and when their lease runs out (the claim's token:
        a later claim of the same notification sets another ``claimed_until``)."""
        with transaction(self.sessions) as session:
            return claim_due(session, now=now, limit=self.batch_size, lease=self.lease), now + self.lease

    def _start_by(self, leased_until: datetime) -> float:
        """The event loop time after which an attempt would outlast the lease."""
        left = leased_until - self.attempt_timeout - self.clock.now()
        return asyncio.get_running_loop().time() + left.total_seconds()

    async def _send(self, notification_id: int, job: SendJob, leased_until: datetime, prepared_at: float,
                    start_by: float, finished: asyncio.Queue) -> None:
        """One attempt, or none (:class:`NotSent`) when a free slot or the channel's rate
        limit would start it too late for the lease, or when what it was prepared on
        changed while it waited."""
        loop = asyncio.get_running_loop()
        answered_at: datetime | None = None
        async with self._limit:
            try:
                throttle = self._throttles.get(job.channel)
                on_time = loop.time() <= start_by and (throttle is None or await throttle.wait(start_by))
                if not on_time:
                    finished.put_nowait((notification_id, job, NotSent("its claim's lease ran out before it could be sent"),
                                         None))
                    return
                if loop.time() - prepared_at > RECHECK_AFTER_S and not await asyncio.to_thread(
                        self._still_as_prepared, notification_id, job, leased_until):
                    finished.put_nowait((notification_id, job, NotSent("changed while it waited to be sent"), None))
                    return
                try:
                    async with asyncio.timeout(self.attempt_timeout.total_seconds()):
                        result = await self.channels[job.channel].send(job.message)
                except TimeoutError:
                    result = SendResult.retry("timeout", "no answer within the attempt's time")
                answered_at = self.clock.now()
                DISPATCH_OUTCOMES.labels(job.channel, result.outcome.value).inc()
            except Exception as exc:  # a bug or an outage must not lose the notification
                result, job = _internal(notification_id, exc), None  # type: ignore[assignment]
            finished.put_nowait((notification_id, job, result, answered_at))

    def _prepare_all(self, ids: list[int], leased_until: datetime) -> list[tuple[int, SendJob | Exception | None]]:
        """:meth:`_prepare` for each id; a failure is that notification's alone
        (recorded as an internal error)."""
        prepared = self._each_in_savepoint(ids, lambda session, notification_id: self._prepare(
            session, notification_id, leased_until), prefetch=self._load_round)
        return list(zip(ids, prepared, strict=True))

    def _record_all(self, outcomes: list[Finished], leased_until: datetime,
                    held: dict[int, datetime] | None = None) -> list[Exception | None]:
        """:meth:`_record` for each finished send, of the claim running out at
        ``leased_until`` (or as ``held`` says); for each, None once recorded, or why not."""
        held = held or {}
        try:
            done = self._each_in_savepoint(outcomes, lambda session, outcome: self._record(
                session, *outcome, leased_until=held.get(outcome[0], leased_until)),
                prefetch=lambda session, items: _notifications(session, [o[0] for o in items]))
        except Exception as exc:  # noqa: BLE001 - a transaction failed: none of them is known to have landed
            return [exc] * len(outcomes)
        return [result if isinstance(result, Exception) else None for result in done]

    def _each_in_savepoint(self, items: list, work: Callable[[Session, Any], Any],
                           prefetch: Callable[[Session, list], list] | None = None) -> list[Any]:
        """``work(session, item)`` for each item, each all or nothing (a failure is
        returned in its place), as few transactions as possible: a new one begins
        only when ``others_waiting()`` says an ACK or a request waits for the
        write lock, so it never waits behind a whole round. ``prefetch(session,
        items)`` loads the rows the items will ask for by primary key, in one query
        per table, at the start of each transaction (kept referenced until it ends:
        the session holds its rows weakly).

        The items of a transaction first go together in one savepoint (a savepoint
        each, with the flush before it, cost a third of a send); should one of them
        raise, that savepoint is undone and they go again a savepoint each, so a
        failure stays its own."""
        out: list[Any] = []
        window = len(items)
        took = None
        while len(out) < len(items):
            if took is not None:
                self.wait_turn(took)
            began = time.perf_counter()
            with transaction(self.sessions) as session:
                batch = items[len(out) : len(out) + window]
                loaded = prefetch(session, batch) if prefetch is not None else []  # noqa: F841 - held
                done = all_or_each(session, batch, lambda item: work(session, item),
                                   hold=lambda: self.gate.audit_held(session), stop=self.others_waiting,
                                   what="notifications of a dispatcher round")
            out.extend(done)
            # Cut short by a waiting ACK: the next transaction reads ahead for about as many
            # as this one did (reading the whole round again for each item held the lock
            # ~11 ms at p50 under a steady feed); grows back when not.
            window = 2 * len(done) if len(done) < len(batch) else 2 * window
            took = time.perf_counter() - began
        return out

    def _load_round(self, session: Session, ids: list[int]) -> list[Notification | Patient]:
        """What preparing ``ids`` reads for each, read for all at once: the notifications,
        their patients, the patients' consent histories, usable contacts and channel
        choices, and the appointments. Sound because preparing changes none of them
        but the notifications (a STOP or a new contact comes in a transaction of its
        own), and the session they are kept in ends with the transaction."""
        notifications = _notifications(session, ids)
        patient_ids = {n.patient_id for n in notifications}
        self.gate.load_consent(session, patient_ids)
        load_usable_contacts(session, list(patient_ids))
        refs = {n.subject_ref for n in notifications}
        subjects = []
        for model, key in _SUBJECTS.items():
            rows = list(session.scalars(select(model).where(model.ref.in_(refs))))
            session.info[key] = {ref: None for ref in refs} | {row.ref: row for row in rows}
            subjects += rows
        return [*notifications, *subjects, *load_preferences(session, patient_ids),
                *session.scalars(select(Patient).where(Patient.id.in_(patient_ids)))]

    def _prepare(self, session: Session, notification_id: int, leased_until: datetime) -> SendJob | None:
        """Pick channel and contact, render; or end the notification with its reason.
        Nothing for one no longer claimed by the claim that runs out at ``leased_until``."""
        now = self.clock.now()
        row = session.get(Notification, notification_id)
        if not _claimed_by(row, leased_until) or now >= leased_until:
            return None
        moot = self._moot(session, row, now)
        if moot is not None:
            rule = self.rules.by_id(row.rule_id)
            about = "invoice" if rule is not None and rule.about_invoice else "appointment"
            row.decision = {**row.decision, "at_send": {about: moot}}
            self._end(session, row, "suppressed", moot, now)
            return None
        if self._window_closed(row, now):
            # Quiet hours or a public holiday: back to the queue until the window opens.
            release(session, row.id, at=self.window.next_open(now, _facility(row)), now=now,  # type: ignore[union-attr]
                    error="waiting for the sending window")
            return None
        patient = session.get(Patient, row.patient_id)
        if patient is None:
            self._end(session, row, "failed", "patient no longer exists", now)
            return None
        candidates = [c for c in ordered_channels(session, patient, self.preference) if c not in row.tried_channels]
        denied: list[str] = []
        for contact in reachable(session, self.gate.vault, patient.id, candidates):
            decision = self.gate.decide_at_send(session, patient.id, row.kind, contact.channel, now=now)
            if not decision.allowed:
                denied.append(decision.reason)
                row.decision = {**row.decision, "at_send": {"channel": contact.channel, "consent": decision.as_dict()}}
                continue
            context = self._context(session, patient, row)
            rendered = self.templates.render(row.kind, patient.language, context)
            row.channel = contact.channel
            row.decision = {
                **row.decision,
                "at_send": {
                    "channel": contact.channel,
                    "consent": decision.as_dict(),
                    "template": rendered.template_id,
                    "template_version": rendered.template_version,
                },
            }
            language = rendered.template_id.split("/")[0]
            message = OutboundMessage(
                to=contact.address,
                body=rendered.body,
                subject=rendered.subject or self.clinic.name,
                idempotency_key=row.idempotency_key,
                language=language,
                urgent=row.urgent,
                **self._whatsapp_fields(session, patient, row, context, language, contact.channel),
            )
            return SendJob(row.id, contact.channel, message, rendered.template_id, rendered.template_version, rendered.body)
        if denied:
            self._end(session, row, "suppressed", denied[0], now)
        elif row.tried_channels:
            self._end(session, row, "failed", f"every channel failed ({', '.join(row.tried_channels)})", now)
        else:
            self._end(session, row, "suppressed", "no usable contact for any live channel", now)
        return None

    def _whatsapp_fields(
        self, session: Session, patient: Patient, row: Notification, context: dict, language: str, channel: str
    ) -> dict:
        """WhatsApp allows free text only within 24 hours of the patient's last
        message; outside it, the pre-approved template named after the kind, with
        its parameters: first name, clinic, and the appointment time when there is one
        (for a payment reminder, the amount as written in the message)."""
        if channel != "whatsapp":
            return {}
        last = session.scalar(
            select(func.max(PatientReply.received_at)).where(
                PatientReply.patient_id == patient.id, PatientReply.channel == "whatsapp"
            )
        )
        params = [context["patient"]["first_name"] or "-", self.clinic.name]
        start = context["appointment"].get("start")
        if start is not None:
            params.append(when_text(start, language, self.templates.tz))
        if "invoice" in context:
            params.append(money_text(context["invoice"]["amount"], context["invoice"]["currency"], language))
        return {"template": row.kind, "template_params": tuple(params), "last_inbound_at": last}

    def _moot(self, session: Session, row: Notification, now: datetime) -> str | None:
        """Why the notice no longer makes sense (its appointment has started, or was
        cancelled; a recall whose service the patient has booked again; its invoice was
        paid or cancelled), or None; checked at send time as at scheduling time."""
        rule = self.rules.by_id(row.rule_id)
        if rule is not None and rule.about_invoice:
            invoice = self._subject(session, Invoice, row)
            return invoice_moot_at_send(invoice.status if invoice is not None else None)
        appointment = self._subject(session, Appointment, row)
        if appointment is None:
            return None
        planned_for = (row.decision or {}).get("rule", {}).get("appointment_start")
        moot = moot_at_send(rule, start=appointment.start, status=appointment.status, now=now,
                            planned_for=datetime.fromisoformat(planned_for) if planned_for else None,
                            time_known=appointment.time_known,
                            booked_since=rule is not None and rule.recall and _booked_since(session, appointment))
        if moot is None and row.kind in INSTRUCTION_KINDS and self.services.find(appointment.service_code) is None:
            return "no pre-visit instructions are configured for the appointment's service (services.yaml)"
        return moot

    def _still_as_prepared(self, notification_id: int, job: SendJob, leased_until: datetime) -> bool:
        """Whether what :meth:`_prepare` decided for ``job`` still holds, read afresh: the
        claim is still this round's, the sending window still open (a rate limit can hold
        a message past its close), the notice not moot, the patient's consent for the
        kind on the channel not withdrawn, and the address still in use (not suspended
        by a STOP or a wrong number). A read: on SQLite it takes no write lock, which
        the ACKs of a feed would wait for."""
        with read_transaction(self.sessions) as session:
            now = self.clock.now()
            row = session.get(Notification, notification_id)
            if not _claimed_by(row, leased_until) or self._window_closed(row, now):
                return False
            if self._moot(session, row, now) is not None:
                return False
            if not self.gate.decide_at_send(session, row.patient_id, row.kind, job.channel, now=now).allowed:
                return False
            in_use = reachable(session, self.gate.vault, row.patient_id, [job.channel])
            return any(contact.address == job.message.to for contact in in_use)

    def _window_closed(self, row: Notification, now: datetime) -> bool:
        """Whether a non-urgent notice must wait: quiet hours, or a holiday (national, or
        local to the facility its event came from)."""
        return self.window is not None and not row.urgent and not self.window.allows(now, _facility(row))

    @staticmethod
    def _subject(session: Session, model: type[_Subject], row: Notification) -> _Subject | None:
        """The appointment or invoice (``model``) the notice is about: as read for the
        round, else read now."""
        loaded = session.info.get(_SUBJECTS[model], {})
        if row.subject_ref in loaded:
            return loaded[row.subject_ref]
        return session.scalar(select(model).where(model.ref == row.subject_ref))

    def _context(self, session: Session, patient: Patient, row: Notification) -> dict:
        appointment = self._subject(session, Appointment, row)
        context = {
            "patient": {"first_name": first_name(session, self.gate.vault, patient)},
            "clinic": {"name": self.clinic.name, "phone": self.clinic.phone},
            "appointment": {"start": appointment.start, "time_known": appointment.time_known,
                            "location": appointment.location} if appointment else {},
            "visit": self._visit(appointment, self.templates.pick_language(patient.language)),
        }
        invoice = self._subject(session, Invoice, row)
        if invoice is not None:
            # As the invoice stands now: a total changed since the reminder was planned is the one asked for.
            details = json.loads(self.gate.vault.decrypt_str(session, invoice.details_enc))
            context["invoice"] = {"amount": Decimal(details["amount"]), "currency": details["currency"],
                                  "number": details["number"]}
            context["payment"] = {"link": self.payments.link(issuer=details["issuer"], invoice_number=details["number"],
                                                             notice_code=details["notice_code"])}
        return context

    def _visit(self, appointment: Appointment | None, language: str) -> dict[str, str]:
        """The pre-visit instructions of the appointment's service in ``language``, and its
        questionnaire link (both "" when services.yaml has none)."""
        info = self.services.find(appointment.service_code) if appointment is not None else None
        if info is None or appointment is None:
            return {"instructions": "", "form_link": ""}
        appointment_id = hospital_appointment_id(appointment.ref, appointment.source, appointment.sender)
        return {"instructions": info.instructions.get(language) or info.instructions[self.templates.default_language],
                "form_link": info.form_link(appointment_id, language)}

    def _record(self, session: Session, notification_id: int, job: SendJob | None, result: SendResult | NotSent,
                answered_at: datetime | None, *, leased_until: datetime) -> None:
        """The outcome of one attempt, or of none. What a provider accepted is recorded
        whoever claims the notification now, as sent when the channel answered
        (``answered_at``: ``sent_at`` and the audit entry), the status changed now;
        anything else only while the claim is still this round's."""
        now = self.clock.now()
        row = session.get(Notification, notification_id)
        if row is None or row.status != "claimed":
            return
        accepted = isinstance(result, SendResult) and result.outcome is Outcome.ACCEPTED and job is not None
        if row.claimed_until != leased_until and not accepted:
            return  # its lease ran out and it was claimed again: the new claim decides
        if isinstance(result, NotSent):
            # The next round decides afresh; what this one decided at send must not outlive it.
            row.decision = {key: value for key, value in row.decision.items() if key != "at_send"}
            release(session, row.id, at=now, now=now, error=result.reason)
            return
        row.attempts += 1
        if result.outcome is Outcome.ACCEPTED and job is not None:
            sent_at = answered_at or now
            row.status, row.status_at, row.sent_at = "sent", now, sent_at
            row.provider_message_id = result.provider_message_id
            row.template_id, row.template_version = job.template_id, job.template_version
            row.segments = result.segments
            row.cost = float(result.cost) if result.cost is not None else None
            row.body_enc = self.gate.vault.encrypt_str(session, f"patient:{row.patient_id}", job.body)
            row.claimed_until = None
            self.gate.sent(session, row, at=sent_at)
            return
        error = f"{result.error_code or ''} {result.error_text or ''}".strip()[:200]
        channel = job.channel if job is not None else (row.channel or "internal")
        if result.outcome is Outcome.REFUSED_ACCOUNT:
            # Not this patient's failure, and every send on the channel meets it: no
            # attempt counted, no failover, no end; it waits, and the operator is told.
            self._account_refused(channel, result.error_code or "", now)
            release(session, row.id, at=now + REFUSED_ACCOUNT_WAIT, now=now, error=f"{REFUSED_ACCOUNT} ({error})")
            return
        tries = dict(row.decision.get("attempts_by_channel", {}))
        tries[channel] = tries.get(channel, 0) + 1
        unclear = set(row.decision.get("unclear_on", []))
        if job is not None and result.error_code in AMBIGUOUS_ERRORS:
            unclear.add(channel)  # the provider may have taken it before the line went quiet
        row.decision = {**row.decision, "attempts_by_channel": tries, "unclear_on": sorted(unclear)}
        if result.outcome is Outcome.RETRYABLE and tries[channel] < MAX_ATTEMPTS_PER_CHANNEL:
            at = now + timedelta(seconds=backoff(tries[channel], retry_after=result.retry_after_s))
            release(session, row.id, at=at, now=now, error=error)
            return
        row.last_error = error
        if job is None:
            # Our own failure, retries used up: end it rather than loop on it.
            self._end(session, row, "failed", f"internal error after {tries[channel]} attempts: {error}", now)
            return
        if channel in unclear:
            # Failing over could deliver the message twice (the idempotency key
            # protects one provider only): stop and say why.
            self._end(session, row, "failed", f"undetermined: a time-out left it unclear whether {channel} "
                      "delivered it, so it is not sent again by another channel", now)
            return
        self.fail_over(session, row, channel, error, now=now)

    def _account_refused(self, channel: str, code: str, now: datetime) -> None:
        """Remember when ``channel``'s provider last refused our account (``/health/ready``
        reports it) and log it, once a minute per channel at most."""
        self.accounts_refused[channel] = now
        logged = self._refusal_logged.get(channel)
        if logged is None or now - logged >= timedelta(minutes=1):
            self._refusal_logged[channel] = now
            log.error("%s: the provider refused the adapter's account (code %s); its notifications wait "
                      "until the channel's settings are fixed", channel, code)

    def fail_over(self, session: Session, row: Notification, channel: str, error: str, *, now: datetime) -> None:
        """A final error on ``channel``, answered to the send (``row`` claimed) or reported
        later by the provider's status callback (``row`` sent): the patient's next channel
        is tried at once by the next claim; with none left, :meth:`_prepare` ends it failed."""
        row.last_error = error[:200]
        row.tried_channels = [*row.tried_channels, channel]
        release(session, row.id, at=now, now=now, error=error, was=row.status)
        self.gate.attempt_failed(session, row, error, now=now)

    def _end(self, session: Session, row: Notification, status: str, reason: str, now: datetime) -> None:
        row.status, row.reason, row.status_at, row.claimed_until = status, reason[:200], now, None
        self.gate.ended(session, row, now=now)


async def run_forever(
    dispatcher: Dispatcher,
    *,
    interval: float,
    stop: asyncio.Event,
    give_way: Callable[[], None] | None = None,
) -> None:
    """The in-process worker: poll for due notifications until ``stop`` is set.
    ``give_way`` (blocking, run in a thread) lets inbound messages waiting for
    their ACK be stored first."""
    while not stop.is_set():
        if give_way is not None:
            await asyncio.to_thread(give_way)
        try:
            sent = await dispatcher.run_once()
        except Exception as exc:
            if not is_storage_full(exc):  # a full disk is logged once, when writes are first refused
                log.exception("dispatcher round failed; retrying")
            sent = 0
        if sent == 0:
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass
