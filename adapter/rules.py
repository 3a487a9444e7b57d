"""Trigger rules as data (``config/rules.yaml``) and the pure planning that turns
an event into the notifications to schedule and the pending ones to withdraw."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from adapter import events as ev
from adapter.config_files import load_yaml_config
from compliance.purposes import CodeMatch

Trigger = Literal[
    "appointment.booked",
    "appointment.rescheduled",
    "appointment.cancelled",
    "appointment.noshow",
    "appointment.fulfilled",
    "report.ready",
    "invoice.issued",
]

_UPCOMING = frozenset({"appointment.booked", "appointment.rescheduled", "appointment.cancelled"})
# Triggers whose later notices take it that the visit happened (not a cancellation's or a no-show's).
_VISIT = frozenset({"appointment.booked", "appointment.rescheduled", "appointment.fulfilled"})
# Kinds that invite the patient to book again: moot once they have (see moot_at_send).
RECALL_KINDS = frozenset({"recall"})
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``"24h"`` → 24 hours. Units: s, m, h, d."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 24h, 30m, 1d)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


class ReminderRule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    id: str
    when: Trigger
    kind: str
    immediately: bool = False
    before_start: timedelta | None = None
    after_start: timedelta | None = None
    at_local_time: time | None = None
    urgent: bool = False
    # Only appointments of these services (their service code, as code lists match in
    # config/purposes.yaml: code, system|code, prefix); None: every appointment.
    services: tuple[CodeMatch, ...] | None = None
    # A before_start notice whose moment had passed when the appointment was booked goes
    # out at once, if the appointment is still to come, instead of being suppressed; once
    # sent, a move of the appointment does not plan it again (once per appointment).
    catch_up: bool = False

    @field_validator("before_start", "after_start", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_timing(self) -> ReminderRule:
        given = [self.immediately, self.before_start is not None, self.after_start is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of immediately, before_start, after_start")
        if self.at_local_time and self.after_start is None:
            raise ValueError("at_local_time only goes with after_start")
        if self.catch_up and self.before_start is None:
            raise ValueError("catch_up only goes with before_start")
        if self.services is not None and not self.services:
            raise ValueError("services lists no service: list at least one, or leave it out for every service")
        if self.services is not None and not self.when.startswith("appointment."):
            raise ValueError("services only goes with an appointment trigger")
        if self.about_invoice and self.before_start is not None:
            raise ValueError("invoice.issued rules are timed after the issue date (after_start), not before it")
        return self

    def covers(self, service_code: str) -> bool:
        """Whether the rule applies to an appointment of ``service_code`` ("": not said,
        which only a rule without ``services`` covers)."""
        return self.services is None or any(match.matches(service_code) for match in self.services)

    @property
    def about_invoice(self) -> bool:
        """Its notice is about an invoice (a payment reminder), not an appointment."""
        return self.when == "invoice.issued"

    @property
    def recall(self) -> bool:
        """It invites the patient to book a check-up: moot once they have."""
        return self.kind in RECALL_KINDS

    @property
    def timed(self) -> bool:
        """Timed rules follow the appointment's start (moved on reschedule)."""
        return not self.immediately

    @property
    def about_what_is_to_come(self) -> bool:
        """It speaks of an appointment still to come: a reminder before the start, or what
        is said at once of a booking, a move or a cancellation. Rules after the start (a
        follow-up) are about the visit that took place, as are no-show and fulfilment."""
        return self.before_start is not None or (self.immediately and self.when in _UPCOMING)

    @property
    def about_the_visit(self) -> bool:
        """It speaks of the visit as having taken place: a follow-up after the start of
        a booked appointment, or what is said when one is fulfilled."""
        return not self.about_what_is_to_come and self.when in _VISIT


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[ReminderRule]

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return self

    def for_trigger(self, trigger: str) -> list[ReminderRule]:
        return [rule for rule in self.rules if rule.when == trigger]

    def by_id(self, rule_id: str) -> ReminderRule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)


MOVED = "the appointment was moved after it was planned; the reminder for the new time is planned apart"
BOOKED_AGAIN = "the patient has booked or had the same service since the visit"


def moot_at_send(rule: ReminderRule | None, *, start: datetime, status: str, now: datetime,
                 planned_for: datetime | None = None, time_known: bool = True,
                 booked_since: bool = False) -> str | None:
    """Why a notice of ``rule`` about an appointment (``start``, stored ``status``) must
    not go out at ``now`` though it was due: quiet hours, a provider's Retry-After or a
    backlog can hold it past the start, and what the hospital says next can come while
    a worker holds it. None when it may go. What speaks of an appointment to come is
    moot once it has started or been cancelled (a cancellation notice is what a
    cancelled appointment calls for); what speaks of the visit as having taken place
    (a follow-up) is moot when the patient did not come (a no-show: HL7 SIU^S26, FHIR
    ``noshow``) or the appointment was cancelled (or entered in error). A timed notice
    planned for another start (``planned_for``: the appointment has moved since) is moot:
    a reschedule plans the timed notices anew, and withdraws those still waiting, not one
    a worker already holds. A recall (``rule.recall``) is moot once the patient has booked
    or had the same service since the visit (``booked_since``). A rule no longer configured
    is not second-guessed.

    >>> from datetime import UTC
    >>> rule = ReminderRule(id="r", when="appointment.booked", kind="reminder", before_start="2h")
    >>> at = datetime(2026, 3, 10, 8, tzinfo=UTC)
    >>> moot_at_send(rule, start=at, status="booked", now=at)
    'the appointment had already started when it was due to be sent'
    >>> moot_at_send(rule, start=at, status="booked", now=at - timedelta(minutes=1)) is None
    True
    >>> follow_up = ReminderRule(id="f", when="appointment.booked", kind="follow_up", after_start="1d")
    >>> moot_at_send(follow_up, start=at, status="noshow", now=at + timedelta(days=1))
    'the patient did not come to the appointment'
    >>> recall = ReminderRule(id="y", when="appointment.fulfilled", kind="recall", after_start="335d")
    >>> moot_at_send(recall, start=at, status="fulfilled", now=at + timedelta(days=335), booked_since=True)
    'the patient has booked or had the same service since the visit'
    """
    if rule is None:
        return None
    if rule.timed and planned_for is not None and planned_for != start and status == "booked":
        return MOVED
    if rule.about_what_is_to_come:
        if started_from(start, time_known=time_known) <= now:
            return "the appointment had already started when it was due to be sent"
        if status == "cancelled" and rule.when != "appointment.cancelled":
            return "the appointment had been cancelled when it was due to be sent"
    elif rule.about_the_visit:
        if status == "noshow":
            return "the patient did not come to the appointment"
        if status == "cancelled":
            return "the appointment had been cancelled when it was due to be sent"
        if rule.recall and booked_since:
            return BOOKED_AGAIN
    return None


# Why pending payment reminders are withdrawn, by InvoiceSettled.reason.
_INVOICE_SETTLED = {"balanced": "invoice paid", "not-due": "invoice no longer due from the patient"}
# Why a payment reminder is not sent, by the invoice's state at send time.
_INVOICE_NOT_DUE = {
    "balanced": "the invoice had been paid when it was due to be sent",
    "cancelled": "the invoice had been cancelled when it was due to be sent",
    "entered-in-error": "the invoice had been entered in error when it was due to be sent",
    "deleted": "the invoice had been deleted when it was due to be sent",
    "not-due": "the invoice was no longer due from the patient when it was due to be sent",
}


def invoice_moot_at_send(status: str | None) -> str | None:
    """Why a notice about an invoice (a ``invoice.issued`` rule's) must not go out: the
    invoice, as stored now (``status``; None: no longer known), is no longer due from
    the patient. None while it is ``issued``: the amount is read from it at send time.

    >>> invoice_moot_at_send("balanced")
    'the invoice had been paid when it was due to be sent'
    >>> invoice_moot_at_send("issued") is None
    True
    """
    if status == "issued":
        return None
    if status is None:
        return "the invoice was no longer known when it was due to be sent"
    return _INVOICE_NOT_DUE.get(status, _INVOICE_NOT_DUE["not-due"])


def load_rules(path: Path) -> RuleSet:
    """Load and validate the rules file; a bad file raises ConfigError naming it
    and the field."""
    return load_yaml_config(path, RuleSet, "rules", place=_field)


def _field(data: object, loc: tuple) -> str:
    """A validation error's place, with the id of the rule: ``rules.7.services.0 (rule recall)``."""
    where = ".".join(str(part) for part in loc)
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int) and isinstance(data, dict):
        rules = data.get("rules")
        rule = rules[loc[1]] if isinstance(rules, list) and loc[1] < len(rules) else None
        if isinstance(rule, dict) and rule.get("id"):
            where += f" (rule {rule['id']})"
    return where


@dataclass(frozen=True)
class PlannedNotification:
    rule_id: str
    kind: str
    scheduled_for: datetime
    subject_ref: str
    urgent: bool
    too_late: bool  # its moment has passed: recorded as suppressed, never sent
    ahead_of_start: bool = False  # a reminder: it must go out before the appointment
    appointment_started: bool = False  # about an appointment to come that has started: suppressed, never sent
    catch_up: bool = False  # its rule catches up: once its moment has passed it goes at once (or when the window opens)


@dataclass(frozen=True)
class Plan:
    """What an event means for notifications: new ones, and which pending ones
    of the subject to withdraw (``withdraw_timed``: only those that follow the
    start; ``withdraw_all``: everything pending for the subject)."""

    notifications: tuple[PlannedNotification, ...] = ()
    withdraw_timed: bool = False
    withdraw_all: bool = False
    reason: str = ""


TRIGGERS: dict[type, str] = {
    ev.AppointmentBooked: "appointment.booked",
    ev.AppointmentRescheduled: "appointment.rescheduled",
    ev.AppointmentCancelled: "appointment.cancelled",
    ev.AppointmentNoShow: "appointment.noshow",
    ev.AppointmentFulfilled: "appointment.fulfilled",
    ev.ReportReady: "report.ready",
    ev.InvoiceIssued: "invoice.issued",
}


def rule_moment(rule: ReminderRule, *, start: datetime | None, now: datetime, tz: ZoneInfo) -> datetime:
    """When a rule fires for an appointment starting at ``start`` (for an invoice, the
    moment it was issued: ``after_start: 14d`` is 14 days after the issue date)."""
    if rule.immediately or start is None:
        return now
    if rule.before_start is not None:
        return start - rule.before_start
    assert rule.after_start is not None
    moment = start + rule.after_start
    if rule.at_local_time is not None:
        local = moment.astimezone(tz)
        moment = datetime.combine(local.date(), rule.at_local_time, tzinfo=tz).astimezone(start.tzinfo)
    return moment


def started_from(start: datetime, *, time_known: bool = True) -> datetime:
    """When an appointment counts as started: at its start, or for one given by its
    day only (``start`` is that day's 00:00), once that day is over.

    >>> from datetime import UTC
    >>> started_from(datetime(2026, 12, 1, tzinfo=UTC), time_known=False)
    datetime.datetime(2026, 12, 2, 0, 0, tzinfo=datetime.timezone.utc)
    """
    return start if time_known else start + timedelta(days=1)


def _planned(
    rule: ReminderRule, start: datetime | None, subject: str, now: datetime, tz: ZoneInfo, *, time_known: bool = True,
) -> PlannedNotification:
    moment = rule_moment(rule, start=start, now=now, tz=tz)
    caught_up = rule.catch_up and moment < now
    if caught_up:
        moment = now
    return PlannedNotification(
        rule_id=rule.id,
        kind=rule.kind,
        scheduled_for=moment,
        subject_ref=subject,
        urgent=rule.urgent,
        too_late=rule.timed and moment < now,
        ahead_of_start=rule.before_start is not None,
        appointment_started=(start is not None and started_from(start, time_known=time_known) <= now
                             and rule.about_what_is_to_come),
        catch_up=rule.catch_up,
    )


def plan_notifications(event: ev.Event, rules: RuleSet, *, now: datetime, tz: ZoneInfo,
                       sent_rules: Collection[str] = ()) -> Plan:
    """Pure: the notifications ``event`` calls for under ``rules`` at ``now``: those of
    the rules of its trigger that cover the appointment's service. ``sent_rules``: the
    rules whose notice about the appointment was already sent: on a reschedule, a
    ``catch_up`` rule among them is not planned again (its notice is given once per
    appointment: instructions do not change with the date, which the reschedule notice
    gives)."""
    if isinstance(event, ev.InvoiceSettled):
        return Plan(withdraw_all=True, reason=_INVOICE_SETTLED.get(event.reason, f"invoice {event.reason}"))
    trigger = TRIGGERS.get(type(event))
    if trigger is None:
        return Plan()
    start: datetime | None = None
    subject = ""
    time_known = True
    service_code = ""
    if isinstance(event, ev.ReportReady):
        subject = event.report_ref
    elif isinstance(event, ev.InvoiceIssued):
        start, subject = event.invoice.issued_at, event.invoice.ref
    elif hasattr(event, "appointment"):
        start = event.appointment.start  # type: ignore[attr-defined]
        subject = event.appointment.ref  # type: ignore[attr-defined]
        time_known = event.appointment.time_known  # type: ignore[attr-defined]
        service_code = event.appointment.service_code  # type: ignore[attr-defined]

    planned = [_planned(rule, start, subject, now, tz, time_known=time_known)
               for rule in rules.for_trigger(trigger) if rule.covers(service_code)]
    if isinstance(event, ev.AppointmentRescheduled):
        # The reschedule notice is immediate; the timed notices follow the new start.
        moved = [
            _planned(rule, start, subject, now, tz, time_known=time_known)
            for rule in rules.for_trigger("appointment.booked")
            if rule.timed and rule.covers(service_code) and not (rule.catch_up and rule.id in sent_rules)
        ]
        return Plan(tuple(planned + moved), withdraw_timed=True, reason="appointment rescheduled")
    if isinstance(event, ev.AppointmentCancelled):
        return Plan(tuple(planned), withdraw_all=True, reason=f"appointment {event.reason or 'cancelled'}")
    if isinstance(event, ev.AppointmentNoShow):
        return Plan(tuple(planned), withdraw_all=True, reason="patient did not show")
    return Plan(tuple(planned))
