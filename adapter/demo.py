"""``python -m adapter demo``: the bundled sample feeds through a running adapter,
then each patient's timeline: what they receive and when.

The samples are built relative to now (a booking three days ahead), so the
reminders are always in the future; names and numbers are invented.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
from babel.dates import format_datetime
from rich.console import Console
from rich.table import Table

from hl7.client import send_messages

FHIR_JSON = "application/fhir+json"


def siu_s12(start: datetime, control_id: str) -> str:
    ts = start.strftime("%Y%m%d%H%M%S%z")
    return "\r".join([
        f"MSH|^~\\&|CUP|OSP_DEMO|ADAPTER|NOTIFY|{datetime.now(start.tzinfo).strftime('%Y%m%d%H%M%S%z')}||SIU^S12^SIU_S12|{control_id}|P|2.5||||||UNICODE UTF-8",
        f"SCH|PL-{control_id}^CUP|FL-{control_id}^OSP_DEMO|||||VIS^Visita||30|min|^^^{ts}|||||||||||||Booked",
        "PID|1||DEMO001^^^OSP_DEMO^MR||D'Alò^Nicolò^^^^^L||19800101|M|||||^PRN^CP^^39^333^1234567||it",
        f"AIS|1||CARD01^Visita^L|{ts}|0|min|30|min",
    ]) + "\r"


def patient(pid: str, given: str, family: str, phone: str, language: str) -> dict:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": "urn:demo:mrn", "value": pid}],
        "name": [{"given": [given], "family": family}],
        "telecom": [{"system": "phone", "use": "mobile", "value": phone, "rank": 1}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": language}]}}],
    }


def appointment(aid: str, pid: str, start: datetime, status: str = "booked", service: str = "") -> dict:
    """A FHIR Appointment; ``service``: the code of its serviceType (config/services.yaml)."""
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=30)).isoformat(),
        "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}],
        **({"serviceType": [{"coding": [{"system": "urn:demo:cup", "code": service}]}]} if service else {}),
    }


def run_demo(*, base_url: str, mllp: str, token: str, tz: str, console: Console) -> int:
    zone = ZoneInfo(tz)
    now = datetime.now(zone).replace(second=0, microsecond=0)
    run = uuid.uuid4().hex[:6]
    http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    host, _, port = mllp.rpartition(":")
    try:
        http.get("/health/live").raise_for_status()
    except httpx.HTTPError:
        console.print(f"[red]no adapter at {base_url}[/red]: start it with `make run`")
        return 2

    console.rule("1. a SIU^S12 booking over MLLP")
    start_a = (now + timedelta(days=3)).replace(hour=9, minute=30)
    results = asyncio.run(send_messages([siu_s12(start_a, f"DEMO{run}")], host, int(port)))
    console.print(f"ACK {results[0].code.value if results[0].code else results[0].error}")

    console.rule("2. a FHIR booking of an ultrasound two days ahead (instructions at once), then a reschedule")
    pid_b, aid_b = f"demo-b-{run}", f"demo-appt-b-{run}"
    put = lambda path, body: http.put(path, json=body, headers={"Content-Type": FHIR_JSON})  # noqa: E731
    put(f"/fhir/R4/Patient/{pid_b}", patient(pid_b, "Giulia", "Rossi", "+393471112233", "it")).raise_for_status()
    start_b = (now + timedelta(days=2)).replace(hour=15, minute=0)
    console.print(f"booked: {put(f'/fhir/R4/Appointment/{aid_b}', appointment(aid_b, pid_b, start_b, service='ECO-ADD')).status_code}")
    time.sleep(1.0)  # the instructions go out before the hospital moves it
    moved = start_b + timedelta(days=2)
    console.print(f"rescheduled: {put(f'/fhir/R4/Appointment/{aid_b}', appointment(aid_b, pid_b, moved, service='ECO-ADD')).status_code}")

    console.rule("3. a booking, then a cancellation")
    pid_c, aid_c = f"demo-c-{run}", f"demo-appt-c-{run}"
    put(f"/fhir/R4/Patient/{pid_c}", patient(pid_c, "John", "Smith", "+447911123456", "en")).raise_for_status()
    start_c = (now + timedelta(days=5)).replace(hour=11, minute=0)
    put(f"/fhir/R4/Appointment/{aid_c}", appointment(aid_c, pid_c, start_c)).raise_for_status()
    time.sleep(1.0)  # the confirmation goes out before the hospital cancels
    console.print(f"cancelled: {put(f'/fhir/R4/Appointment/{aid_c}', appointment(aid_c, pid_c, start_c, 'cancelled')).status_code}")

    console.rule("4. an eye check-up that took place this morning (a yearly recall)")
    pid_d, aid_d = f"demo-d-{run}", f"demo-appt-d-{run}"
    put(f"/fhir/R4/Patient/{pid_d}", patient(pid_d, "Marco", "Bianchi", "+393489998877", "it")).raise_for_status()
    visit = now - timedelta(hours=2)
    console.print(f"fulfilled: {put(f'/fhir/R4/Appointment/{aid_d}', appointment(aid_d, pid_d, visit, 'fulfilled', 'OCU01')).status_code}")

    time.sleep(1.5)  # the worker sends what is due at once
    items = http.get("/api/notifications", params={"limit": 1000}).json()["items"]
    by_patient: dict[str, list[dict]] = {}
    for item in items:
        by_patient.setdefault(item["patient"], []).append(item)
    labels = {}
    for label, ref in (("Nicolò (SIU over MLLP)", f"FL-DEMO{run}"), ("Giulia (FHIR, ultrasound, rescheduled)", aid_b),
                       ("John (FHIR, cancelled)", aid_c), ("Marco (FHIR, eye check-up done)", aid_d)):
        for patient_id, rows in by_patient.items():
            if any(ref in row["subject"] for row in rows):
                labels[patient_id] = label
    for patient_id, label in labels.items():
        table = Table("when (clinic time)", "what", "status", "channel", "note", title=label)
        for row in sorted(by_patient[patient_id], key=lambda r: r["scheduled_for"]):
            at = datetime.fromisoformat(row["scheduled_for"]).astimezone(zone)
            when = format_datetime(at, "EEE d MMM HH:mm" if at.year == now.year else "EEE d MMM y HH:mm", locale="en")
            table.add_row(when, row["kind"].replace("_", " "), row["status"], row["channel"] or "", row["reason"] or "")
        console.print(table)
    if len(labels) < 4:
        console.print("[yellow]some timelines are missing: see /api/messages for errors[/yellow]")
        return 1
    return 0
