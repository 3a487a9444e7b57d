"""The adapter's own events: what happened at the hospital, in one normal form.

``hl7/`` and ``fhir/`` translate wire data into these; everything downstream
(trigger rules, consent, scheduling) reads only these. Nothing here knows about
ER7 segments or FHIR JSON. All datetimes are timezone-aware (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

Source = Literal["hl7", "fhir", "api", "reply"]
TelecomSystem = Literal["phone", "sms", "email", "telegram", "whatsapp", "other"]


@dataclass(frozen=True)
class Identifier:
    """An external patient identifier: ``system`` is the assigning authority
    (HL7 CX-4) or the FHIR ``Identifier.system``; ``kind`` is the identifier type
    (``MR`` hospital record number, ``NNITA``/``TAX`` fiscal code, ...).
    ``authority_assumed``: the sender gave no authority, ``system`` is the sending
    facility's (patients stored before that was done have the identifier with an
    empty system)."""

    system: str
    value: str
    kind: str = ""
    authority_assumed: bool = False


@dataclass(frozen=True)
class ContactPoint:
    """A way to reach the patient. ``rank`` 1 is the most preferred (FHIR
    ContactPoint.rank); ``use`` is ``mobile``, ``home``, ``work``..."""

    system: TelecomSystem
    value: str
    use: str = ""
    rank: int | None = None


@dataclass(frozen=True)
class PatientDetails:
    """What a hospital told us about a patient. ``key`` is the identifier the
    sending facility's configuration names as the patient key."""

    key: Identifier
    identifiers: tuple[Identifier, ...] = ()
    given_name: str = ""
    family_name: str = ""
    telecom: tuple[ContactPoint, ...] = ()
    # The hospital listed the patient's contacts, even if none of them is in use (all expired,
    # or someone else's): those it no longer lists are dropped. An empty ``telecom`` alone
    # says nothing of them.
    telecom_listed: bool = False
    language: str = ""  # BCP-47 primary tag, "it" or "en"; "" = clinic default
    # What the hospital deleted (HL7's null ``""``, v2.5 §2.5.3), of "given_name", "family_name"
    # and "language": the value held is cleared. An empty value alone says nothing of it: the
    # one held stands.
    cleared: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Origin:
    """Where an event came from: the inbound message that carried it."""

    source: Source
    sender: str  # HL7 MSH-3^MSH-4, FHIR server base or client name
    message_ref: str = ""  # control id or Type/id/_history/vid
    # The stored inbound message's id (``inbound_message.id``), given by the intake that read
    # it: what the event causes or withdraws is filed under it (``GET /api/messages/{id}``).
    message_id: int | None = None


@dataclass(frozen=True)
class Appointment:
    """An appointment as the hospital describes it. ``ref`` is stable across
    updates from the same source (FHIR ``Appointment/{id}`` or HL7 placer/filler
    id qualified by the sender). ``start`` is ``None`` only in an HL7 cancellation,
    deletion or no-show that names the appointment without its time: the time
    stored for it stands."""

    ref: str
    start: datetime | None
    end: datetime | None = None
    location: str = ""
    service: str = ""  # a non-clinical label, e.g. "Visita ambulatoriale"
    # The service booked, as the hospital codes it: ``system|code`` (HL7 AIS-3.3|AIS-3.1, FHIR
    # serviceType coding system|code), or the code alone when no system is given; "" = not said.
    # It picks the rules and pre-visit instructions that apply (config/rules.yaml ``services``,
    # config/services.yaml); it never reaches a message.
    service_code: str = ""
    # False when the hospital gave the day only (an HL7 TS of day precision): ``start`` is
    # that day's 00:00 in the clinic's zone, and messages name the day, not a time.
    time_known: bool = True


@dataclass(frozen=True)
class Event:
    origin: Origin
    occurred_at: datetime


# The ``patient`` of an appointment event is None when the message names the appointment and
# not whose it is (an HL7 SIU without PID: the patient group is optional, HL7 v2.5 §10.6). It
# is about the patient the appointment is stored for, whose details it leaves as they are; an
# appointment not stored cannot be applied (adapter.errors.UnknownAppointment).


@dataclass(frozen=True)
class AppointmentBooked(Event):
    patient: PatientDetails | None
    appointment: Appointment


@dataclass(frozen=True)
class AppointmentRescheduled(Event):
    patient: PatientDetails | None
    appointment: Appointment
    previous_start: datetime | None = None


@dataclass(frozen=True)
class AppointmentCancelled(Event):
    patient: PatientDetails | None
    appointment: Appointment
    reason: str = ""  # "cancelled", "entered-in-error", "deleted"


@dataclass(frozen=True)
class AppointmentNoShow(Event):
    patient: PatientDetails | None
    appointment: Appointment


@dataclass(frozen=True)
class AppointmentFulfilled(Event):
    patient: PatientDetails | None
    appointment: Appointment


@dataclass(frozen=True)
class PatientUpdated(Event):
    patient: PatientDetails


@dataclass(frozen=True)
class PatientsMerged(Event):
    """HL7 ADT^A40 / FHIR Patient.link replaced-by: the patient known by ``retired``
    (or, failing that, by one of ``retired_also``: the other identifiers the message
    gives the retired record) is folded into ``surviving``, which takes over
    appointments, consent and pending notices."""

    surviving: PatientDetails
    retired: Identifier
    retired_also: tuple[Identifier, ...] = ()


@dataclass(frozen=True)
class ReportReady(Event):
    """A final (or corrected/amended, ``amended=True``) report is available.
    ``codes`` are the exam codes, used only to apply exclusion rules (HIV,
    genetic tests); they never reach a message."""

    patient: PatientDetails
    report_ref: str
    amended: bool = False
    codes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class ReportWithdrawn(Event):
    patient: PatientDetails
    report_ref: str


@dataclass(frozen=True)
class Invoice:
    """An invoice the patient is to pay, as the clinic's billing system states it now.
    ``ref`` is stable across its versions (FHIR ``Invoice/{id}``); ``issued_at`` is when
    it was issued, from which payment reminders are timed; ``amount`` in ``currency``
    (ISO 4217) is what is due. ``number`` is the invoice number, ``notice_code`` the
    pagoPA notice code (codice avviso) when there is one; ``issuer`` names the issuing
    organisation (its payment link). Never a line item: they name services."""

    ref: str
    issued_at: datetime
    amount: Decimal
    currency: str
    number: str = ""
    notice_code: str = ""
    issuer: str = ""


@dataclass(frozen=True)
class InvoiceIssued(Event):
    """An invoice is due from the patient: first issued, or changed while due (a new
    total, number or notice code replaces what pending reminders will say)."""

    patient: PatientDetails
    invoice: Invoice


@dataclass(frozen=True)
class InvoiceSettled(Event):
    """An invoice is no longer due from the patient: ``reason`` ``balanced`` (paid),
    ``cancelled``, ``entered-in-error``, ``deleted``, or ``not-due``: it no longer asks
    the patient for anything (a draft again, nothing to pay, someone else pays). Its
    pending reminders are withdrawn."""

    patient: PatientDetails
    invoice_ref: str
    reason: str


ConsentDecisionType = Literal["permit", "deny"]


@dataclass(frozen=True)
class ConsentProvision:
    """One consent statement: ``purpose`` and ``channel`` of ``"*"`` mean any."""

    decision: ConsentDecisionType
    purpose: str = "*"
    channel: str = "*"
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class ConsentChanged(Event):
    patient: PatientDetails
    consent_ref: str
    active: bool
    provisions: tuple[ConsentProvision, ...] = ()


AnyEvent = (
    AppointmentBooked
    | AppointmentRescheduled
    | AppointmentCancelled
    | AppointmentNoShow
    | AppointmentFulfilled
    | PatientUpdated
    | PatientsMerged
    | ReportReady
    | ReportWithdrawn
    | InvoiceIssued
    | InvoiceSettled
    | ConsentChanged
)
