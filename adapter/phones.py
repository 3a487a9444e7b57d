"""Phone numbers, read once.

Three places read the same number of a new patient: the HL7 mapping (is it possible,
is it a mobile, its E.164 form), contact validation (is it valid) and the blind index
(its E.164 form). Each used to parse it with ``phonenumbers`` on its own, the later
two from the E.164 text the first produced. Here a number is parsed once and each
fact is worked out when first asked; a valid number is remembered under the E.164 text
it reads as too, so asking again with that parses nothing.

The facts are the ones ``phonenumbers`` gives; this module adds no rules of its own.
Like the caches it replaces, it keeps the most recent numbers in this process's memory
(never on disk, never in a log), at most :data:`REMEMBERED` of them.

>>> phone("333 123 4567", "IT").e164, phone("+393331234567", "IT").mobile
('+393331234567', True)
"""

from __future__ import annotations

from functools import cached_property

import phonenumbers

REMEMBERED = 8192


class Phone:
    """A number as ``phonenumbers`` reads it with ``region`` for numbers written
    without a country code; ``parsed`` is ``None`` when it cannot be read at all."""

    def __init__(self, parsed: phonenumbers.PhoneNumber | None) -> None:
        self.parsed = parsed

    @cached_property
    def e164(self) -> str | None:
        """``+<country><number>``, or ``None`` for an unreadable number."""
        if self.parsed is None:
            return None
        return phonenumbers.format_number(self.parsed, phonenumbers.PhoneNumberFormat.E164)

    @cached_property
    def possible(self) -> bool:
        """Of a length some number of that country has."""
        return self.parsed is not None and phonenumbers.is_possible_number(self.parsed)

    @cached_property
    def kind(self) -> int:
        """``phonenumbers.PhoneNumberType``: ``UNKNOWN`` for a number in no range of
        its country's plan (or unreadable)."""
        if self.parsed is None:
            return phonenumbers.PhoneNumberType.UNKNOWN
        return phonenumbers.number_type(self.parsed)

    @property
    def valid(self) -> bool:
        """In a range that country's numbering plan assigns: what
        ``phonenumbers.is_valid_number`` says, which is the number's type not being
        ``UNKNOWN`` (the same lookup, so a new patient's number is matched against
        the plan once, not twice; ~0.1 ms)."""
        return self.kind != phonenumbers.PhoneNumberType.UNKNOWN

    @property
    def mobile(self) -> bool:
        return self.kind == phonenumbers.PhoneNumberType.MOBILE


_READ: dict[tuple[str, str], Phone] = {}


def phone(text: str, region: str) -> Phone:
    """``text`` read as a phone number (see :class:`Phone`), from memory when it or
    the E.164 form it reads as was read before."""
    key = (text, region)
    found = _READ.get(key)
    if found is not None:
        return found
    try:
        read = Phone(phonenumbers.parse(text, region))
    except phonenumbers.NumberParseException:
        read = Phone(None)
    if len(_READ) >= REMEMBERED:
        _READ.clear()
    _READ[key] = read
    e164 = read.e164
    if e164 is not None and e164 != text and read.valid:
        # A valid number's E.164 text reads as the same number whatever the region (it
        # carries the country code). Not so for every other one: "+440000000000" reads
        # as +44000000000 (the 0 taken for the national prefix).
        _READ[(e164, region)] = read
    return read
