"""FHIR POST: appointments per second through the adapter's
``POST /fhir/R4/Appointment`` (validate, store, events, notifications, on
SQLite WAL) against a bare FastAPI endpoint that only parses the body with
fhir.resources R4B ``Appointment.model_validate_json`` and answers 201.

Both are served by uvicorn in their own process; the same httpx client
(a few concurrent requests) drives both from this process.

Run: ``.venv/bin/python -m bench.fhir_post``.
"""

from __future__ import annotations

import json

from bench.common import SECONDS, adapter_process, free_port, header, python_server
from bench.fhir_common import BARE_FASTAPI, CLIENTS, appointment, create_patient, load


def main() -> None:
    header("FHIR POST Appointment: adapter vs bare FastAPI + fhir.resources parse")
    print(f"how each was run: uvicorn in its own process on 127.0.0.1; client: httpx.AsyncClient, {CLIENTS} concurrent requests\n"
          "  bare     : FastAPI route, Appointment.model_validate_json (R4B), answers 201\n"
          "  adapter  : python -m adapter serve, SQLite WAL in a temp dir; one Patient created first", flush=True)
    port = free_port()
    with python_server(BARE_FASTAPI, port):
        bare = load(f"http://127.0.0.1:{port}", {}, "/fhir/R4/Appointment",
                    lambda: json.dumps(appointment("Patient/example")).encode(), SECONDS)
    with adapter_process() as adapter:
        ref = create_patient(adapter.base_url, adapter.headers)
        ours = load(adapter.base_url, adapter.headers, "/fhir/R4/Appointment",
                    lambda: json.dumps(appointment(ref)).encode(), SECONDS)
    print(f"\n{'server':12}{'appointments/s':>16}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}")
    for name, run in (("bare", bare), ("adapter", ours)):
        print(f"{name:12}{run.rate:>16.0f}{run.p(50) * 1e3:>9.1f}{run.p(99) * 1e3:>9.1f}{run.failures:>8}")
    if ours.first_error or bare.first_error:
        print(f"first error: adapter {ours.first_error!r} bare {bare.first_error!r}")
    print(f"ratio adapter/bare: {ours.rate / bare.rate:.3f}", flush=True)


if __name__ == "__main__":
    main()
