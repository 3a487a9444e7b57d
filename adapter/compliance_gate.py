"""The core's one door into ``compliance/``: consent decisions at schedule and at
send time, audit entries for every decision, and the report-notice rules.

Pipeline and dispatcher call this; they never touch keys, the audit table or the
consent registry directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapter import events as ev
from adapter.errors import ConfigError
from adapter.models import Notification
from adapter.templates import TemplateBook
from compliance import consent_store as registry
from compliance.audit import SYSTEM_ACTOR, AuditDraft, AuditLog
from compliance.crypto import Vault
from compliance.purposes import CompliancePolicy, load_policy
from compliance.report_rules import ReportNoticeDecision, lint_templates, report_notice_allowed

_HELD = "compliance_gate.held_audit"  # session.info: drafts waiting for the end of ComplianceGate.audit_held


class ScheduledNotice(Protocol):
    """What the audit of a new notification records (a ``Notification`` row has it)."""

    @property
    def id(self) -> int: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def rule_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def scheduled_for(self) -> datetime: ...


@dataclass(frozen=True)
class Decision:
    """A consent decision as the core records it in the why-record."""

    allowed: bool
    reason: str
    purpose: str
    lawful_basis: str
    channel: str
    consent_record: int | None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # flat: asdict's deep copy is slow


class ComplianceGate:
    def __init__(self, *, vault: Vault, audit: AuditLog, policy: CompliancePolicy) -> None:
        self.vault = vault
        self.audit = audit
        self.policy = policy

    @classmethod
    def from_config(cls, *, vault: Vault, audit: AuditLog, config_dir: Path, templates: TemplateBook) -> ComplianceGate:
        policy = load_policy(config_dir / "purposes.yaml")
        policy.check_kinds(templates.kinds(templates.default_language))
        # Subject lines too: an e-mail's subject shows on a locked phone.
        sources = {**templates.sources, **{f"{tid}.subject": source for tid, source in templates.subject_sources.items()}}
        kinds = {name: name.split("/", 1)[1].removesuffix(".subject") for name in sources}
        problems = lint_templates(sources, kinds, policy.template_lint)
        if problems:
            raise ConfigError("; ".join(str(problem) for problem in problems))
        return cls(vault=vault, audit=audit, policy=policy)

    # -- consent -------------------------------------------------------------------

    def _decide(self, session: Session, patient_id: str, kind: str, channel: str, now: datetime) -> Decision:
        basis = self.policy.basis_for_kind(kind)
        verdict = registry.decide(session, self.policy, patient_id=patient_id, kind=kind, channel=channel, at=now)
        return Decision(verdict.allowed, verdict.reason, basis.purpose, basis.describe(), channel, verdict.record_id)

    def decide_at_schedule(self, session: Session, patient_id: str, kind: str, *, now: datetime) -> Decision:
        """At scheduling the channel is not chosen yet: the purpose must be allowed
        on at least one channel (``"*"``)."""
        return self._decide(session, patient_id, kind, "*", now)

    def decide_at_send(self, session: Session, patient_id: str, kind: str, channel: str, *, now: datetime) -> Decision:
        return self._decide(session, patient_id, kind, channel, now)

    def load_consent(self, session: Session, patient_ids: Iterable[str]) -> None:
        """Read these patients' consent histories with one query, for the decisions
        about to be made in this session."""
        registry.load_records(session, patient_ids)

    def patient_created(self, session: Session, patient_id: str) -> None:
        """A patient just created: no consent history to look up for them in this session."""
        registry.new_patient(session, patient_id)

    def consent_changed(self, session: Session, patient_id: str, event: ev.ConsentChanged, *, now: datetime) -> None:
        registry.apply_consent_event(session, patient_id, event, at=now)
        self._audit(session, "consent_changed", patient_id, f"consent {event.consent_ref}", now,
                    {"active": event.active, "provisions": len(event.provisions), "source": event.origin.source})
        self.recheck_pending(session, patient_id, now=now, by=event.origin.message_id)

    def recheck_pending(self, session: Session, patient_id: str, *, now: datetime, by: int | None = None) -> None:
        """A withdrawal cancels what is pending for purposes it now denies; ``by``: the
        inbound message that withdrew it, if one did."""
        pending = session.scalars(
            select(Notification).where(Notification.patient_id == patient_id, Notification.status == "scheduled")
        )
        for row in pending:
            decision = self.decide_at_schedule(session, patient_id, row.kind, now=now)
            if not decision.allowed:
                row.status, row.reason, row.status_at = "cancelled", f"consent withdrawn: {decision.reason}"[:200], now
                row.withdrawn_by = by
                row.decision = {**row.decision, "withdrawn": decision.as_dict()}
                self._audit(session, "suppressed", patient_id, row.reason, now, {"notification": row.id})

    def report_notice_allowed(
        self, session: Session, patient_id: str, event: ev.ReportReady, *, now: datetime
    ) -> ReportNoticeDecision:
        online = registry.decide(session, self.policy, patient_id=patient_id, kind="report_ready", channel="*", at=now)
        return report_notice_allowed(event.codes, online, self.policy.report_rules)

    def patients_merged(
        self, session: Session, keeper_id: str, retired_id: str | None, event: ev.PatientsMerged, *, now: datetime
    ) -> None:
        moved = registry.reassign(session, from_patient=retired_id, to_patient=keeper_id) if retired_id else 0
        self._audit(session, "received", keeper_id, "patients merged", now,
                    {"origin": event.origin.source, "sender": event.origin.sender,
                     "ref": event.origin.message_ref, "retired": f"patient:{retired_id}" if retired_id else "",
                     "consent_records_moved": moved})

    # -- audit of each decision ---------------------------------------------------------

    @contextmanager
    def audit_held(self, session: Session) -> Iterator[None]:
        """The audit entries this gate makes in ``session`` inside the block are appended
        together as it ends, in the order made: one multi-row insert for a round of
        decisions instead of one each. Nothing is appended when the block raises, and
        one entry refused (personal data) refuses the block: its caller undoes the
        block's savepoint and goes again one item at a time. Entries appended straight
        to the :class:`AuditLog` meanwhile would come first: make them here."""
        if _HELD in session.info:
            yield  # already held by an enclosing block
            return
        held: list[AuditDraft] = []
        session.info[_HELD] = held
        try:
            yield
        finally:
            del session.info[_HELD]
        self.audit.append_many(session, held)

    def _append(self, session: Session, drafts: list[AuditDraft]) -> None:
        held = session.info.get(_HELD)
        if held is None:
            self.audit.append_many(session, drafts)
        else:
            held.extend(drafts)

    def received(self, session: Session, patient_id: str, event: ev.Event, *, now: datetime) -> None:
        self._append(session, [self._received(patient_id, event, now)])

    def scheduled(self, session: Session, rows: Sequence[ScheduledNotice], *, now: datetime) -> None:
        """One entry per notification just created (scheduled or suppressed), appended together."""
        self._append(session, [self._scheduled(row, now) for row in rows])

    def received_and_scheduled(
        self, session: Session, handled: Sequence[tuple[str, ev.Event, Sequence[ScheduledNotice]]], *, now: datetime
    ) -> None:
        """Events applied together, each (patient id, event, its new notifications): the
        entries :meth:`received` and :meth:`scheduled` make for each, in order, in one append."""
        self._append(session, [
            draft
            for patient_id, event, rows in handled
            for draft in (self._received(patient_id, event, now), *(self._scheduled(row, now) for row in rows))
        ])

    def _received(self, patient_id: str, event: ev.Event, now: datetime) -> AuditDraft:
        return self._draft("received", patient_id, type(event).__name__, now,
                           {"source": event.origin.source, "sender": event.origin.sender, "ref": event.origin.message_ref})

    def _scheduled(self, row: ScheduledNotice, now: datetime) -> AuditDraft:
        return self._draft("scheduled" if row.status == "scheduled" else "suppressed", row.patient_id,
                           row.reason or row.rule_id, now,
                           {"notification": row.id, "kind": row.kind, "rule": row.rule_id,
                            "scheduled_for": row.scheduled_for.isoformat()})

    def withdrawn(self, session: Session, withdrawn: Sequence[tuple[int, str]], reason: str, *, now: datetime) -> None:
        """``withdrawn``: (notification id, patient id) of each notification just cancelled."""
        self._append(session, [
            self._draft("cancelled", patient_id, reason, now, {"notification": notification_id})
            for notification_id, patient_id in withdrawn
        ])

    def sent(self, session: Session, row: Notification, *, at: datetime) -> None:
        """The provider accepted ``row`` ``at`` (its ``sent_at``), whenever that is recorded."""
        self._audit(session, "sent", row.patient_id, f"sent by {row.channel}", at,
                    {"notification": row.id, "channel": row.channel, "template": row.template_id,
                     "template_version": row.template_version})

    def attempt_failed(self, session: Session, row: Notification, error: str, *, now: datetime) -> None:
        self._audit(session, "failed", row.patient_id, error, now, {"notification": row.id, "channel": row.channel},
                    outcome="minor_failure")

    def ended(self, session: Session, row: Notification, *, now: datetime) -> None:
        self._audit(session, row.status, row.patient_id, row.reason or "", now, {"notification": row.id})

    def status_changed(self, session: Session, row: Notification, *, now: datetime) -> None:
        action = "failed" if row.status == "failed" else "delivered"
        self._audit(session, action, row.patient_id, f"provider reported {row.status}", now, {"notification": row.id})

    def auth_failed(self, session: Session, path: str, *, now: datetime) -> None:
        self._audit(session, "auth_failed", "", "invalid bearer token", now, {"path": path[:200]},
                    outcome="minor_failure")

    def sender_refused(self, session: Session, facility: str, peer: str, *, now: datetime) -> None:
        """HL7 messages naming ``facility`` (MSH-4) came from a peer not among its senders."""
        self._audit(session, "hl7_sender_refused", "", "not among the facility's senders", now,
                    {"facility": facility, "peer": peer}, outcome="minor_failure")

    def appointments_erased(self, session: Session, refs: Iterable[str], *, actor: str, now: datetime) -> None:
        """The appointments of a patient being erased (art. 17): one ``erased`` entry each,
        whose subject is a keyed hash of the ref (:meth:`appointment_erased` finds it), so
        a message about one later is not mistaken for one never booked here. Nothing in
        them says whose the appointment was."""
        self._append(session, [
            AuditDraft(action="erased", actor=actor, subject_pseudonym=self._erased_appointment(ref), at=now,
                       reason="appointment of a patient erased (art. 17)")
            for ref in refs
        ])

    def appointment_erased(self, session: Session, ref: str) -> bool:
        """Whether appointment ``ref`` was erased with its patient (one indexed look-up)."""
        return any(self.audit.entries(session, subject=self._erased_appointment(ref), limit=1))

    def _erased_appointment(self, ref: str) -> str:
        return f"appointment:{self.vault.blind_index('appointment', ref)}"

    def _audit(self, session: Session, action: str, subject: str, reason: str, now: datetime,
               details: dict[str, Any], *, actor: str = SYSTEM_ACTOR, outcome: str = "success") -> None:
        self._append(session, [self._draft(action, subject, reason, now, details, actor=actor, outcome=outcome)])

    @staticmethod
    def _draft(action: str, subject: str, reason: str, now: datetime, details: dict[str, Any], *,
               actor: str = SYSTEM_ACTOR, outcome: str = "success") -> AuditDraft:
        pseudonym = f"patient:{subject}" if subject else ""
        return AuditDraft(action=action, actor=actor, subject_pseudonym=pseudonym, reason=reason,
                          details=details, at=now, outcome=outcome)
