"""When a non-urgent message may go out: not at night and not on Italian public
holidays, nor on the local holidays of the facility it is about (config/facilities.yaml,
``local_holidays``), in the clinic's time zone. Pure functions over plain values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from dateutil.easter import easter

from hl7.facilities import facility_of as hl7_facility_of

# Fixed national holidays (L. 260/1949 and later): New Year, Epiphany, Liberation,
# Labour Day, Republic Day, Assumption, All Saints, Immaculate Conception,
# Christmas, St Stephen.
FIXED_HOLIDAYS = {(1, 1), (1, 6), (4, 25), (5, 1), (6, 2), (8, 15), (11, 1), (12, 8), (12, 25), (12, 26)}
# Fixed national holidays added later, from the year they took effect: St Francis of
# Assisi, patron of Italy, 4 October (L. 151/2025, in force from 1 January 2026).
FIXED_HOLIDAYS_FROM = {(10, 4): 2026}


def italian_holidays(year: int) -> set[date]:
    """National public holidays of ``year``, including Easter Monday.

    >>> date(2026, 10, 4) in italian_holidays(2026), date(2025, 10, 4) in italian_holidays(2025)
    (True, False)
    """
    days = {date(year, month, day) for month, day in FIXED_HOLIDAYS}
    days |= {date(year, month, day) for (month, day), first in FIXED_HOLIDAYS_FROM.items() if year >= first}
    days.add(easter(year) + timedelta(days=1))
    days.add(easter(year))
    return days


def facility_of(source: str, sender: str) -> str:
    """The sending facility whose local holidays apply to what came from ``sender``: an HL7
    sender's MSH-4 (config/facilities.yaml); other sources have none (``default``'s apply)."""
    return hl7_facility_of(sender) if source == "hl7" else ""


@dataclass(frozen=True)
class SendingWindow:
    """Messages go out between ``start`` and ``end`` local time, on days that are
    not public holidays (unless ``holidays`` is off), national or local to the
    facility the message is about (``local_holidays``: month and day per facility,
    ``default`` for any other). ``start == end`` means at any hour."""

    tz: ZoneInfo
    start: time = time(8, 0)
    end: time = time(21, 0)
    holidays: bool = True
    local_holidays: Mapping[str, frozenset[tuple[int, int]]] = field(default_factory=dict)

    def closed_on(self, day: date, facility: str = "") -> bool:
        """A national holiday, or one of ``facility``'s own."""
        local = self.local_holidays.get(facility)
        if local is None:
            local = self.local_holidays.get("default", frozenset())
        return day in italian_holidays(day.year) or (day.month, day.day) in local

    def allows(self, moment: datetime, facility: str = "") -> bool:
        local = moment.astimezone(self.tz)
        if self.holidays and self.closed_on(local.date(), facility):
            return False
        return self.start == self.end or self.start <= local.time() < self.end

    def next_open(self, moment: datetime, facility: str = "") -> datetime:
        """The first moment at or after ``moment`` when sending is allowed."""
        if self.allows(moment, facility):
            return moment
        local = moment.astimezone(self.tz)
        day = local.date() if local.time() < self.start else local.date() + timedelta(days=1)
        for _ in range(30):
            candidate = datetime.combine(day, self.start, tzinfo=self.tz)
            if self.allows(candidate, facility):
                return candidate.astimezone(moment.tzinfo)
            day += timedelta(days=1)
        return moment  # a window that never opens is a configuration error; do not hold forever

    def last_open_before(self, moment: datetime, facility: str = "") -> datetime:
        """The latest allowed moment at or before ``moment``: a reminder due at
        night goes out the evening before rather than after the appointment."""
        if self.allows(moment, facility):
            return moment
        local = moment.astimezone(self.tz)
        day = local.date() if local.time() >= self.end else local.date() - timedelta(days=1)
        for _ in range(30):
            candidate = datetime.combine(day, self.end, tzinfo=self.tz) - timedelta(minutes=1)
            if self.allows(candidate, facility):
                return candidate.astimezone(moment.tzinfo)
            day -= timedelta(days=1)
        return moment
