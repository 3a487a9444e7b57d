"""Write-back: a patient's confirmation or cancellation, sent back to the hospital durably.

Outbox pattern: :func:`queue_writebacks` adds ``writeback`` rows in the transaction that
records the reply; :class:`WritebackSender` (run by the in-process worker) delivers them
with retries and backoff (at most 10 minutes apart) until they succeed, or until
``ADAPTER_HOSPITAL_RETRY_HOURS`` have passed since they were queued: a hospital's
interface engine down for a night is normal. An operator sees them with
``python -m adapter writebacks`` and queues them again with ``writebacks resend``
(:func:`resend`).

Targets, per source of the appointment:
- HL7 v2 over an outbound MLLP connection, when the facility (``config/facilities.yaml``)
  sets ``writeback`` and a ``cancellation_writeback`` message type: SIU^S15 (HL7 v2.5
  §10.4.3, notification of cancellation) or SRM^S04 (§10.3.4, request cancellation); a
  confirmation goes as SIU^S14 / SRM^S03 with the status "Confirmed". AA (or CA) is
  success. We hold patient identifiers only as blind indexes, so PID carries no
  identifier: the appointment id (SCH-1/SCH-2, ARQ-1/ARQ-2) names what changed.
- FHIR R4, when ``config/writeback.yaml`` names a ``fhir_base`` for the source: an
  ``AppointmentResponse`` (accepted / declined, created once per write-back through
  ``If-None-Exist``) from the patient the notice went to and, for a cancellation, the
  ``Appointment`` updated to ``cancelled``, or, when it has other Patient participants (a
  group session), that patient's participant updated to ``declined``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapter.db import transaction
from adapter.errors import ConfigError
from adapter.models import Appointment
from fhir.mapping import split_appointment_ref
from fhir.validate import patient_id_of
from adapter.reply_models import PatientReply, Writeback
from hl7.ack import new_control_id
from hl7.client import MLLPConnection, encode_message, read_ack_code
from hl7.errors import MLLPClientError
from hl7.facilities import FacilityRule, WritebackEndpoint
from hl7.header import Separators
from hl7.message import escape
from hl7.mllp import client_ssl_context

log = logging.getLogger(__name__)

# A sender claims a batch of due rows (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite
# serialises writers) for LEASE: another sender, in this process or another, skips
# them until then. Each attempt ends within ATTEMPT_TIMEOUT, and a sender starts one
# only while its lease has that long left, so no row is ever on the wire twice.
LEASE = timedelta(minutes=2)
ATTEMPT_TIMEOUT = timedelta(seconds=30)
FHIR_JSON = "application/fhir+json"
WRITEBACK_ID_SYSTEM = "urn:adapter:writeback"
Action = Literal["confirm", "cancel"]


class WritebackError(Exception):
    """One delivery attempt failed; the text never carries personal data."""


# -- configuration -----------------------------------------------------------------------


class SourceTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fhir_base: str = ""


class WritebackTargets(BaseModel):
    """``config/writeback.yaml``: per source key (HL7 MSH-4 facility, or the FHIR sender
    name), where FHIR write-back goes; ``default`` applies to any other source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, SourceTarget] = {}

    def for_source(self, key: str) -> SourceTarget:
        return self.sources.get(key) or self.sources.get("default") or SourceTarget()


def load_targets(config_dir: Path) -> WritebackTargets:
    path = config_dir / "writeback.yaml"
    if not path.exists():
        return WritebackTargets()
    try:
        return WritebackTargets.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def source_key(appointment: Appointment) -> str:
    """HL7: the sending facility (MSH-4 of ``APP^FACILITY``); FHIR: the sender name."""
    return appointment.sender.split("^")[-1] if appointment.source == "hl7" else appointment.sender


def hl7_ident(appointment: Appointment) -> str:
    """The appointment id as the hospital sent it (the ref is ``hl7:<sender>:<id>``)."""
    prefix = f"hl7:{appointment.sender}:"
    return appointment.ref[len(prefix):] if appointment.ref.startswith(prefix) else appointment.ref


def targets_for(container: Any, appointment: Appointment) -> list[str]:
    targets = []
    if appointment.source == "hl7":
        rule = container.facilities.for_facility(source_key(appointment))
        if rule.writeback is not None and rule.cancellation_writeback != "none":
            targets.append("hl7")
    if load_targets(container.settings.config_dir).for_source(source_key(appointment)).fhir_base:
        targets.append("fhir")
    return targets


def queue_writebacks(session: Session, container: Any, appointment: Appointment, reply: PatientReply,
                     action: Action, *, now: datetime) -> list[Writeback]:
    """Add the outbox rows for one decision, in the caller's transaction."""
    rows = [
        Writeback(reply_id=reply.id, appointment_ref=appointment.ref, patient_id=appointment.patient_id,
                  action=action, target=target, status="pending", attempts=0, next_attempt_at=now, created_at=now)
        for target in targets_for(container, appointment)
    ]
    session.add_all(rows)
    session.flush()
    return rows


# -- HL7 -------------------------------------------------------------------------------------


def build_hl7(appointment: Appointment, rule: FacilityRule, action: Action, *, now: datetime) -> str:
    """The ER7 message telling the hospital of a patient's decision (see the module doc).

    >>> from hl7.facilities import default_facilities
    >>> from datetime import UTC
    >>> a = Appointment(ref="hl7:CUP^OSP:FL1", sender="CUP^OSP", source="hl7", start=datetime(2026, 1, 2, 9, tzinfo=UTC))
    >>> rule = default_facilities().for_facility("OSP").model_copy(update={"cancellation_writeback": "SIU^S15"})
    >>> msg = build_hl7(a, rule, "cancel", now=datetime(2026, 1, 1, tzinfo=UTC)).split("\\r")
    >>> msg[0].split("|")[8], msg[1].split("|")[2], msg[1].split("|")[25]
    ('SIU^S15^SIU_S12', 'FL1', 'Cancelled')
    """
    sep = Separators()
    app, _, facility = appointment.sender.rpartition("^")
    ident = escape(hl7_ident(appointment), sep)
    placer, filler = (ident, "") if rule.appointment_id == "placer" else ("", ident)
    cancel = action == "cancel"
    reason = "CANCEL^Cancelled by patient reply" if cancel else "CONFIRM^Confirmed by patient reply"
    status = "Cancelled" if cancel else "Confirmed"
    start = appointment.start.strftime("%Y%m%d%H%M%S%z")
    if rule.cancellation_writeback == "SRM^S04":
        msh9 = "SRM^S04^SRM_S01" if cancel else "SRM^S03^SRM_S01"
        body = "|".join(["ARQ", placer, filler, "", "", "", reason, "", "", "", "", f"^^^{start}"])
    else:
        msh9 = "SIU^S15^SIU_S12" if cancel else "SIU^S14^SIU_S12"
        sch = ["SCH", placer, filler, "", "", "", reason, "", "", "", "", f"^^^{start}"] + [""] * 13 + [status]
        body = "|".join(sch)
    msh = "|".join(["MSH", sep.encoding_characters, "ADAPTER", "NOTIFY", escape(app, sep), escape(facility, sep),
                    now.strftime("%Y%m%d%H%M%S%z"), "", msh9, new_control_id(), "P", "2.5",
                    "", "", "", "", "", "UNICODE UTF-8"])
    return "\r".join([msh, body, "PID|1", "RGS|1"]) + "\r"


async def send_hl7(appointment: Appointment, rule: FacilityRule, action: Action, *, now: datetime,
                   timeout: float = 10.0) -> None:
    endpoint = rule.writeback
    if endpoint is None:
        raise WritebackError("the facility has no write-back endpoint any more")
    await deliver_over_mllp(endpoint, encode_message(build_hl7(appointment, rule, action, now=now)), timeout=timeout)


async def deliver_over_mllp(endpoint: WritebackEndpoint, payload: bytes, *, timeout: float = 10.0) -> None:
    """Send one message to a hospital's MLLP listener; done only when it answers
    AA or CA (else WritebackError, and the caller retries; an answer too large to
    be an ACK too)."""
    connection = MLLPConnection(endpoint.host, endpoint.port, timeout=timeout,
                                ssl_context=client_ssl_context() if endpoint.tls else None)
    try:
        ack = await connection.send(payload)
    except (OSError, asyncio.TimeoutError, MLLPClientError) as exc:
        raise WritebackError(f"MLLP: {type(exc).__name__}") from None
    finally:
        await connection.close()
    code, _ = read_ack_code(ack)
    if code is None or not code.is_accept:
        raise WritebackError(f"MLLP: answered {code.value if code else 'no readable ACK'}")


# -- FHIR ------------------------------------------------------------------------------------


async def send_fhir(http: httpx.AsyncClient, base: str, appointment: Appointment, action: Action,
                    writeback_id: int) -> None:
    base = base.rstrip("/")
    headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}

    async def call(method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await http.request(method, f"{base}/{url}", headers={**headers, **kwargs.pop("headers", {})},
                                          **kwargs)
        except httpx.HTTPError as exc:
            raise WritebackError(f"FHIR {method} {url.split('?')[0]}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise WritebackError(f"FHIR {method} {url.split('?')[0]}: {response.status_code}")
        return response.json() if response.content else {}

    appointment_ref, patient_id = split_appointment_ref(appointment.ref)
    if appointment.source == "fhir" and appointment_ref.startswith("Appointment/"):
        resource = await call("GET", appointment_ref)
    else:
        found = await call("GET", "Appointment", params={"identifier": hl7_ident(appointment)})
        entries = [e.get("resource") for e in found.get("entry") or [] if e.get("resource")]
        if not entries:
            raise WritebackError("FHIR: the appointment is not on the server")
        resource = entries[0]
    reference = f"Appointment/{resource['id']}"
    patients = [p for p in resource.get("participant") or [] if patient_id_of(p.get("actor"))]
    own = next((p for p in patients if patient_id is None or patient_id_of(p.get("actor")) == patient_id), None)
    patient = own.get("actor") if own else None
    response_resource = {
        "resourceType": "AppointmentResponse",
        "identifier": [{"system": WRITEBACK_ID_SYSTEM, "value": str(writeback_id)}],
        "appointment": {"reference": reference},
        "participantStatus": "declined" if action == "cancel" else "accepted",
        "comment": "Cancelled by the patient's reply" if action == "cancel" else "Confirmed by the patient's reply",
        **({"actor": patient} if patient else {}),
    }
    await call("POST", "AppointmentResponse", json=response_resource,
               headers={"If-None-Exist": f"identifier={WRITEBACK_ID_SYSTEM}|{writeback_id}"})
    if action == "cancel" and own is not None and len(patients) > 1:
        # A group appointment goes ahead for the others: this patient declines their place.
        if own.get("status") != "declined":
            updated = {**resource, "participant": [{**p, "status": "declined"} if p is own else p
                                                   for p in resource.get("participant") or []]}
            await call("PUT", reference, json=updated)
    elif action == "cancel" and resource.get("status") != "cancelled":
        updated = {**resource, "status": "cancelled",
                   "cancelationReason": {"coding": [{
                       "system": "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason",
                       "code": "pat", "display": "Patient"}]}}
        await call("PUT", reference, json=updated)


# -- the sender --------------------------------------------------------------------------------


def retry_delay(attempts: int) -> float:
    """Exponential backoff with jitter, from 2 s to at most 10 minutes.

    >>> 300.0 <= retry_delay(5000) <= 600.0
    True
    """
    return random.uniform(0.5, 1.0) * min(600.0, 2.0 ** min(attempts, 10))


def settle_attempt(row: Any, error: str | None, *, now: datetime, what: str, retry_for: timedelta) -> None:
    """Record one delivery attempt of an outbox row (write-back, application ACK):
    done, or the next try after a back-off, or failed for good once ``retry_for``
    has passed since the row was queued (``created_at``)."""
    row.attempts += 1
    if error is None:
        row.status, row.done_at, row.last_error = "done", now, None
        return
    row.last_error = error[:200]
    if now - row.created_at >= retry_for:
        row.status = "failed"
        log.warning("%s %s failed for good after %s attempts", what, row.id, row.attempts)
    else:
        row.next_attempt_at = now + timedelta(seconds=retry_delay(row.attempts))


def lease_lasts_an_attempt(now: datetime, leased_until: datetime) -> bool:
    """Whether an attempt started ``now`` ends before the batch's lease does (the rest
    of the batch is due again when the lease ends, for whichever sender is free)."""
    return now + ATTEMPT_TIMEOUT <= leased_until


def requeue(row: Any, *, now: datetime) -> None:
    """Owe an outbox row (write-back, application ACK) again from ``now``: due at
    once, back-off and retry period starting afresh."""
    row.status, row.attempts, row.next_attempt_at, row.created_at = "pending", 0, now, now


def resend(session: Session, outbox: type[Any], ids: list[int], *, now: datetime) -> dict[int, str]:
    """An operator's resend: queue the given rows of ``outbox`` (:class:`Writeback`,
    ``ApplicationAck``) again, given up or done; a pending one is left to its sender
    (it may be on the wire). Returns what became of each id."""
    outcome = {}
    for row_id in ids:
        row = session.get(outbox, row_id, with_for_update=True)
        if row is None:
            outcome[row_id] = "no such id"
        elif row.status == "pending":
            outcome[row_id] = "already pending"
        else:
            requeue(row, now=now)
            outcome[row_id] = "queued again"
    queued = [row_id for row_id, what in outcome.items() if what == "queued again"]
    if queued:
        log.info("%s rows queued again by an operator", outbox.__tablename__, extra={"fields": {"ids": queued}})
    return outcome


class WritebackSender:
    """Delivers due ``writeback`` rows; one instance per worker."""

    def __init__(self, container: Any, *, http: httpx.AsyncClient | None = None, batch_size: int = 20) -> None:
        self.container = container
        self.http = http or httpx.AsyncClient(timeout=10.0)
        self.batch_size = batch_size

    async def aclose(self) -> None:
        await self.http.aclose()

    async def run_once(self) -> int:
        ids, leased_until = await asyncio.to_thread(self._claim)
        for writeback_id in ids:
            if not lease_lasts_an_attempt(self.container.clock.now(), leased_until):
                break
            await self._deliver(writeback_id)
        return len(ids)

    def _claim(self) -> tuple[list[int], datetime]:
        now = self.container.clock.now()
        with transaction(self.container.sessions) as session:
            rows = list(session.scalars(
                select(Writeback).where(Writeback.status == "pending", Writeback.next_attempt_at <= now)
                .order_by(Writeback.next_attempt_at, Writeback.id).limit(self.batch_size)
                .with_for_update(skip_locked=True)  # PostgreSQL; SQLite renders none and needs none
            ))
            for row in rows:
                row.next_attempt_at = now + LEASE
            return [row.id for row in rows], now + LEASE

    def _load(self, writeback_id: int) -> tuple[Writeback, Appointment] | None:
        with transaction(self.container.sessions) as session:
            row = session.get(Writeback, writeback_id)
            if row is None or row.status != "pending":
                return None
            appointment = session.scalar(select(Appointment).where(Appointment.ref == row.appointment_ref))
            if appointment is None:
                return None
            session.expunge_all()
            return row, appointment

    async def _deliver(self, writeback_id: int) -> None:
        loaded = await asyncio.to_thread(self._load, writeback_id)
        if loaded is None:
            return
        row, appointment = loaded
        error: str | None = None
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT.total_seconds()):
                await self._send(row, appointment)
        except WritebackError as exc:
            error = str(exc)
        except TimeoutError:
            error = f"no answer within {ATTEMPT_TIMEOUT.total_seconds():.0f} s"
        except Exception as exc:  # noqa: BLE001 - a bug must not lose the write-back
            log.exception("write-back %s failed", writeback_id)
            error = f"internal: {type(exc).__name__}"
        await asyncio.to_thread(self._record, writeback_id, error)

    async def _send(self, row: Writeback, appointment: Appointment) -> None:
        if row.target == "hl7":
            rule = self.container.facilities.for_facility(source_key(appointment))
            await send_hl7(appointment, rule, row.action, now=self.container.clock.now())  # type: ignore[arg-type]
        else:
            base = load_targets(self.container.settings.config_dir).for_source(source_key(appointment)).fhir_base
            await send_fhir(self.http, base, appointment, row.action, row.id)  # type: ignore[arg-type]

    def _record(self, writeback_id: int, error: str | None) -> None:
        now = self.container.clock.now()
        with transaction(self.container.sessions) as session:
            row = session.get(Writeback, writeback_id)
            if row is not None:
                settle_attempt(row, error, now=now, what="write-back",
                               retry_for=timedelta(hours=self.container.settings.hospital_retry_hours))
