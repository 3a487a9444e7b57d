"""FHIR payloads, the bare FastAPI baseline and an httpx load loop shared by
``bench.fhir_post`` and ``bench.fhir_ingest``."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx

from bench.common import percentile

CLIENTS = 4  # concurrent httpx clients

# A bare FastAPI app: parse the body with fhir.resources (R4B) and answer 201.
# Served by uvicorn in its own process, like the adapter.
BARE_FASTAPI = r"""
import os, uvicorn
from fastapi import FastAPI, Request, Response
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.bundle import Bundle
MODELS = {"Appointment": Appointment, "Patient": Patient, "Bundle": Bundle}
app = FastAPI()
@app.post("/fhir/R4/{kind}")
async def create(kind: str, request: Request):
    MODELS[kind].model_validate_json(await request.body())
    return Response(status_code=201, media_type="application/fhir+json")
@app.post("/fhir/R4/")
async def transaction(request: Request):
    Bundle.model_validate_json(await request.body())
    return Response(status_code=200, media_type="application/fhir+json")
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), log_level="warning", access_log=False)
"""

FAMILIES = ["Rossi", "D'Alò", "Bertè", "Esposito", "Cantù", "Ferrari"]
GIVENS = ["Nicolò", "Lucia", "Noè", "Beatrice", "Mattia", "Ilaria"]
_serial = itertools.count()


def _start(i: int) -> tuple[str, str]:
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=3, minutes=i % 5000)
    return start.isoformat(), (start + timedelta(minutes=30)).isoformat()


def patient(i: int | None = None) -> dict:
    i = next(_serial) if i is None else i
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "https://hospital.example.org/mrn", "value": f"BENCH-{uuid.uuid4().hex[:12]}",
                        "type": {"coding": [{"code": "MR"}]}}],
        "name": [{"use": "official", "family": FAMILIES[i % 6], "given": [GIVENS[i % 6]]}],
        "telecom": [{"system": "phone", "value": f"+39333{1000000 + i % 9000000}", "use": "mobile"}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "it-IT"}]}, "preferred": True}],
    }


def appointment(patient_ref: str, i: int | None = None) -> dict:
    i = next(_serial) if i is None else i
    start, end = _start(i)
    return {
        "resourceType": "Appointment",
        "identifier": [{"system": "https://hospital.example.org/appointments", "value": f"BENCH-{uuid.uuid4().hex[:12]}"}],
        "status": "booked",
        "serviceType": [{"text": "Visita cardiologica"}],
        "start": start,
        "end": end,
        "participant": [
            {"actor": {"reference": patient_ref}, "status": "accepted"},
            {"actor": {"reference": "Location/amb-3", "display": "Ambulatorio 3"}, "status": "accepted"},
        ],
    }


def transaction_bundle(entries: int = 100) -> bytes:
    """``entries`` / 2 Patients, each with one Appointment referring to it by urn:uuid."""
    items = []
    for _ in range(entries // 2):
        i = next(_serial)
        ref = f"urn:uuid:{uuid.uuid4()}"
        items.append({"fullUrl": ref, "resource": patient(i), "request": {"method": "POST", "url": "Patient"}})
        items.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": appointment(ref, i),
                      "request": {"method": "POST", "url": "Appointment"}})
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": items}).encode()


@dataclass
class Run:
    requests: int = 0
    failures: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    @property
    def rate(self) -> float:
        return (self.requests - self.failures) / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


async def _load(base_url: str, headers: dict[str, str], path: str, body: Callable[[], bytes], seconds: float,
                clients: int) -> Run:
    run = Run()
    headers = {**headers, "Content-Type": "application/fhir+json"}

    async def one(client: httpx.AsyncClient) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            payload = body()
            started = time.perf_counter()
            response = await client.post(path, content=payload, headers=headers)
            run.latencies.append(time.perf_counter() - started)
            run.requests += 1
            if response.status_code >= 300:
                run.failures += 1
                run.first_error = run.first_error or f"{response.status_code} {response.text[:300]}"

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(clients)))
        run.seconds = time.perf_counter() - started
    return run


def load(base_url: str, headers: dict[str, str], path: str, body: Callable[[], bytes], seconds: float,
         clients: int = CLIENTS, warmup: float = 0.5) -> Run:
    asyncio.run(_load(base_url, headers, path, body, warmup, clients))
    return asyncio.run(_load(base_url, headers, path, body, seconds, clients))


def create_patient(base_url: str, headers: dict[str, str]) -> str:
    response = httpx.post(f"{base_url}/fhir/R4/Patient", content=json.dumps(patient()).encode(),
                          headers={**headers, "Content-Type": "application/fhir+json"}, timeout=30)
    response.raise_for_status()
    return f"Patient/{response.json()['id']}"
