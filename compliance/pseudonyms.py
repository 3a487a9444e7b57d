"""Normal forms of the values we look up by blind index, and pseudonyms for the audit log.

Two spellings of the same phone number or e-mail address must give the same blind index:
phones become E.164 (ITU-T E.164, Italian numbers assumed when no country code is written),
e-mail addresses lower case, Italian fiscal codes (codice fiscale, DM 23/12/1976) upper case.

>>> normalise("phone", "333 123 4567")
'+393331234567'
>>> normalise("email", " Mario.Rossi@Example.ORG ")
'mario.rossi@example.org'
"""

from __future__ import annotations

import re
import unicodedata

from adapter.phones import phone

DEFAULT_REGION = "IT"
PHONE_KINDS = frozenset({"phone", "sms", "whatsapp", "voice", "mobile"})
FISCAL_CODE = re.compile(r"^[A-Z]{6}[0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]$")
PSEUDONYM = re.compile(r"^(|[a-z_]+:[A-Za-z0-9_.:\-]{1,100})$")


def e164(value: str, region: str = DEFAULT_REGION) -> str:
    """E.164 form of a phone number; unparseable input is reduced to its digits and ``+``."""
    read = phone(value, region)
    return read.e164 if read.e164 is not None else re.sub(r"[^0-9+]", "", value)


def email(value: str) -> str:
    return unicodedata.normalize("NFC", value.strip()).lower()


def fiscal_code(value: str) -> str:
    return re.sub(r"\s+", "", value).upper()


def identifier(value: str) -> str:
    """``system|value``: the system is kept as written, a fiscal code value upper-cased."""
    system, sep, rest = value.strip().rpartition("|")
    rest = rest.strip()
    if FISCAL_CODE.match(fiscal_code(rest)):
        rest = fiscal_code(rest)
    return f"{system}{sep}{rest}"


def normalise(kind: str, value: str) -> str:
    """The normal form for a blind index of ``kind``; unknown kinds are only NFC-trimmed."""
    if kind in PHONE_KINDS:
        return e164(value)
    if kind == "email":
        return email(value)
    if kind in ("fiscal_code", "codice_fiscale"):
        return fiscal_code(value)
    if kind == "identifier":
        return identifier(value)
    return unicodedata.normalize("NFC", value.strip())


def patient_subject(patient_id: str) -> str:
    """The vault subject and audit pseudonym of a patient: ``patient:<internal id>``."""
    return f"patient:{patient_id}"


def is_pseudonym(value: str) -> bool:
    """``kind:opaque-id`` (``patient:…``, ``bidx:…``, ``notification:…``) or empty."""
    return bool(PSEUDONYM.match(value))
