"""From FHIR resources to the adapter's events, by status transition (pure).

Events come from what *changed* between the previous stored version and the new
one, never from the write itself: re-sending an unchanged booked Appointment
announces nothing.

Appointment (R4 AppointmentStatus)
    Per Patient participant (a group appointment has one for each patient), the first
    under ``Appointment/{id}``, each other under ``Appointment/{id}#Patient/{pid}``, from
    the status as it concerns that patient: ``declined`` when they declined (R4
    ParticipationStatus: will not attend) an appointment not cancelled; a patient no
    longer among the participants is cancelled (reason ``removed``).
    booked, first seen or from another status → AppointmentBooked;
    booked → booked with another ``start`` → AppointmentRescheduled;
    → cancelled / entered-in-error / declined from a status announced as booked →
    AppointmentCancelled(reason=status);
    → noshow → AppointmentNoShow; → fulfilled → AppointmentFulfilled.
    The service code is the first coded serviceType's ``system|code``.
DiagnosticReport (R4 DiagnosticReportStatus)
    → final → ReportReady; → amended / corrected after a final one →
    ReportReady(amended=True) (first seen already amended → ReportReady);
    → entered-in-error from a status that was announced or pending → ReportWithdrawn;
    preliminary, registered, partial, appended, cancelled → nothing.
Patient
    telecom, language or name differs from the previous version (or first seen with
    telecom or language) → PatientUpdated. An update replaces the whole resource
    (R4 §3.1.0.4): a version without the language or name the one before stated
    clears it (``PatientDetails.cleared``), so the clinic's default language and the
    nameless greeting apply. A first version
    (a create, or an update that creates) clears nothing: it replaces no statement.
Consent
    first seen, or status or flattened provisions changed → ConsentChanged
    (``active`` = status is ``active``); see :func:`flatten_consent`.
Invoice (R4 InvoiceStatus)
    Due from the patient (``issued``, a Patient payer, a total above zero: see
    :func:`due_invoice`), first seen so or changed while so (total, number, pagoPA
    notice code, date, issuer) → InvoiceIssued; no longer due (→ ``balanced``,
    ``cancelled``, ``entered-in-error``, a deletion, or another payer) → InvoiceSettled;
    ``draft``, or never due → nothing.
A deletion (FHIR R4 §3.1.0.7), from the last version: see :func:`deletion_events`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from adapter.events import (
    AnyEvent,
    Appointment,
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentFulfilled,
    AppointmentNoShow,
    AppointmentRescheduled,
    ConsentChanged,
    ConsentProvision,
    ContactPoint,
    Identifier,
    Invoice,
    InvoiceIssued,
    InvoiceSettled,
    Origin,
    PatientDetails,
    PatientUpdated,
    ReportReady,
    ReportWithdrawn,
)
from fhir.validate import appointment_patient_ids, invoice_payer_id, patient_id_of, resource_patient_id

LOCAL_PATIENT_SYSTEM = "fhir:Patient"
CHANNEL_EXTENSION = "https://adapter.example.org/fhir/StructureDefinition/consent-channel"
CHANNEL_CODESYSTEM = "https://adapter.example.org/fhir/CodeSystem/channel"
_TELECOM = {"phone": "phone", "sms": "sms", "email": "email"}
# Not an AppointmentStatus: what a deletion (R4 §3.1.0.7) means to each of its patients.
DELETED = "deleted"
_CANCELLED = frozenset({"cancelled", "entered-in-error", DELETED})
# Statuses in which the patient has been told of the appointment (a booking confirmation).
_ANNOUNCED = frozenset({"booked", "arrived", "checked-in"})
_REPORT_ANNOUNCED = frozenset({"final", "amended", "corrected", "appended"})


def events_for(
    resource_type: str,
    new: dict[str, Any],
    previous: dict[str, Any] | None,
    *,
    origin: Origin,
    now: datetime,
    patient: PatientDetails | None,
    others: Mapping[str, PatientDetails] | None = None,
    notice_systems: tuple[str, ...] = (),
) -> list[AnyEvent]:
    """The events a new version of a resource announces, given the version it
    replaces (``None`` when first seen). ``patient`` is the resolved patient the
    resource is about; without it the key falls back to ``fhir:Patient|<id>``.
    ``others``: an Appointment's other Patient participants (of either version),
    resolved, by FHIR id; one missing there falls back the same way.
    ``notice_systems``: the Identifier.system values of a pagoPA notice code."""
    if patient is None:
        patient_id = resource_patient_id(new) or ""
        patient = (
            patient_details(new, patient_id, now=now) if resource_type == "Patient"
            else PatientDetails(key=Identifier(LOCAL_PATIENT_SYSTEM, patient_id))
        )
    if resource_type == "Appointment":
        return _appointment_events(new, previous, origin, now, patient, others or {})
    if resource_type == "DiagnosticReport":
        return _report_events(new, previous, origin, now, patient)
    if resource_type == "Patient":
        return _patient_events(new, previous, origin, now, patient)
    if resource_type == "Consent":
        return _consent_events(new, previous, origin, now, patient)
    if resource_type == "Invoice":
        return _invoice_events(new, previous, origin, now, patient, notice_systems)
    return []


def deletion_events(
    resource_type: str,
    previous: dict[str, Any],
    *,
    origin: Origin,
    now: datetime,
    patient: PatientDetails | None,
    others: Mapping[str, PatientDetails] | None = None,
) -> list[AnyEvent]:
    """The events of deleting the resource whose last version was ``previous``.

    An Appointment is called off as entered-in-error is, for each Patient participant
    it was announced to: AppointmentCancelled, reason ``deleted`` (the patient is told,
    as of an HL7 S17 deletion: they were told of the booking). A DiagnosticReport is
    withdrawn as entered-in-error withdraws it, an Invoice due is settled (reason
    ``deleted``). A Consent stops counting
    (ConsentChanged, inactive, no provisions). A Patient's deletion announces nothing:
    the person and their contacts stay (erasure is a data-subject request of its own).

    >>> deletion_events("Consent", {"resourceType": "Consent", "id": "c1", "status": "active"},
    ...                 origin=Origin("fhir", "ehr"), now=datetime(2030, 1, 1, tzinfo=UTC),
    ...                 patient=None)[0].active
    False
    """
    common = dict(origin=origin, now=now, patient=patient, others=others)
    if resource_type == "Appointment":
        return events_for(resource_type, {**previous, "status": DELETED}, previous, **common)  # type: ignore[arg-type]
    if resource_type == "DiagnosticReport":
        return events_for(resource_type, {**previous, "status": "entered-in-error"}, previous,
                          **common)  # type: ignore[arg-type]
    if resource_type == "Invoice":
        return events_for(resource_type, {**previous, "status": DELETED}, previous, **common)  # type: ignore[arg-type]
    if resource_type == "Consent":
        patient = patient or PatientDetails(key=Identifier(LOCAL_PATIENT_SYSTEM, resource_patient_id(previous) or ""))
        return [ConsentChanged(origin=origin, occurred_at=now, patient=patient,
                               consent_ref=f"Consent/{previous.get('id', '')}", active=False)]
    return []


def patient_details(
    patient: dict[str, Any], patient_id: str, key_systems: tuple[str, ...] = (), *, now: datetime | None = None
) -> PatientDetails:
    """PatientDetails of a FHIR Patient. The key is the first identifier whose
    system is in ``key_systems`` (in that order), else ``fhir:Patient|<id>``.

    An identifier without a ``system`` is left out: its value is unique only within
    whoever assigned it, and two EHRs may both send ``{"value": "12345"}`` for
    different people. Patients are matched on their identifiers, so it would make
    one patient of two (the HL7 side qualifies such an id by its sender instead)."""
    identifiers = tuple(
        Identifier(
            system=i["system"],
            value=i["value"],
            kind=_first_code(i.get("type")),
        )
        for i in patient.get("identifier") or []
        if i.get("value") and i.get("system")
    )
    key = Identifier(LOCAL_PATIENT_SYSTEM, patient_id)
    for system in key_systems:
        match = next((i for i in identifiers if i.system == system), None)
        if match:
            key = match
            break
    name = _official_name(patient.get("name") or [])
    return PatientDetails(
        key=key,
        identifiers=identifiers,
        given_name=" ".join(name.get("given") or []),
        family_name=name.get("family", ""),
        telecom=_telecom(patient.get("telecom") or [], now or datetime.now(UTC)),
        # Listed, even if every one has ended: the patient has none in use. No telecom
        # at all says nothing of them (an EHR that does not share them).
        telecom_listed=bool(patient.get("telecom")),
        language=_language(patient.get("communication") or []),
    )


def _official_name(names: list[dict[str, Any]]) -> dict[str, Any]:
    for use in ("official", "usual"):
        for name in names:
            if name.get("use") == use:
                return name
    return names[0] if names else {}


def _telecom(items: list[dict[str, Any]], now: datetime) -> tuple[ContactPoint, ...]:
    """The contact points in use ``now``: not ``use: old``, not past their ``period.end``
    (a number valid until a date still in the future is in use)."""
    points = []
    for item in items:
        if not item.get("value") or item.get("use") == "old":
            continue
        ended = parse_instant((item.get("period") or {}).get("end"), end=True)
        if ended is not None and ended <= now:
            continue
        points.append(ContactPoint(
            system=_TELECOM.get(item.get("system", ""), "other"),  # type: ignore[arg-type]
            value=item["value"],
            use=item.get("use", ""),
            rank=item.get("rank"),
        ))
    return tuple(sorted(points, key=lambda p: p.rank if p.rank is not None else 1 << 30))


def _language(communication: list[dict[str, Any]]) -> str:
    ordered = sorted(communication, key=lambda c: not c.get("preferred", False))
    for item in ordered:
        code = _first_code(item.get("language"))
        if code:
            return code.split("-")[0].lower()
    return ""


def _first_code(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    for coding in concept.get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return ""


def parse_instant(value: str | None, *, end: bool = False) -> datetime | None:
    """A FHIR instant/dateTime as an aware UTC datetime. A dateTime may be a year, a
    month or a day (``2025``, ``2025-01``, ``2025-01-31``): it stands for that whole
    span, from 00:00 UTC on its first day, or with ``end`` (the end of a Period,
    compared as "before it") until 00:00 UTC the day after its last.

    >>> parse_instant("2025-01", end=True).isoformat()
    '2025-02-01T00:00:00+00:00'
    """
    if not value:
        return None
    if len(value) in (4, 7):  # a year or a month (FHIR dateTime, R4 §2.24.0.1)
        year, month = int(value[:4]), int(value[5:7]) if len(value) == 7 else 1
        if end:
            year, month = (year + 1, month) if len(value) == 4 else (year + month // 12, month % 12 + 1)
        return datetime(year, month, 1, tzinfo=UTC)
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if end and len(value) == 10:  # a day: all of it
        parsed += timedelta(days=1)
    return parsed.astimezone(UTC)


def _appointment(data: dict[str, Any], fallback_start: datetime | None, appointment_ref: str) -> Appointment | None:
    start = parse_instant(data.get("start")) or fallback_start
    if start is None:
        return None
    location = ""
    for part in data.get("participant") or []:
        ref = (part.get("actor") or {}).get("reference", "")
        if "Location/" in ref:
            location = part["actor"].get("display", "")
    service = ""
    for concept in data.get("serviceType") or []:
        service = concept.get("text") or next(
            (c.get("display", "") for c in concept.get("coding") or []), "")
        if service:
            break
    return Appointment(
        ref=appointment_ref,
        start=start,
        end=parse_instant(data.get("end")),
        location=location,
        service=service,
        service_code=_service_code(data.get("serviceType") or []),
    )


def _service_code(service_types: list[Any]) -> str:
    """The first coded ``Appointment.serviceType`` (R4 CodeableConcept) as ``system|code``
    (the code alone without a system), "" when none is coded.

    >>> _service_code([{"text": "Eco"}, {"coding": [{"system": "urn:cup", "code": "ECO-ADD"}]}])
    'urn:cup|ECO-ADD'
    """
    for concept in service_types:
        coding = next((c for c in (concept.get("coding") or []) if c.get("code")), None) if isinstance(concept, dict) else None
        if coding is not None:
            system = str(coding.get("system") or "")
            return f"{system}|{coding['code']}" if system else str(coding["code"])
    return ""


def _status_for_patient(data: dict[str, Any] | None, patient_id: str | None) -> str | None:
    """The appointment's status as it concerns one of its patients: None when they are
    not a participant of it, ``declined`` when they declined an appointment that is
    not cancelled, the appointment's status otherwise.

    >>> _status_for_patient({"resourceType": "Appointment", "status": "booked", "participant": [
    ...     {"actor": {"reference": "Patient/p1"}, "status": "declined"}]}, "p1")
    'declined'
    """
    if data is None or patient_id not in appointment_patient_ids(data):
        return None
    status = data.get("status")
    if status in _CANCELLED:
        return status
    declined = any(patient_id_of(part.get("actor")) == patient_id and part.get("status") == "declined"
                   for part in data.get("participant") or [])
    return "declined" if declined else status


def patient_appointment_ref(appointment_id: str, patient_id: str | None = None) -> str:
    """The adapter's ref of an Appointment as it concerns one patient: the first Patient
    participant's is the Appointment's own; another's names them after ``#``.

    >>> patient_appointment_ref("g1"), patient_appointment_ref("g1", "p2")
    ('Appointment/g1', 'Appointment/g1#Patient/p2')
    """
    return f"Appointment/{appointment_id}" + (f"#Patient/{patient_id}" if patient_id else "")


def split_appointment_ref(ref: str) -> tuple[str, str | None]:
    """:func:`patient_appointment_ref` undone: the Appointment's reference, and the
    patient the ref names (None: the first Patient participant).

    >>> split_appointment_ref("Appointment/g1#Patient/p2"), split_appointment_ref("Appointment/g1")
    (('Appointment/g1', 'p2'), ('Appointment/g1', None))
    """
    appointment, _, patient = ref.partition("#Patient/")
    return appointment, patient or None


def _appointment_events(new, previous, origin, now, patient, others) -> list[AnyEvent]:
    """The first Patient participant's events under the Appointment's own ref (and when
    the first is another patient than before, the appointment is theirs now: the core
    withdraws what the former one was still to get); and for each other Patient
    participant, of either version, their own events under their own ref. A patient
    who no longer has a ref (removed, or now the first) hears of that first, so that
    the last word a patient gets is where they stand now."""
    first, first_before = resource_patient_id(new), previous and resource_patient_id(previous)
    aid = new.get("id", "")
    own = _participant_events(
        new, previous, _status_for_patient(new, first), _status_for_patient(previous, first_before),
        patient_appointment_ref(aid), given_away=previous is not None and first != first_before,
        origin=origin, now=now, patient=patient)
    others_now = appointment_patient_ids(new)[1:]
    others_before = appointment_patient_ids(previous)[1:] if previous else []
    removed: list[AnyEvent] = []
    staying: list[AnyEvent] = []
    for pid in dict.fromkeys([*others_now, *others_before]):
        status = _status_for_patient(new, pid) if pid in others_now else None
        before = _status_for_patient(previous, pid) if pid in others_before else None
        found = _participant_events(
            new, previous, status, before, patient_appointment_ref(aid, pid), given_away=False,
            origin=origin, now=now,
            patient=others.get(pid) or PatientDetails(key=Identifier(LOCAL_PATIENT_SYSTEM, pid)))
        (staying if status else removed).extend(found)
    return [*removed, *own, *staying]


def _participant_events(new, previous, status, before, ref, *, given_away, origin, now, patient) -> list[AnyEvent]:
    """One patient's events, from the appointment's status as it concerns them before
    (``before``) and now (``status``; None: no longer a participant)."""
    prev_start = parse_instant((previous or {}).get("start"))
    appointment = _appointment(new, prev_start, ref)
    if appointment is None or status == before and status != "booked":
        return []
    common = dict(origin=origin, occurred_at=now, patient=patient, appointment=appointment)
    if status == "booked":
        if before != "booked":
            return [AppointmentBooked(**common)]
        if prev_start != appointment.start or given_away:
            # Moved, or given to another patient: the core tells the one it now belongs
            # to, and withdraws what the first was still to get.
            return [AppointmentRescheduled(**common, previous_start=prev_start)]
        return []
    if status is None or status in _CANCELLED or status == "declined":
        if before not in _ANNOUNCED:  # never announced as booked: nothing to call off
            return []
        return [AppointmentCancelled(**common, reason=status or "removed")]
    if status == "noshow":
        return [AppointmentNoShow(**common)]
    if status == "fulfilled":
        return [AppointmentFulfilled(**common)]
    return []


def _report_events(new, previous, origin, now, patient) -> list[AnyEvent]:
    status, before = new.get("status"), (previous or {}).get("status")
    if status == before:
        return []
    ref = f"DiagnosticReport/{new.get('id', '')}"
    codes = tuple(
        f"{c.get('system', '')}|{c['code']}"
        for c in (new.get("code") or {}).get("coding") or [] if c.get("code")
    )
    common = dict(origin=origin, occurred_at=now, patient=patient, report_ref=ref)
    if status == "final":
        return [] if before in _REPORT_ANNOUNCED else [ReportReady(**common, codes=codes)]
    if status in ("amended", "corrected"):
        return [ReportReady(**common, codes=codes, amended=before in _REPORT_ANNOUNCED)]
    if status == "entered-in-error" and previous is not None:
        return [ReportWithdrawn(**common)]
    return []


def _patient_events(new, previous, origin, now, patient) -> list[AnyEvent]:
    telecom, language = _telecom(new.get("telecom") or [], now), _language(new.get("communication") or [])
    if previous is None:
        changed = bool(telecom or language)
    else:
        name_before = _official_name(previous.get("name") or [])
        held = {"language": _language(previous.get("communication") or []),
                "given_name": " ".join(name_before.get("given") or []),
                "family_name": name_before.get("family", "")}
        now_stated = {"language": language, "given_name": patient.given_name, "family_name": patient.family_name}
        changed = telecom != _telecom(previous.get("telecom") or [], now) or held != now_stated
        gone = frozenset(field for field, value in held.items() if value and not now_stated[field])
        if gone:
            patient = replace(patient, cleared=patient.cleared | gone)
    return [PatientUpdated(origin=origin, occurred_at=now, patient=patient)] if changed else []


def _consent_events(new, previous, origin, now, patient) -> list[AnyEvent]:
    active, provisions = new.get("status") == "active", flatten_consent(new)
    if previous is not None and (previous.get("status") == "active", flatten_consent(previous)) == (
        active, provisions
    ):
        return []
    return [ConsentChanged(
        origin=origin, occurred_at=now, patient=patient,
        consent_ref=f"Consent/{new.get('id', '')}", active=active, provisions=provisions,
    )]


def flatten_consent(consent: dict[str, Any]) -> tuple[ConsentProvision, ...]:
    """Flatten Consent.provision (R4) into ConsentProvisions, base rule first,
    each nested provision after its parent; a consumer applies the most specific
    (last) one that matches purpose × channel × time.

    - decision: ``provision.type``; a nested provision without one inherits it.
    - purpose: each ``provision.purpose`` code (e.g. v3 ActReason ``HOPERAT``, or
      the adapter's own purposes); none = inherited, at the top ``"*"``.
    - channel: the extension ``CHANNEL_EXTENSION`` on the provision (valueCode,
      valueString or valueCoding.code: ``sms``, ``email``, ``whatsapp``, ``telegram``),
      else ``provision.actor.role`` codings from ``CHANNEL_CODESYSTEM``; none =
      inherited, at the top ``"*"``.
    - period: ``provision.period``, intersected with the parent's.
    A Consent without a provision is one permit (active) for ``*`` × ``*``.
    """
    root = consent.get("provision")
    if not root:
        return (ConsentProvision(decision="permit"),) if consent.get("status") == "active" else ()
    out: list[ConsentProvision] = []
    _flatten(root, "permit", ("*",), ("*",), None, None, out)
    return tuple(out)


def _flatten(provision, decision, purposes, channels, start, end, out) -> None:
    decision = provision.get("type") or decision
    purposes = tuple(c["code"] for c in provision.get("purpose") or [] if c.get("code")) or purposes
    channels = _channels(provision) or channels
    period = provision.get("period") or {}
    p_start, p_end = parse_instant(period.get("start")), parse_instant(period.get("end"), end=True)
    start = max(filter(None, (start, p_start)), default=None)
    end = min(filter(None, (end, p_end)), default=None)
    for purpose in purposes:
        for channel in channels:
            out.append(ConsentProvision(decision, purpose, channel, start, end))
    for nested in provision.get("provision") or []:
        _flatten(nested, decision, purposes, channels, start, end, out)


def _channels(provision: dict[str, Any]) -> tuple[str, ...]:
    found = []
    for ext in provision.get("extension") or []:
        if ext.get("url") == CHANNEL_EXTENSION:
            value = ext.get("valueCode") or ext.get("valueString") or (
                ext.get("valueCoding") or {}).get("code")
            if value:
                found.append(value)
    for actor in provision.get("actor") or []:
        for coding in (actor.get("role") or {}).get("coding") or []:
            if coding.get("system") == CHANNEL_CODESYSTEM and coding.get("code"):
                found.append(coding["code"])
    return tuple(found)


def due_invoice(data: dict[str, Any] | None, notice_systems: tuple[str, ...] = ()) -> Invoice | None:
    """What an Invoice asks its patient to pay, or None when it asks them nothing: it is
    not ``issued``, someone other than a Patient pays it (:func:`invoice_payer_id`), or
    its total is not above zero. The amount is ``totalGross`` (what is paid, taxes
    included), else ``totalNet``; the issue moment ``date`` (a day alone: its 00:00 UTC);
    the number the first identifier whose system is not a notice code's
    (``notice_systems``), the notice code the first whose system is one.

    >>> due_invoice({"resourceType": "Invoice", "id": "i1", "status": "issued", "date": "2030-11-02",
    ...     "subject": {"reference": "Patient/p1"}, "totalGross": {"value": 35, "currency": "EUR"},
    ...     "identifier": [{"system": "n", "value": "7"}]}).amount
    Decimal('35')
    """
    if data is None or data.get("status") != "issued" or invoice_payer_id(data) is None:
        return None
    total = data.get("totalGross") or data.get("totalNet") or {}
    try:
        amount = Decimal(str(total.get("value")))
    except InvalidOperation:
        return None
    issued_at = parse_instant(data.get("date"))
    if not amount.is_finite() or amount <= 0 or issued_at is None:
        return None
    identifiers = [i for i in data.get("identifier") or [] if i.get("value")]
    number = next((i["value"] for i in identifiers if i.get("system") not in notice_systems), "")
    notice = next((i["value"] for i in identifiers if i.get("system") in notice_systems), "")
    return Invoice(
        ref=f"Invoice/{data.get('id', '')}",
        issued_at=issued_at,
        amount=amount,
        currency=str(total.get("currency") or ""),
        number=number,
        notice_code=notice,
        issuer=(data.get("issuer") or {}).get("reference", ""),
    )


def _invoice_events(new, previous, origin, now, patient, notice_systems) -> list[AnyEvent]:
    due, before = due_invoice(new, notice_systems), due_invoice(previous, notice_systems)
    if due is not None:
        return [] if due == before else [InvoiceIssued(origin=origin, occurred_at=now, patient=patient, invoice=due)]
    if before is None:
        return []
    status = new.get("status")
    reason = status if status in ("balanced", "cancelled", "entered-in-error", DELETED) else "not-due"
    return [InvoiceSettled(origin=origin, occurred_at=now, patient=patient, invoice_ref=before.ref, reason=reason)]
