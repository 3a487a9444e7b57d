"""HL7 v2 data types the mapper reads: TS/DTM, CX, XTN, CE language codes
(HL7 v2.5 §2.A). Pure functions from ``hl7.message`` values to adapter values.

>>> from zoneinfo import ZoneInfo
>>> parse_ts("202503100930", ZoneInfo("Europe/Rome")).isoformat()
'2025-03-10T08:30:00+00:00'
>>> parse_ts("20250310093000.123+0200", ZoneInfo("Europe/Rome")).isoformat()
'2025-03-10T07:30:00.123000+00:00'
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo

from adapter.events import ContactPoint, Identifier
from adapter.phones import phone
from hl7.message import Repetition

# HL7 v2.5 §2.5.3: a field sent as ``""`` deletes the value the receiver holds, where an
# empty field leaves it as it is.
NULL = '""'

_TS = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$"
)


def parse_ts(value: str, local_zone: tzinfo) -> datetime | None:
    """A TS/DTM (HL7 v2.5 §2.A.77, §2.A.22) as an aware UTC datetime.
    ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``; without an offset the
    value is local time in ``local_zone``. Empty, or the HL7 null ``""`` (a time
    deleted is a time not given), gives ``None``; anything else unreadable raises
    ``ValueError``. Only the first component (TS-1) is read."""
    value = value.strip()
    if not value or value == NULL:
        return None
    m = _TS.match(value)
    if not m:
        raise ValueError(f"not an HL7 timestamp: {value!r}")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    micro = int((frac or "0").ljust(6, "0")[:6])
    dt = datetime(
        int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
        int(second or 0), micro,
    )
    if offset:
        sign = 1 if offset[0] == "+" else -1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        if delta >= timedelta(hours=24):
            raise ValueError(f"not a UTC offset: {offset!r}")
        dt = dt.replace(tzinfo=timezone(sign * delta))
    else:
        dt = dt.replace(tzinfo=local_zone)
    return dt.astimezone(timezone.utc)


def ts_has_time(value: str) -> bool:
    """Whether a TS/DTM names a time of day, not only a day (HL7 v2.5 §2.A.77: the
    precision is the length; ``YYYYMMDD`` and shorter are days), read as
    :func:`parse_ts` reads it.

    >>> ts_has_time("20261201"), ts_has_time("20261201-0500"), ts_has_time("202612010930+0100")
    (False, False, True)
    """
    match = _TS.match(value.strip())
    return match is not None and match.group(4) is not None


def identifier_from_cx(cx: Repetition, facility: str) -> Identifier:
    """A CX (HL7 v2.5 §2.A.14): CX-1 id, CX-4 assigning authority (HD-1, or
    HD-2 universal id), CX-5 identifier type code.

    Without CX-4 an id is only unique within the sender that assigned it: two
    hospitals may both send ``12345^^^^MR`` for different people. Such an id is
    qualified by ``facility`` (the sender's MSH-4) and marked ``authority_assumed``.

    >>> from hl7.message import parse
    >>> pid = parse("MSH|^~\\\\&|CUP|OSP_A\\rPID|1||12345^^^^MR").segment("PID")
    >>> identifier_from_cx(pid.repetitions(3)[0], "OSP_A")
    Identifier(system='OSP_A', value='12345', kind='MR', authority_assumed=True)
    """
    authority = cx.component(4, 1) or cx.component(4, 2)
    value, kind = cx.component(1).strip(), cx.component(5)
    if not authority.strip():
        return Identifier(system=facility, value=value, kind=kind, authority_assumed=True)
    return Identifier(system=authority, value=value, kind=kind)


# XTN-2 telecommunication use code (table 0201) → FHIR ContactPoint.use
_USE = {"PRN": "home", "ORN": "home", "VHN": "temp", "WPN": "work", "BPN": ""}
# Numbers that reach someone else for the patient (a relative to call in an emergency,
# an answering service): telling them of a visit would tell a third party of the
# patient's care, so they are no way to message the patient.
_SOMEONE_ELSE = frozenset({"EMR", "ASN"})


def contact_from_xtn(xtn: Repetition, *, business: bool, region: str) -> ContactPoint | None:
    """An XTN (HL7 v2.5 §2.A.89) as a ContactPoint, or ``None`` when empty.

    XTN-2 ``NET`` or XTN-3 ``Internet``/``X.400`` is an e-mail in XTN-4
    (older senders put it in XTN-1), and so is an address in XTN-4 of an XTN
    that gives no number. Otherwise a phone: XTN-12 unformatted, or
    XTN-5/6/7 (+country, area, local), or XTN-1; ``CP`` equipment (table 0202)
    makes it ``mobile``, and so does a number ``phonenumbers`` knows to be
    mobile when the equipment is ``PH`` (telephone: mobile or fixed, it does not
    say; many PAS record every number so) or not given. Numbers are E.164 where
    possible."""
    use_code = xtn.component(2).upper()
    equipment = xtn.component(3).upper()
    if use_code == "NET" or equipment in ("INTERNET", "X.400"):
        address = (xtn.component(4) or xtn.component(1)).strip()
        if "@" not in address:
            return None
        return ContactPoint(system="email", value=address, use="work" if business else "home")
    number = _phone_number(xtn)
    if not number:
        address = xtn.component(4).strip()  # an address without the codes (optional before v2.7)
        if "@" not in address:
            return None
        return ContactPoint(system="email", value=address, use="work" if business else "home")
    e164, is_mobile = _normalise_phone(number, region)
    if equipment == "CP" or (equipment in ("", "PH") and is_mobile):
        use = "mobile"
    elif equipment == "FX":
        return ContactPoint(system="other", value=e164, use="work" if business else "home")
    else:
        use = "work" if business else _USE.get(use_code, "home")
    return ContactPoint(system="phone", value=e164, use=use)


def email_beside(xtn: Repetition, contact: ContactPoint, *, business: bool) -> ContactPoint | None:
    """The e-mail address in XTN-4 of an XTN whose number ``contact`` is: some senders write
    the patient's e-mail beside the home phone, in the same repetition
    (``5551234567^PRN^PH^nome@example.it``, WebChart/MIE), rather than in one of its own."""
    address = xtn.component(4).strip()
    if contact.system == "email" or "@" not in address:
        return None
    return ContactPoint(system="email", value=address, use="work" if business else "home")


def reaches_someone_else(xtn: Repetition) -> bool:
    """An emergency (XTN-2 ``EMR``) or answering service (``ASN``) number: someone
    else's, to reach the patient through, not the patient's own."""
    return xtn.component(2).upper() in _SOMEONE_ELSE


def _phone_number(xtn: Repetition) -> str:
    unformatted = xtn.component(12).strip()
    if unformatted:
        return unformatted
    local = xtn.component(7).strip()
    if local:
        country = xtn.component(5).strip().lstrip("+")
        area = xtn.component(6).strip()
        return (f"+{country}" if country else "") + area + local
    return xtn.component(1).strip()


def _normalise_phone(number: str, region: str) -> tuple[str, bool]:
    cleaned = re.sub(r"[\s().\-/]", "", number)
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]
    read = phone(cleaned, region)
    if read.e164 is None or not read.possible:
        return cleaned, False
    return read.e164, read.mobile


# ISO 639-2 (what HL7 table 0296 and many senders use) → BCP-47 primary tags.
_LANGUAGES = {
    "ita": "it", "eng": "en", "deu": "de", "ger": "de", "fra": "fr", "fre": "fr",
    "spa": "es", "por": "pt", "ron": "ro", "rum": "ro", "alb": "sq", "sqi": "sq",
    "ara": "ar", "zho": "zh", "chi": "zh", "ukr": "uk", "rus": "ru", "pol": "pl",
    "slv": "sl", "hrv": "hr", "srp": "sr", "tur": "tr", "hin": "hi", "ben": "bn",
    "urd": "ur", "tgl": "tl", "fil": "tl",
}
_LANGUAGE_NAMES = {"italiano": "it", "italian": "it", "inglese": "en", "english": "en"}


def language_from_ce(code: str, text: str = "") -> str:
    """PID-15 primary language (CE) as a BCP-47 primary tag: ``IT``, ``it-IT``,
    ``ita`` and ``Italiano`` all give ``it``; unknown gives ``""``."""
    c = code.strip().lower().replace("_", "-").split("-")[0]
    if len(c) == 2 and c.isalpha():
        return c
    if c in _LANGUAGES:
        return _LANGUAGES[c]
    return _LANGUAGE_NAMES.get((code or text).strip().lower(), "")
