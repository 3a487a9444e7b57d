"""Errors of the ``hl7`` package: one root, children a caller can act on.

Each error carries ``code``, an HL7 table 0357 message error condition code
(HL7 v2.5 §2.15.5 ERR-3), so the edge that answers the sender can put it in the
ACK's ERR segment without guessing. Which MSA-1 code an error becomes:

==========================  =====  =========================================
error                       MSA-1  why
==========================  =====  =========================================
``HeaderError``             AR     the message cannot even be identified
``CharsetError``            AR     bytes do not decode per MSH-18
``UnsupportedMessage``      AR     message type / version we do not handle
``MappingError``            AE     understood, but cannot be turned into events
anything else               AE     207 application internal error
==========================  =====  =========================================
"""

from __future__ import annotations


class HL7Error(Exception):
    """Root of every error raised by the ``hl7`` package."""

    code: str = "207"  # HL7 table 0357: application internal error
    rejects: bool = False  # True: answer AR (rejected), False: AE (error)

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


class HeaderError(HL7Error):
    """The MSH segment is missing or unreadable (HL7 v2.5 §2.14.9)."""

    code = "100"  # segment sequence error
    rejects = True


class CharsetError(HL7Error):
    """The bytes cannot be decoded with the character set named in MSH-18."""

    code = "102"  # data type error
    rejects = True


class UnsupportedMessage(HL7Error):
    """A message type or version this adapter does not handle (table 0357: 200, 203)."""

    code = "200"  # unsupported message type
    rejects = True


class MappingError(HL7Error):
    """A readable, supported message that cannot be mapped to events (missing
    patient key, unparseable start time...). Answered AE; kept in the error store."""

    code = "101"  # required field missing


class FacilityConfigError(HL7Error):
    """``config/facilities.yaml`` is invalid; the message names the file and field."""


class MLLPClientError(HL7Error):
    """A message could not be delivered or acknowledged over MLLP."""
