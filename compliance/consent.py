"""Consent evaluation: may this patient be messaged for this purpose on this channel now?

Pure: takes the patient's consent statements (rows of ``consent_record`` or anything with
the same attributes) and the purpose's lawful basis from ``config/purposes.yaml``.

The rules, in order (GDPR art. 4(11), 6, 7(3), 9, 21):

1. A FHIR Consent is a *set* of statements: only the newest set recorded from a given
   ``source_ref`` counts, and a set whose Consent became inactive counts for nothing.
2. A statement applies when its purpose and channel are the asked ones or ``"*"`` and its
   period contains ``at``. Asked for channel ``"*"`` (at scheduling, before a channel is
   chosen), the answer is whether the purpose is allowed on at least one channel: each
   channel a statement names is decided as if asked for it, and so is any other channel
   (where only ``"*"`` statements apply); the first allowed answer is given.
3. Consent must be *specific*: for a purpose that needs explicit consent, a permit for
   ``"*"`` (a START reply, a blanket permit) does not count; a deny for ``"*"`` does.
4. A newer statement that covers an older one replaces it (a STOP on SMS replaces an earlier
   permit for marketing on SMS: withdrawal is as easy as giving, art. 7(3)).
5. Of what remains, the most specific wins — channel-specific over ``"*"``, then
   purpose-specific over ``"*"`` — then the newest.
6. No applicable statement: purposes on a care, contract or legal basis are allowed; purposes
   that need explicit consent are not.

>>> from datetime import datetime, UTC
>>> from compliance.purposes import LawfulBasis
>>> care = LawfulBasis(purpose="care_reminder", code="care", articles="art. 9(2)(h)", explicit_consent=False)
>>> evaluate([], purpose="care_reminder", channel="sms", at=datetime.now(UTC), basis=care).allowed
True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from compliance.purposes import LawfulBasis

ANY = "*"


class ConsentStatement(Protocol):
    @property
    def id(self) -> int | None: ...
    @property
    def purpose(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def decision(self) -> str: ...
    @property
    def period_start(self) -> datetime | None: ...
    @property
    def period_end(self) -> datetime | None: ...
    @property
    def source(self) -> str: ...
    @property
    def source_ref(self) -> str: ...
    @property
    def active(self) -> bool: ...
    @property
    def recorded_at(self) -> datetime: ...


@dataclass(frozen=True)
class Statement:
    """A consent statement as a plain value (tests, previews, FHIR imports before storing)."""

    purpose: str
    channel: str
    decision: str
    recorded_at: datetime
    id: int | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    source: str = "api"
    source_ref: str = ""
    active: bool = True


@dataclass(frozen=True)
class ConsentDecision:
    allowed: bool
    reason: str
    record_id: int | None
    basis: str


def current(records: Iterable[ConsentStatement]) -> list[ConsentStatement]:
    """Rule 1: the statements still in force as sets (before periods are looked at)."""
    records = list(records)
    newest_set: dict[str, datetime] = {}
    for r in records:
        if r.source_ref and (r.source_ref not in newest_set or r.recorded_at > newest_set[r.source_ref]):
            newest_set[r.source_ref] = r.recorded_at
    return [r for r in records
            if r.active and (not r.source_ref or r.recorded_at == newest_set[r.source_ref])]


def evaluate(
    records: Iterable[ConsentStatement], *, purpose: str, channel: str, at: datetime, basis: LawfulBasis
) -> ConsentDecision:
    in_force = current(records)
    if channel != ANY:
        return _evaluate_on(in_force, purpose=purpose, channel=channel, at=at, basis=basis)
    named = sorted({r.channel for r in in_force if r.channel != ANY and _applies(r, purpose, r.channel, at)})
    decisions = [_evaluate_on(in_force, purpose=purpose, channel=c, at=at, basis=basis) for c in (*named, ANY)]
    return next((d for d in decisions if d.allowed), decisions[-1])


def _evaluate_on(
    in_force: list[ConsentStatement], *, purpose: str, channel: str, at: datetime, basis: LawfulBasis
) -> ConsentDecision:
    applicable = [r for r in in_force if _applies(r, purpose, channel, at)]
    if basis.explicit_consent:
        applicable = [r for r in applicable if not (r.decision == "permit" and r.purpose == ANY)]
    standing = [r for r in applicable if not any(_replaces(s, r) for s in applicable)]
    described = basis.describe()
    if not standing:
        if basis.explicit_consent:
            return ConsentDecision(False, f"no specific consent for {purpose} on {channel}", None, described)
        return ConsentDecision(True, f"{purpose} rests on {basis.code}; no objection on {channel}", None, described)
    winner = max(standing, key=lambda r: (r.channel != ANY, r.purpose != ANY, r.recorded_at, r.id or 0))
    allowed = winner.decision == "permit"
    verb = "permitted" if allowed else "denied"
    what = f"{winner.decision} {winner.purpose} on {winner.channel}"
    ref = f" ({winner.source_ref})" if winner.source_ref else ""
    reason = f"{verb} by consent record {winner.id}: {what}, from {winner.source}{ref}"
    return ConsentDecision(allowed, reason, winner.id, described)


def _applies(r: ConsentStatement, purpose: str, channel: str, at: datetime) -> bool:
    return (
        r.purpose in (purpose, ANY)
        and r.channel in (channel, ANY)
        and (r.period_start is None or r.period_start <= at)
        and (r.period_end is None or at < r.period_end)
    )


def _replaces(newer: ConsentStatement, older: ConsentStatement) -> bool:
    """Rule 4: ``newer`` was recorded later and covers all of ``older``'s scope. Statements
    of one set (one FHIR Consent, e.g. a deny with a nested permit) never replace each other."""
    if newer.source_ref and newer.source_ref == older.source_ref:
        return False
    return (
        (newer.recorded_at, newer.id or 0) > (older.recorded_at, older.id or 0)
        and newer.purpose in (older.purpose, ANY)
        and newer.channel in (older.channel, ANY)
    )
