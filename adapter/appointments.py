"""What an appointment event means next to what we already stored of the appointment.
Pure: the pipeline reads the stored row, asks :func:`change_to_apply`, and applies the answer.

Messages about one appointment arrive repeated and out of order: a sender re-sends a
booking with a new control id, a cancellation overtakes the booking on another
connection. HL7 v2 says when each event happened (EVN-6, EVN-2, else MSH-7: the event's
``occurred_at``); the appointment keeps the time of the HL7 event that last set it, and
an older HL7 event changes nothing. FHIR and patients' replies are not ordered this way
(FHIR versions are ordered by the FHIR intake; a reply happens now).

>>> from datetime import UTC, datetime
>>> at = datetime(2026, 3, 10, 9, tzinfo=UTC)
>>> patient = ev.PatientDetails(ev.Identifier("OSP", "1", "MR"))
>>> s12 = ev.AppointmentBooked(ev.Origin("hl7", "CUP^OSP", "M2"), at, patient, ev.Appointment("hl7:CUP^OSP:A1", at))
>>> change_to_apply(s12, StoredAppointment("cancelled", at, "p1", at), "p1") is None  # never revives a cancellation
True
>>> type(change_to_apply(s12, None, "p1")).__name__
'AppointmentBooked'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from adapter import events as ev


@dataclass(frozen=True)
class StoredAppointment:
    """What we knew of an appointment before the event at hand."""

    status: str  # booked, cancelled, noshow, fulfilled
    start: datetime
    patient_id: str
    event_at: datetime | None  # when the HL7 event that last set it happened; None: not known


def change_to_apply(event: ev.Event, stored: StoredAppointment | None, patient_id: str) -> ev.Event | None:
    """The event to apply for ``event`` (about the patient ``patient_id``) given ``stored``,
    or None when it changes nothing:

    - an HL7 event older than the one that last set the appointment is stale;
    - an HL7 booking (SIU^S12) of an appointment we know is a re-sent or late booking:
      it never brings back a cancelled (no-show, fulfilled) appointment, is stale unless
      newer than what we stored, and otherwise is a modification (as SIU^S14): the
      pipeline compares it with what is stored and tells the patient only of a change;
    - a cancellation of an appointment already cancelled changes nothing: the hospital
      echoing the cancellation the patient made by reply, or a cancellation sent again;
    - a modification of an appointment we do not know, that comes back from a
      cancellation, or that gives it to another patient, is a booking (of that patient:
      the pipeline withdraws what the first patient was still to get).
    """
    appointment: ev.Appointment = event.appointment  # type: ignore[attr-defined]
    if stored is not None and _hl7(event) and stored.event_at is not None:
        if event.occurred_at < stored.event_at:
            return None
        if isinstance(event, ev.AppointmentBooked) and event.occurred_at == stored.event_at:
            return None  # the booking comes first: at the same moment, what we stored follows it
    if isinstance(event, ev.AppointmentCancelled) and stored is not None and stored.status == "cancelled" \
            and stored.patient_id == patient_id:
        return None  # cancelled already (the patient's reply, which the hospital now echoes): told once
    if isinstance(event, ev.AppointmentBooked) and stored is not None and _hl7(event):
        if stored.status != "booked":
            return None
        return ev.AppointmentRescheduled(event.origin, event.occurred_at, event.patient, appointment,
                                         previous_start=stored.start)
    if isinstance(event, ev.AppointmentRescheduled) and (
            stored is None or stored.status != "booked" or stored.patient_id != patient_id):
        return ev.AppointmentBooked(event.origin, event.occurred_at, event.patient, appointment)
    return event


def _hl7(event: ev.Event) -> bool:
    return event.origin.source == "hl7"
