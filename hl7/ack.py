"""Acknowledgements (HL7 v2.5 §2.9, §2.14.8 MSA, §2.14.5 ERR).

>>> from hl7.header import read_header
>>> h = read_header(b"MSH|^~\\\\&|CUP|OSP|ADAPTER|APP|20250101||SIU^S12^SIU_S12|42|P|2.5\\r")
>>> ack = build_ack(h, AckCode.AA).decode()
>>> ack.split("\\r")[1]
'MSA|AA|42'
"""

from __future__ import annotations

import enum
import functools
import itertools
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from hl7.errors import HL7Error
from hl7.header import MessageHeader, Separators, read_header_leniently
from hl7.message import escape

Severity = Literal["E", "W", "I", "F"]  # HL7 table 0516


class AckCode(str, enum.Enum):
    """MSA-1 acknowledgment code (HL7 table 0008). Original mode: AA, AE, AR;
    enhanced mode accept acknowledgements: CA, CE, CR."""

    AA = "AA"  # application accept
    AE = "AE"  # application error
    AR = "AR"  # application reject
    CA = "CA"  # commit accept
    CE = "CE"  # commit error
    CR = "CR"  # commit reject

    @property
    def is_accept(self) -> bool:
        return self in (AckCode.AA, AckCode.CA)


@dataclass(frozen=True)
class AckError:
    """What goes into ERR: ``code`` from HL7 table 0357, a ``text`` a person can
    read (never personal data: it travels back to the sender's logs) and the
    severity (table 0516)."""

    code: str = "207"
    text: str = "Application internal error"
    severity: Severity = "E"

    @classmethod
    def from_exception(cls, exc: BaseException) -> AckError:
        if isinstance(exc, HL7Error):
            return cls(exc.code, exc.reason)
        return cls("207", "Application internal error")


# Table 0357 texts, for ERR-3.2.
_CODE_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

_counter = itertools.count(1)
_PREFIX = os.urandom(3).hex()


def new_control_id() -> str:
    """A fresh MSH-10 for a message we originate: unique per process and run,
    at most 20 characters (the ST length of MSH-10 in v2.5)."""
    return f"A{_PREFIX}{next(_counter):013d}"


def _ts(now: datetime | None) -> str:
    if now is None:
        return _now_ts(int(time.time()))
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return now.strftime("%Y%m%d%H%M%S%z")


@functools.lru_cache(maxsize=2)
def _now_ts(second: int) -> str:
    """MSH-7 of an ACK sent now: formatted once per second (thousands of ACKs a
    second would each pay for ``strftime``)."""
    return _ts(datetime.fromtimestamp(second, timezone.utc))


@functools.lru_cache(maxsize=64)
@functools.lru_cache(maxsize=32)
def _version_tuple(version: str) -> tuple[int, ...]:
    nums = re.findall(r"\d+", version)
    return tuple(int(n) for n in nums) or (2, 5)


def build_ack(
    header: MessageHeader,
    code: AckCode | str,
    *,
    error: AckError | None = None,
    now: datetime | None = None,
) -> bytes:
    """The ACK for a message whose header was read (HL7 v2.5 §2.9.2, §2.9.3).

    MSH has sender and receiver swapped, MSH-9 ``ACK^<trigger>^ACK``, a new
    MSH-10, the incoming MSH-11, MSH-12, separators and MSH-18; MSA-1 is
    ``code`` and MSA-2 the incoming MSH-10. An error code (AE, AR, CE, CR) always
    carries an ERR segment — ``error`` or a generic 207 — in the layout of the
    message's version: ERR-1 (ELD) before v2.5, ERR-3/ERR-4/ERR-8 from v2.5. The
    bytes are encoded in the incoming message's character set."""
    code = AckCode(code)
    sep = header.separators
    version = _version_tuple(header.version)
    msh9 = f"ACK{sep.component}{header.trigger_event}"
    if version >= (2, 3, 1):
        msh9 += f"{sep.component}ACK"
    msh = [
        "MSH",
        sep.encoding_characters,
        header.receiving_application,
        header.receiving_facility,
        header.sending_application,
        header.sending_facility,
        _ts(now),
        "",
        msh9,
        new_control_id(),
        header.processing_id or "P",
        header.version or "2.5",
        "",
        "",
        "",
        "",
        "",
        header.charset,
    ]
    while msh and msh[-1] == "":
        msh.pop()
    segments = [sep.field.join(msh)]
    # MSA-2 is MSH-10 as it came, escapes and all (the header keeps it as on the wire).
    if code.is_accept and error is None:
        segments.append(sep.field.join(["MSA", code.value, header.control_id]))
    else:
        error = error or AckError()
        text = _escape(error.text, sep)
        msa = ["MSA", code.value, header.control_id]
        if version < (2, 5):
            msa.append(text)  # MSA-3 text message, read by pre-2.5 engines
        segments.append(sep.field.join(msa))
        segments.append(_err(error, sep, version))
    payload = "\r".join(segments) + "\r"
    return payload.encode(header.codec, "replace")


def _escape(value: str, sep: Separators) -> str:
    return escape(value, sep)


def _err(error: AckError, sep: Separators, version: tuple[int, ...]) -> str:
    c, s = sep.component, sep.subcomponent
    name = _CODE_TEXT.get(error.code, "")
    if version < (2, 5):
        # ERR-1 ELD: segment^sequence^field^code (CE in subcomponents)
        return f"ERR|{c}{c}{c}{error.code}{s}{name}{s}HL70357".replace("|", sep.field)
    fields = ["ERR", "", "", f"{error.code}{c}{name}{c}HL70357", error.severity, "", "", "",
              _escape(error.text, sep)]
    return sep.field.join(fields)


_CONTROL_ID = re.compile(rb"^\s*MSH(.)(?:[^\r\n]*?\1){8}([^\r\n]*?)(?:\1|\r|\n|$)", re.S)


def build_reject_for_unreadable(
    raw: bytes,
    reason: str,
    *,
    code: str = "100",
    now: datetime | None = None,
) -> bytes:
    """A reject for a message whose header :func:`read_header` refuses (HL7 v2.5
    §2.9.2): AR, or CR when MSH-15/16 ask for enhanced mode. Whatever MSH still
    says is used: its separators, sender and receiver (swapped), trigger, control id
    and version, in UTF-8 (or Latin-1) when MSH-18 is unknown. When MSH-1/MSH-2
    themselves cannot be read, the answer uses ``|^~\\&``, v2.5 and UTF-8, with
    MSA-2 the control id if one can still be found by position."""
    try:
        header = read_header_leniently(raw)
    except HL7Error:
        header = _fallback_header(raw)
    reject = AckCode.CR if header.enhanced_mode else AckCode.AR
    return build_ack(header, reject, error=AckError(code, reason), now=now)


def _fallback_header(raw: bytes) -> MessageHeader:
    control_id = ""
    match = _CONTROL_ID.match(raw[:4096])
    if match:
        control_id = match.group(2).decode("latin-1")[:199]
        if any(c in control_id for c in "|^~\\&"):
            control_id = ""
    return MessageHeader(
        separators=Separators(),
        sending_application="",
        sending_facility="",
        receiving_application="",
        receiving_facility="",
        message_datetime="",
        message_code="",
        trigger_event="",
        message_structure="",
        control_id=control_id,
        processing_id="P",
        version="2.5",
        accept_ack_type="",
        application_ack_type="",
        charset="",
        codec="utf-8",
    )
