"""Validation of incoming resources: structure with the fhir.resources R4B models
(its default models are R5), then the required bindings it does not check (it
accepts any string as a code) and the adapter's own rules.

>>> parse_resource(b'{"resourceType": "Patient", "gender": "female"}')["gender"]
'female'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.invoice import Invoice
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from fhir.errors import FhirError, Issue, invalid

MODELS = {
    "Patient": Patient,
    "Appointment": Appointment,
    "DiagnosticReport": DiagnosticReport,
    "Consent": Consent,
    "Invoice": Invoice,
}
SUPPORTED_TYPES = tuple(MODELS)

# Required bindings, FHIR R4 (4.0.1) value sets.
APPOINTMENT_STATUS = frozenset(
    "proposed pending booked arrived fulfilled cancelled noshow entered-in-error "
    "checked-in waitlist".split()
)
PARTICIPANT_STATUS = frozenset("accepted declined tentative needs-action".split())
REPORT_STATUS = frozenset(
    "registered partial preliminary final amended corrected appended cancelled "
    "entered-in-error".split()
)
CONSENT_STATUS = frozenset("draft proposed active rejected inactive entered-in-error".split())
INVOICE_STATUS = frozenset("draft issued balanced cancelled entered-in-error".split())
PROVISION_TYPE = frozenset({"permit", "deny"})
TELECOM_SYSTEM = frozenset("phone fax email pager url sms other".split())
TELECOM_USE = frozenset("home work temp old mobile".split())
GENDER = frozenset("male female other unknown".split())
# The adapter reminds about these; without a start there is nothing to remind of.
NEEDS_START = frozenset({"booked", "arrived", "checked-in"})

PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def parse_resource(raw: bytes | str, *, expected_type: str | None = None) -> dict[str, Any]:
    """Parse and validate one resource; return it as JSON data.

    Raises :class:`FhirError` (400 structural or binding errors, 422 adapter
    rules) whose issues point at the offending element."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"The body is not valid JSON: {exc}", code="structure") from None
    if not isinstance(data, dict):
        raise invalid("The body must be a JSON object (a FHIR resource)", code="structure")
    return parse_data(data, expected_type=expected_type)


def parse_data(data: dict[str, Any], *, expected_type: str | None = None) -> dict[str, Any]:
    """:func:`parse_resource` for JSON data already decoded (Bundle entries): each
    entry is decoded once and validated once."""
    resource_type = data.get("resourceType")
    if expected_type and resource_type != expected_type:
        raise invalid(
            f"resourceType is {resource_type!r} but this endpoint takes {expected_type}",
            f"{expected_type}.resourceType" if resource_type else "resourceType",
        )
    if resource_type not in MODELS:
        raise FhirError(
            400 if not isinstance(resource_type, str) else 422,
            Issue("not-supported", f"Resource type {resource_type!r} is not supported here; "
                  f"supported: {', '.join(SUPPORTED_TYPES)}", "resourceType"),
        )
    try:
        MODELS[resource_type].model_validate(data)
    except ValidationError as exc:
        raise FhirError(400, list(_structure_issues(resource_type, exc))) from None
    check_rules(data)
    return data


Verdict = tuple[int, list[Issue]] | None


def verdicts(resources: list[dict[str, Any]]) -> list[Verdict]:
    """:func:`parse_data` for each resource: None when it is valid, else the
    status and issues it would raise. Plain values, so that the answer can come
    back from another process (:mod:`fhir.validation_pool`).

    >>> [v and (v[0], v[1][0].expression) for v in verdicts(
    ...     [{"resourceType": "Patient"}, {"resourceType": "Patient", "gender": "f"}])]
    [None, (400, 'Patient.gender')]
    """
    out: list[Verdict] = []
    for resource in resources:
        try:
            parse_data(resource)
        except FhirError as exc:
            out.append((exc.status, exc.issues))
        else:
            out.append(None)
    return out


def _structure_issues(resource_type: str, exc: ValidationError) -> Iterator[Issue]:
    for error in exc.errors():
        path = element_path(resource_type, error["loc"])
        if error["type"] == "extra_forbidden":
            name = error["loc"][-1] if error["loc"] else "?"
            yield Issue("structure", f"Unknown element '{name}' is not part of FHIR R4 "
                        f"{resource_type} (at {path})", path)
        elif error["type"] == "missing":
            yield Issue("required", f"Element {path} is required", path)
        else:
            yield Issue("value", f"{path}: {error['msg']}", path)


def element_path(root: str, loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a FHIRPath.

    >>> element_path("Appointment", ("participant", 0, "actor"))
    'Appointment.participant[0].actor'
    """
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("resource_type", "__root__"):
            out += f".{part}"
    return out


def check_rules(data: dict[str, Any]) -> None:
    issues = list(_binding_issues(data))
    if issues:
        raise FhirError(400, issues)
    issues = list(_adapter_rule_issues(data))
    if issues:
        raise FhirError(422, issues)


def _code(value: Any, allowed: frozenset[str], path: str, name: str) -> Iterator[Issue]:
    if value is not None and value not in allowed:
        yield Issue("code-invalid", f"{value!r} is not a valid {name}; expected one of: "
                    f"{', '.join(sorted(allowed))}", path)


def _binding_issues(data: dict[str, Any]) -> Iterator[Issue]:
    kind = data["resourceType"]
    if "id" in data and not ID_PATTERN.match(str(data["id"])):
        yield Issue("value", f"{data['id']!r} is not a valid FHIR id", f"{kind}.id")
    if kind == "Patient":
        yield from _code(data.get("gender"), GENDER, "Patient.gender", "AdministrativeGender")
        for i, contact in enumerate(data.get("telecom") or []):
            yield from _code(contact.get("system"), TELECOM_SYSTEM,
                             f"Patient.telecom[{i}].system", "ContactPointSystem")
            yield from _code(contact.get("use"), TELECOM_USE,
                             f"Patient.telecom[{i}].use", "ContactPointUse")
    elif kind == "Appointment":
        yield from _code(data.get("status"), APPOINTMENT_STATUS, "Appointment.status",
                         "AppointmentStatus")
        for i, part in enumerate(data.get("participant") or []):
            yield from _code(part.get("status"), PARTICIPANT_STATUS,
                             f"Appointment.participant[{i}].status", "ParticipationStatus")
    elif kind == "DiagnosticReport":
        yield from _code(data.get("status"), REPORT_STATUS, "DiagnosticReport.status",
                         "DiagnosticReportStatus")
    elif kind == "Consent":
        yield from _code(data.get("status"), CONSENT_STATUS, "Consent.status",
                         "ConsentState")
        if data.get("provision"):
            yield from _provision_issues(data["provision"], "Consent.provision")
    elif kind == "Invoice":
        yield from _code(data.get("status"), INVOICE_STATUS, "Invoice.status", "InvoiceStatus")


def _provision_issues(provision: dict[str, Any], path: str) -> Iterator[Issue]:
    yield from _code(provision.get("type"), PROVISION_TYPE, f"{path}.type", "ConsentProvisionType")
    for i, nested in enumerate(provision.get("provision") or []):
        yield from _provision_issues(nested, f"{path}.provision[{i}]")


def _adapter_rule_issues(data: dict[str, Any]) -> Iterator[Issue]:
    kind = data["resourceType"]
    if kind == "Appointment":
        if appointment_patient_id(data) is None:
            yield Issue("business-rule", "An Appointment needs a participant whose actor is a "
                        "Patient reference (Patient/{id}): reminders go to that patient",
                        "Appointment.participant")
        if data.get("status") in NEEDS_START and not data.get("start"):
            yield Issue("business-rule", f"A {data.get('status')} Appointment needs a start: "
                        "reminders are timed from it", "Appointment.start")
    elif kind == "DiagnosticReport":
        if patient_id_of(data.get("subject")) is None:
            yield Issue("business-rule", "A DiagnosticReport needs a subject that is a Patient "
                        "reference (Patient/{id})", "DiagnosticReport.subject")
    elif kind == "Consent":
        if patient_id_of(data.get("patient")) is None:
            yield Issue("business-rule", "A Consent needs a patient that is a Patient reference "
                        "(Patient/{id})", "Consent.patient")
    elif kind == "Invoice":
        yield from _invoice_rule_issues(data)


def _invoice_rule_issues(data: dict[str, Any]) -> Iterator[Issue]:
    if resource_patient_id(data) is None:
        yield Issue("business-rule", "An Invoice needs a subject or recipient that is a Patient "
                    "reference (Patient/{id}): payment reminders go to that patient", "Invoice.subject")
    if data.get("status") == "issued":
        total = data.get("totalGross") or data.get("totalNet") or {}
        if total.get("value") is None or not total.get("currency"):
            yield Issue("business-rule", "An issued Invoice needs totalGross (or totalNet) with a value "
                        "and a currency: payment reminders state the amount", "Invoice.totalGross")
        if not data.get("date"):
            yield Issue("business-rule", "An issued Invoice needs its date: payment reminders are timed "
                        "from it", "Invoice.date")


def patient_id_of(reference: Any) -> str | None:
    """The logical id of a Patient reference (relative or absolute), else None.

    >>> patient_id_of({"reference": "https://ehr.example/fhir/Patient/p1"})
    'p1'
    """
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    match = PATIENT_REFERENCE.search(reference["reference"])
    return match.group(1) if match else None


def appointment_patient_ids(data: dict[str, Any]) -> list[str]:
    """The ids of an Appointment's Patient participants, in their order, each once
    (R4: a group appointment has a participant for each patient).

    >>> appointment_patient_ids({"participant": [{"actor": {"reference": "Patient/p2"}},
    ...     {"actor": {"reference": "Location/l1"}}, {"actor": {"reference": "Patient/p1"}}]})
    ['p2', 'p1']
    """
    found = (patient_id_of(part.get("actor")) for part in data.get("participant") or [])
    return list(dict.fromkeys(pid for pid in found if pid))


def appointment_patient_id(data: dict[str, Any]) -> str | None:
    """The first Patient participant: the patient the stored Appointment is filed under."""
    return next(iter(appointment_patient_ids(data)), None)


def resource_patient_ids(data: dict[str, Any]) -> list[str]:
    """The ids of the Patients a resource is about, other than a Patient itself: each
    Patient participant of an Appointment, the subject of a report, the patient of a
    Consent.

    >>> resource_patient_ids({"resourceType": "DiagnosticReport", "subject": {"reference": "Patient/p1"}})
    ['p1']
    """
    if data.get("resourceType") == "Appointment":
        return appointment_patient_ids(data)
    found = resource_patient_id(data) if data.get("resourceType") != "Patient" else None
    return [found] if found else []


def resource_patient_id(data: dict[str, Any]) -> str | None:
    """The logical id of the Patient a resource is about (the Patient's own id)."""
    kind = data.get("resourceType")
    if kind == "Patient":
        return data.get("id")
    if kind == "Appointment":
        return appointment_patient_id(data)
    if kind == "DiagnosticReport":
        return patient_id_of(data.get("subject"))
    if kind == "Consent":
        return patient_id_of(data.get("patient"))
    if kind == "Invoice":
        return invoice_payer_id(data) or patient_id_of(data.get("subject"))
    return None


def invoice_payer_id(data: dict[str, Any]) -> str | None:
    """The Patient who is to pay an Invoice: its ``recipient`` (R4: "the individual or
    Organization responsible for balancing of this invoice") when that is a Patient; with
    no recipient, its ``subject``. None when someone else pays (an Organization, a
    RelatedPerson): the patient is not asked.

    >>> invoice_payer_id({"subject": {"reference": "Patient/p1"}, "recipient": {"reference": "Organization/asl"}})
    >>> invoice_payer_id({"subject": {"reference": "Patient/p1"}})
    'p1'
    """
    if data.get("recipient"):
        return patient_id_of(data["recipient"])
    return patient_id_of(data.get("subject"))
