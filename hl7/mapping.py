"""HL7 v2 messages → adapter events. Pure: text in, events out, no I/O.

What is mapped (HL7 v2.5 chapters 10, 7 and 3):

==================  ===================================================
SIU^S12             AppointmentBooked (for an appointment the core already knows, it is
                    compared with what is stored like an S14: adapter.appointments)
SIU^S13             AppointmentRescheduled
SIU^S14             AppointmentRescheduled (a modification: the core compares the start
                    with what it stored and tells the patient only when it moved); when
                    SCH-25 says Cancelled/Deleted/Noshow/Complete, the matching event.
                    S12/S13/S14 whose SCH-25 says Pending or Waitlist: nothing (not booked;
                    the S14 that books it is taken for the booking)
SIU^S15 / S17       AppointmentCancelled, reason "cancelled" / "deleted"
SIU^S26             AppointmentNoShow (these, and an S14 that closes the appointment, may
                    leave its time out: the core keeps the one it stored)
SIU without PID     S13, S14, S15, S17, S26: the same event with ``patient`` None, about the
                    patient the core stored the appointment for (the patient group is
                    optional in SIU, §10.6). S12: MappingError, a booking must carry PID
ORU^R01             per OBR: OBR-25 F → ReportReady, C → ReportReady(amended=True),
                    X → ReportWithdrawn, anything else (P, I, R...) → nothing. An empty
                    OBR-25 takes the OBX-11 statuses (all F → F, any C → C).
ADT^A04/A08/A28/A31 PatientUpdated (telecom from PID-40, PID-13, PID-14)
ADT^A40             PatientsMerged per PID/MRG pair (MRG-1: the retired record's identifiers,
                    less those the surviving PID-3 also lists); so too the merges A40
                    replaced, which v2.3 senders still send (A18, A34, A36: the same
                    PID/MRG at patient level), and A47, an identifier found wrong and
                    changed (MRG-1 the wrong one, PID-3 the right)
==================  ===================================================

Decisions:

- Other triggers of SIU, ORU and ADT (S16, A01, A03, ...) and ACK messages map
  to ``[]``: hospitals send whole feeds, and answering AR to events we simply do
  not act on would raise alarms on their side. The caller acknowledges them AA.
- Any other message type, and versions outside 2.3–2.8.x, raise
  ``UnsupportedMessage`` (AR, table 0357 code 200 / 203); :func:`refusal` says so from
  the header alone, which the ACK path asks before storing.
- A supported message that lacks what we need (no patient key, no start time,
  unreadable timestamp, no PID in a booking, ORU or ADT) raises ``MappingError`` (AE)
  with a reason that holds no personal data.
- The appointment's service code (``Appointment.service_code``) is AIS-3.1 with its
  coding system AIS-3.3 (``L|CARD01``), of the AIS the start is taken from (the first AIS
  when the start is SCH-11 or TQ1-7); its label is AIS-3.2. A message without AIS (a
  cancellation, a completion) leaves the code stored for the appointment as it is.
- Timestamps without a UTC offset are local time of the sender's
  ``timezone``; all event datetimes are aware UTC.
- ``Appointment.ref`` is ``hl7:{MSH-3}^{MSH-4}:{id}`` with the id from SCH-2
  (filler) or SCH-1 (placer) per facility, EI-1 only, so it is the same for
  S12, S13, S15 of one appointment whatever namespace a message adds.
- ``occurred_at``: ADT EVN-6 (else EVN-2), otherwise MSH-7, otherwise
  ``received_at``.
- A patient identifier (CX) without an assigning authority (CX-4) is qualified
  by the sending facility (MSH-4, else the whole sender): the same MRN from two
  hospitals is two patients.
- The HL7 null ``""`` (v2.5 §2.5.3) deletes what the adapter holds where it holds
  something: PID-5 names and PID-15 language are cleared, PID-13/14/40 list no
  contact (those held are dropped). Anywhere else it is read as not sent: an
  identifier (CX-1), appointment or order id, time or location of ``""`` names
  nothing. An empty field leaves the names, language and contacts held as they are,
  and so does ``""`` from a sender configured with ``null_deletes: false`` (one that
  writes ``""`` for every value it lacks).
"""

from __future__ import annotations

import re
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from adapter.events import (
    AnyEvent,
    Appointment,
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentFulfilled,
    AppointmentNoShow,
    AppointmentRescheduled,
    ContactPoint,
    Identifier,
    Origin,
    PatientDetails,
    PatientsMerged,
    PatientUpdated,
    ReportReady,
    ReportWithdrawn,
)
from hl7.datatypes import (
    NULL,
    contact_from_xtn,
    email_beside,
    identifier_from_cx,
    language_from_ce,
    parse_ts,
    reaches_someone_else,
    ts_has_time,
)
from hl7.errors import CharsetError, MappingError, UnsupportedMessage
from hl7.facilities import FacilityConfig, FacilityRule
from hl7.header import codec_for
from hl7.message import Message, Repetition, Segment, parse
from hl7.validation import validate_structure

SUPPORTED_VERSION = re.compile(r"^2\.[3-8](\.\d+)?$")
ADT_PATIENT_UPDATES = frozenset({"A04", "A08", "A28", "A31"})
# A40, the merges it replaced (HL7 v2.5 §3.3.18, 3.3.34, 3.3.36: kept for backward
# compatibility, and sent by v2.3 systems) and A47 (a patient identifier changed):
# each a PID naming the record that stays and an MRG naming the one that goes.
ADT_MERGES = frozenset({"A40", "A18", "A34", "A36", "A47"})


@dataclass(frozen=True)
class _Context:
    origin: Origin
    sender: str
    authority: str  # for identifiers sent without an assigning authority (CX-4)
    rule: FacilityRule
    zone: ZoneInfo
    occurred_at: datetime
    received_at: datetime
    entry: str = "default"  # the config/facilities.yaml entry read: MSH-4, or default


def refusal(code: str, trigger: str, version: str) -> UnsupportedMessage | None:
    """Why a message of type ``code^trigger`` (MSH-9) and ``version`` (MSH-12.1) is not
    handled at all, or None: what the header alone says, so the ACK path refuses it
    before storing (HL7 v2.5 §2.9.2: AR for a message type or version not taken)."""
    if code == "ACK":
        return None
    if code not in ("SIU", "ORU", "ADT"):
        return UnsupportedMessage(f"message type {code}^{trigger} is not supported", "200")
    if not SUPPORTED_VERSION.match(version):
        return UnsupportedMessage(f"HL7 version {version!r} is not supported (2.3 to 2.8)", "203")
    return None


def map_message(text: str, facilities: FacilityConfig, *, received_at: datetime,
                message_id: int | None = None) -> list[AnyEvent]:
    """The events one decoded message means (see the module docstring). ``message_id``,
    the caller's id of the stored message, goes into their origin as it is.

    Raises ``HeaderError`` (no MSH), ``UnsupportedMessage`` (type or version
    not handled) and ``MappingError`` (understood but not mappable)."""
    message = parse(text, codec=_codec(text))
    msh = message.msh
    code, trigger = msh.value(9, 1).strip(), msh.value(9, 2).strip()
    if code == "ACK":
        return []
    refused = refusal(code, trigger, msh.value(12, 1).strip())
    if refused is not None:
        raise refused
    context = _context(message, facilities, received_at, message_id)
    if context.rule.validate_with_hl7apy:
        validate_structure(text)
    if code == "SIU":
        return _map_siu(message, trigger, context)
    if code == "ORU":
        return _map_oru(message, context) if trigger == "R01" else []
    return _map_adt(message, trigger, context)


def _codec(text: str) -> str:
    first = re.split(r"\r|\n", text.lstrip("\ufeff\r\n\t "), maxsplit=1)[0]
    fields = first.split(first[3:4] or "|")
    charset = fields[17].split("~")[0] if len(fields) > 17 else ""
    try:
        return codec_for(charset) or "utf-8"
    except CharsetError:
        return "utf-8"


def _given(value: str) -> str:
    """``value``, or ``""`` for the HL7 null: a value the hospital deleted names nothing
    (two appointments or reports whose filler id is ``""`` are not one)."""
    return "" if value.strip() == NULL else value


def _namespace(segment: Segment, n: int) -> str:
    return segment.value(n, 1) or segment.value(n, 2)


def _context(message: Message, facilities: FacilityConfig, received_at: datetime,
             message_id: int | None = None) -> _Context:
    msh = message.msh
    facility = _namespace(msh, 4)
    sender = f"{_namespace(msh, 3)}^{facility}"
    rule = facilities.for_facility(facility)
    zone = rule.zone
    occurred = _optional_ts(msh.value(7), zone)
    evn = message.segment("EVN")
    if evn is not None:
        occurred = _optional_ts(evn.value(6), zone) or _optional_ts(evn.value(2), zone) or occurred
    origin = Origin(source="hl7", sender=sender, message_ref=msh.value(10).strip(), message_id=message_id)
    entry = facility if facility in facilities.facilities else "default"
    return _Context(origin, sender, facility or sender, rule, zone, occurred or received_at, received_at, entry)


def _optional_ts(value: str, zone: ZoneInfo) -> datetime | None:
    try:
        return parse_ts(value, zone)
    except ValueError:
        return None


def _required_ts(value: str, zone: ZoneInfo, where: str) -> datetime | None:
    try:
        return parse_ts(value, zone)
    except ValueError:
        raise MappingError(f"{where} is not a valid HL7 timestamp", "102") from None


# ---------------------------------------------------------------- patient


def _patient(pid: Segment | None, context: _Context) -> PatientDetails:
    """PID (HL7 v2.5 §3.4.2) → PatientDetails, keyed per the facility rule. A name (PID-5,
    or its XPN-1 or XPN-2) or PID-15 sent as the HL7 null ``""`` clears the value held
    (``PatientDetails.cleared``)."""
    if pid is None:
        raise MappingError("message has no PID segment", "100")
    reps = _ids(pid, 3) or _ids(pid, 2)  # v2.3 senders: PID-2 external id
    identifiers = tuple(identifier_from_cx(r, context.authority) for r in reps)
    key = _pick_identifier(reps, context)
    if key is None:
        raise MappingError(_no_patient_key(reps, context), "101")
    names = _names(pid)
    telecom, telecom_listed = _telecom(pid, context)
    language = language_from_ce(pid.value(15, 1), pid.value(15, 2))
    cleared = {field for field, value in names.items() if value == NULL}
    if pid.field(15) == NULL:
        cleared.add("language")
    if not context.rule.null_deletes:  # this sender's "" means "not sent"
        cleared = set()
    return PatientDetails(
        key=key,
        identifiers=identifiers,
        given_name=_given(names["given_name"]),
        family_name=_given(names["family_name"]),
        telecom=telecom,
        telecom_listed=telecom_listed,
        language=language,
        cleared=frozenset(cleared),
    )


def _no_patient_key(reps: list[Repetition], context: _Context) -> str:
    """Why no identifier was taken as the patient key, for the error store and an AE: each
    identifier's type and authority (CX-5/CX-4), never its value, then the rules tried.
    What PID-3 has comes first: an ERR holds 200 characters, and it is what the sending
    hospital's engineer needs to fix the mapping."""
    tried = ", ".join(f"{rule.identifier_type or 'any'}/{rule.assigning_authority or 'any'}"
                      for rule in context.rule.patient_key)
    present = ", ".join(dict.fromkeys(
        f"{cx.component(5).strip() or '(none)'}/{(cx.component(4, 1) or cx.component(4, 2)).strip() or '(none)'}"
        for cx in reps)) or "none"
    where = "its entry" if context.entry != "default" else "the default entry: it has none of its own"
    facility = context.sender.partition("^")[2][:60] or "(empty MSH-4)"
    return (f"no patient key in PID-3 (facility {facility}): it has type/authority {present[:300]}; "
            f"patient_key tries {tried} (config/facilities.yaml, {where})")


def _ids(segment: Segment, field: int) -> list[Repetition]:
    """The CX repetitions of ``field`` that name an identifier: not empty, and not the HL7
    null ``""``, which says the hospital deleted it (two patients whose fiscal code was
    deleted are not one patient)."""
    return [cx for cx in segment.repetitions(field) if cx.component(1).strip() not in ("", NULL)]


def _pick_identifier(reps: list[Repetition], context: _Context) -> Identifier | None:
    """The first of ``reps`` the facility's patient key rules match, rule by rule. An
    identifier without CX-4 is the sender's own (``identifier_from_cx``): a rule naming
    the sender as the authority matches it."""
    for wanted in context.rule.patient_key:
        for cx in reps:
            kind = cx.component(5).strip().upper()
            authorities = {cx.component(4, 1).strip().upper(), cx.component(4, 2).strip().upper()} - {""}
            authorities = authorities or {context.authority.upper()}
            if wanted.identifier_type and kind != wanted.identifier_type.upper():
                continue
            if wanted.assigning_authority and wanted.assigning_authority.upper() not in authorities:
                continue
            return identifier_from_cx(cx, context.authority)
    return None


def _names(pid: Segment) -> dict[str, str]:
    """The given and family names of the legal name (XPN-2, XPN-1), as written: a PID-5
    sent as the HL7 null ``""`` deletes both."""
    if pid.field(5) == NULL:
        return {"given_name": NULL, "family_name": NULL}
    name = _legal_name(pid)
    return {"given_name": name.component(2, 1) if name else "", "family_name": name.component(1, 1) if name else ""}


def _legal_name(pid: Segment) -> Repetition | None:
    names = pid.repetitions(5)
    for name in names:
        if name.component(7).upper() == "L":
            return name
    return names[0] if names else None


def _telecom(pid: Segment, context: _Context) -> tuple[tuple[ContactPoint, ...], bool]:
    """The patient's own numbers and addresses in use, and whether the PID lists any
    (``PatientDetails.telecom_listed``).

    PID-40 (v2.7+: every telecom, its use code says home or work), then PID-13 (home)
    and PID-14 (business), which v2.7 keeps for backward compatibility only: a v2.7+
    sender may fill PID-40 alone. A number listed twice counts once, where first seen.
    Listed but not in use: one whose expiration date (XTN-14) had come when the message
    arrived, as a hospital that keeps the history of numbers says, and someone else's
    (an emergency number); the HL7 null ``""`` lists none (HL7 v2.5 §2.5.3)."""
    found: list[ContactPoint] = []
    listed = False
    for field, business in ((40, False), (13, False), (14, True)):
        for xtn in pid.repetitions(field):
            if xtn.raw == NULL:
                listed = listed or context.rule.null_deletes
                continue
            contact = contact_from_xtn(xtn, business=business, region=context.rule.phone_region)
            if contact is None:
                continue
            listed = True
            expires = _optional_ts(xtn.component(14), context.zone)
            if reaches_someone_else(xtn) or (expires is not None and expires <= context.received_at):
                continue
            for point in (contact, email_beside(xtn, contact, business=business)):
                if point is not None and all(c.value != point.value for c in found):
                    found.append(point)
    points = tuple(ContactPoint(c.system, c.value, c.use, rank) for rank, c in enumerate(found, start=1))
    return points, listed


def _system_value(identifier: Identifier) -> tuple[str, str]:
    return identifier.system, identifier.value


# ---------------------------------------------------------------- SIU

# "Canceled" as US systems spell it (WebChart/MIE writes SCH-25 CANCELED) beside the table's.
_SIU_STATUS_EVENTS = {"CANCELLED": "cancelled", "CANCELED": "cancelled", "DELETED": "deleted"}
# SCH-25 filler statuses (table 0278) with which an S14 closes the appointment.
_SIU_CLOSING_STATUSES = frozenset({*_SIU_STATUS_EVENTS, "NOSHOW", "COMPLETE"})
# SCH-25 statuses of a request not yet booked (table 0278): nothing to tell the patient
# until a message says Booked, which the core then takes for the booking.
_SIU_NOT_BOOKED = frozenset({"PENDING", "WAITLIST"})


def _map_siu(message: Message, trigger: str, context: _Context) -> list[AnyEvent]:
    """SIU (HL7 v2.5 §10.6): one event per message, about its SCH."""
    if trigger not in ("S12", "S13", "S14", "S15", "S17", "S26"):
        return []
    sch = message.segment("SCH")
    if sch is None:
        raise MappingError("SIU message has no SCH segment", "100")
    status = sch.value(25, 1).strip().upper()
    if trigger in ("S12", "S13", "S14") and status in _SIU_NOT_BOOKED:
        return []  # a request (often without a time yet): told once a message says Booked
    pid = message.segment("PID")
    if pid is None and trigger == "S12":
        raise MappingError("SIU^S12 has no PID segment: a booking must carry PID (the patient to tell)", "100")
    # Without PID (optional in SIU) the message is about the patient the appointment is stored for.
    patient = _patient(pid, context) if pid is not None else None
    closing = trigger in ("S15", "S17", "S26") or (trigger == "S14" and status in _SIU_CLOSING_STATUSES)
    appointment = _appointment(message, sch, context, start_required=not closing)
    base = {"origin": context.origin, "occurred_at": context.occurred_at, "patient": patient,
            "appointment": appointment}
    if trigger == "S12":
        return [AppointmentBooked(**base)]
    if trigger == "S13":
        return [AppointmentRescheduled(**base)]
    if trigger == "S14":
        if status in _SIU_STATUS_EVENTS:
            return [AppointmentCancelled(**base, reason=_SIU_STATUS_EVENTS[status])]
        if status == "NOSHOW":
            return [AppointmentNoShow(**base)]
        if status == "COMPLETE":
            return [AppointmentFulfilled(**base)]
        return [AppointmentRescheduled(**base)]
    if trigger == "S26":
        return [AppointmentNoShow(**base)]
    return [AppointmentCancelled(**base, reason="cancelled" if trigger == "S15" else "deleted")]


def _appointment(message: Message, sch: Segment, context: _Context, *, start_required: bool) -> Appointment:
    """The SCH's appointment. A message that only closes it (cancellation, deletion,
    no-show, completion) may leave its time out: SCH-11 is withdrawn in v2.7 and the
    resource segments are optional, and the time stored for it stands (``start`` None)."""
    placer, filler = _given(sch.value(1, 1)).strip(), _given(sch.value(2, 1)).strip()
    ident = (filler or placer) if context.rule.appointment_id == "filler" else (placer or filler)
    if not ident:
        raise MappingError("SCH-1 and SCH-2 (appointment ids) are both empty", "101")
    start, end, time_known = _start_end(message, sch, context, required=start_required)
    ais = _service_ais(message, start, context.zone)
    return Appointment(
        ref=f"hl7:{context.sender}:{ident}",
        start=start,
        end=end,
        location=_location(message),
        service=ais.value(3, 2) if ais is not None else "",
        service_code=_service_code(ais),
        time_known=time_known,
    )


def _service_ais(message: Message, start: datetime | None, zone: ZoneInfo) -> Segment | None:
    """The AIS (HL7 v2.5 §10.6.4) of the service the appointment starts with: the one whose
    AIS-4 is the start, else the first (the start came from SCH-11 or TQ1-7)."""
    segments = message.all("AIS")
    found = next((ais for ais in segments if start is not None and _optional_ts(ais.value(4, 1), zone) == start), None)
    return found or next(iter(segments), None)


def _service_code(ais: Segment | None) -> str:
    """AIS-3 (CE/CWE universal service identifier) as ``system|code``: AIS-3.3, the coding
    system, and AIS-3.1, the code; the code alone without a system, "" without a code."""
    if ais is None:
        return ""
    code, system = _given(ais.value(3, 1)).strip(), _given(ais.value(3, 3)).strip()
    if not code:
        return ""
    return f"{system}|{code}" if system else code


def _start_end(
    message: Message, sch: Segment, context: _Context, *, required: bool
) -> tuple[datetime | None, datetime | None, bool]:
    """Start, end, and whether the start has a time of day (a TS of day precision,
    ``20261201``, gives the day only)."""
    zone = context.zone
    for where in context.rule.start_time:
        if where == "SCH-11":
            written, part = sch.value(11, 4, 1), "SCH-11.4"
            if not written.strip() and ts_has_time(sch.value(11, 1)):
                # MEDITECH and others write the start as SCH-11 whole, so in SCH-11.1 (TQ-1,
                # a quantity, which is never a date and time).
                written, part = sch.value(11, 1), "SCH-11.1"
            start = _required_ts(written, zone, part)
            if start is not None:
                end = _required_ts(sch.value(11, 5, 1), zone, "SCH-11.5") if part == "SCH-11.4" else None
                return start, end or _plus_duration(start, sch.value(9), sch.value(10, 1)), ts_has_time(written)
        elif where == "AIS-4":
            # One AIS per service booked (a blood test, then the visit), in no promised order:
            # the appointment starts with the earliest and ends with the last.
            services = [(start, _plus_duration(start, ais.value(7), ais.value(8, 1)), ts_has_time(ais.value(4, 1)))
                        for ais in message.all("AIS")
                        if (start := _required_ts(ais.value(4, 1), zone, "AIS-4")) is not None]
            if services:
                ends = [end for _, end, _ in services if end is not None]
                first = min(services, key=lambda service: service[0])
                return first[0], max(ends) if ends else None, first[2]
        else:
            tq1 = message.segment("TQ1")
            start = _required_ts(tq1.value(7, 1), zone, "TQ1-7") if tq1 is not None else None
            if start is not None:
                assert tq1 is not None
                return start, _required_ts(tq1.value(8, 1), zone, "TQ1-8"), ts_has_time(tq1.value(7, 1))
    if not required:
        return None, None, True
    tried = ", ".join(context.rule.start_time)
    raise MappingError(f"no appointment start time in {tried}", "101")


_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "hour": 3600, "d": 86400}


def _plus_duration(start: datetime, amount: str, unit: str) -> datetime | None:
    try:
        value = float(amount)
    except ValueError:
        return None
    seconds = _UNITS.get(unit.strip().lower() or "min")
    if seconds is None or not 0 < value < 10_000:
        return None
    return start + timedelta(seconds=value * seconds)


def _location(message: Message) -> str:
    for segment, field in (("AIL", 3), ("PV1", 3)):
        seg = message.segment(segment)
        if seg is not None:
            label = _given(seg.value(field, 9)) or _given(seg.value(field, 1))
            if label:
                return label
    return ""


# ---------------------------------------------------------------- ORU


def _map_oru(message: Message, context: _Context) -> list[AnyEvent]:
    """ORU^R01 (HL7 v2.5 §7.3.1): one event per OBR, for its patient. Of each OBX only
    its result status and codes are kept, not the segment: a report may carry
    thousands."""
    events: list[AnyEvent] = []
    pid: Segment | None = None
    orders: list[_Order] = []
    for segment in message.segments:
        if segment.name == "PID":
            pid = segment
        elif segment.name == "OBR":
            orders.append(_Order(pid, segment))
        elif segment.name == "OBX" and orders:
            orders[-1].observe(segment)
    if not orders:
        raise MappingError("ORU message has no OBR segment", "100")
    for order in orders:
        obr = order.obr
        status = order.result_status()
        if status not in ("F", "C", "X"):
            continue
        ident = _given(obr.value(3, 1)).strip() or _given(obr.value(2, 1)).strip()
        if not ident:
            raise MappingError("OBR-3 and OBR-2 (order numbers) are both empty", "101")
        patient = _patient(order.pid, context)
        ref = f"hl7:{context.sender}:{ident}"
        base = {"origin": context.origin, "occurred_at": context.occurred_at, "patient": patient}
        if status == "X":
            events.append(ReportWithdrawn(**base, report_ref=ref))
        else:
            events.append(ReportReady(**base, report_ref=ref, amended=status == "C", codes=order.codes()))
    return events


@dataclass
class _Order:
    """An OBR with what its OBX segments say: their result statuses (OBX-11) and
    observation codes (OBX-3.1 and .4), in order, once each."""

    pid: Segment | None
    obr: Segment
    statuses: set[str] = dataclasses.field(default_factory=set)
    observed: dict[str, None] = dataclasses.field(default_factory=dict)

    def observe(self, obx: Segment) -> None:
        self.statuses.add(obx.value(11).strip().upper())
        for code in (obx.value(3, 1).strip(), obx.value(3, 4).strip()):
            if code:
                self.observed[code] = None

    def result_status(self) -> str:
        """OBR-25, or from the OBX statuses when it is empty: all final gives F,
        final and corrected gives C."""
        status = self.obr.value(25).strip().upper()
        if status:
            return status
        if "C" in self.statuses and self.statuses <= {"F", "C"}:
            return "C"
        if self.statuses == {"F"}:
            return "F"
        return ""

    def codes(self) -> tuple[str, ...]:
        own = (self.obr.value(4, 1).strip(), self.obr.value(4, 4).strip())
        return tuple(dict.fromkeys([*(c for c in own if c), *self.observed]))


# ---------------------------------------------------------------- ADT


def _map_adt(message: Message, trigger: str, context: _Context) -> list[AnyEvent]:
    """ADT (HL7 v2.5 §3.3): patient updates and merges."""
    if trigger in ADT_PATIENT_UPDATES:
        patient = _patient(message.segment("PID"), context)
        return [PatientUpdated(origin=context.origin, occurred_at=context.occurred_at,
                               patient=patient)]
    if trigger in ADT_MERGES:
        return _map_merge(message, trigger, context)
    return []


def _map_merge(message: Message, trigger: str, context: _Context) -> list[AnyEvent]:
    """ADT^A40 (HL7 v2.5 §3.3.40; A18, A34, A36, A47 alike): each PID is the surviving patient, the MRG
    after it names the retired record's identifiers (MRG-1, a list). An identifier the
    surviving PID-3 also has (a fiscal code both records share) does not name the
    retired record: the others do, the one the patient key prefers first. An MRG-1
    with no other identifier is a MappingError: there is nothing to merge."""
    events: list[AnyEvent] = []
    pid: Segment | None = None
    for segment in message.segments:
        if segment.name == "PID":
            pid = segment
        elif segment.name == "MRG":
            if pid is None:
                raise MappingError("MRG segment without a PID before it", "100")
            surviving = _patient(pid, context)
            prior = _ids(segment, 1)
            if not prior:
                raise MappingError("MRG-1 (prior patient identifier) is empty", "101")
            own = {(i.system, i.value) for i in (surviving.key, *surviving.identifiers)}
            others = [r for r in prior if _system_value(identifier_from_cx(r, context.authority)) not in own]
            if not others:
                raise MappingError("MRG-1 lists only identifiers of the surviving patient (PID-3): "
                                   "no other record to merge", "101")
            retired = _pick_identifier(others, context) or identifier_from_cx(others[0], context.authority)
            also = tuple(dict.fromkeys(identifier_from_cx(r, context.authority) for r in others))
            events.append(PatientsMerged(origin=context.origin, occurred_at=context.occurred_at,
                                         surviving=surviving, retired=retired,
                                         retired_also=tuple(i for i in also if i != retired)))
            pid = None
    if not events:
        raise MappingError(f"ADT^{trigger} message has no MRG segment", "100")
    return events
