"""FHIR ingest: resources per second through the adapter for single POSTs
(a Patient, then an Appointment for it, alternately) and for 100-entry
transaction Bundles (50 Patients + 50 Appointments linked by ``urn:uuid:``),
each as a ratio against a bare FastAPI endpoint that only parses the same
payload with fhir.resources R4B (``Patient``/``Appointment``/``Bundle``
``model_validate_json``). Target: at least 0.5x for Bundles. The bare Bundles
are measured before and after the adapter and their mean is the baseline; the
adapter's Bundles are also shown validated in its own process (no helpers).

Servers run under uvicorn in their own processes; one httpx client drives both.

Run: ``.venv/bin/python -m bench.fhir_ingest``.
"""

from __future__ import annotations

import json

from bench.common import SECONDS, adapter_process, free_port, header, python_server, verdict
from bench.fhir_common import BARE_FASTAPI, CLIENTS, Run, appointment, create_patient, load, patient, transaction_bundle
from fhir.validation_pool import default_processes

ENTRIES = 100
TARGET_BUNDLES = 0.5


def _singles(base_url: str, headers: dict[str, str], ref: str) -> tuple[Run, Run]:
    return (
        load(base_url, headers, "/fhir/R4/Patient", lambda: json.dumps(patient()).encode(), SECONDS / 2),
        load(base_url, headers, "/fhir/R4/Appointment", lambda: json.dumps(appointment(ref)).encode(), SECONDS / 2),
    )


def _bundles(base_url: str, headers: dict[str, str]) -> Run:
    # Two seconds of warm-up, bare and adapter alike: the adapter's validation helpers
    # start with its first large Bundle and take about a second to import the models.
    return load(base_url, headers, "/fhir/R4/", lambda: transaction_bundle(ENTRIES), SECONDS, clients=2,
                warmup=2.0)


def main() -> None:
    header(f"FHIR ingest: single POSTs and {ENTRIES}-entry transaction Bundles vs bare FastAPI + fhir.resources parse")
    helpers = default_processes()
    print(f"how each was run: uvicorn in its own process on 127.0.0.1; client: httpx.AsyncClient, {CLIENTS} concurrent requests\n"
          "  bare     : FastAPI routes that only model_validate_json the same payload (R4B), answer 201/200;\n"
          "             its Bundles measured before and after the adapter (this machine drifts), the ratio uses their mean\n"
          "  adapter  : python -m adapter serve, SQLite WAL in a temp dir, as configured by default: Bundles validated\n"
          f"             in {helpers} helper process(es) (ADAPTER_FHIR_VALIDATION_PROCESSES); also shown with 0 (in process)",
          flush=True)
    port = free_port()
    with python_server(BARE_FASTAPI, port):
        url = f"http://127.0.0.1:{port}"
        bare_singles = _singles(url, {}, "Patient/example")
        bare_bundles = [_bundles(url, {})]
    with adapter_process() as adapter:
        ref = create_patient(adapter.base_url, adapter.headers)
        our_singles = _singles(adapter.base_url, adapter.headers, ref)
        our_bundles = _bundles(adapter.base_url, adapter.headers)
    with adapter_process({"ADAPTER_FHIR_VALIDATION_PROCESSES": "0"}) as adapter:
        in_process = _bundles(adapter.base_url, adapter.headers)
    with python_server(BARE_FASTAPI, port):
        bare_bundles.append(_bundles(f"http://127.0.0.1:{port}", {}))

    def single_rate(runs: tuple[Run, Run]) -> float:
        return sum(r.requests for r in runs) / sum(r.seconds for r in runs)

    print(f"\n{'what':34}{'bare res/s':>12}{'adapter res/s':>15}{'ratio':>8}{'failed':>8}")
    for name, b, o in (("single POST Patient", bare_singles[0], our_singles[0]),
                       ("single POST Appointment", bare_singles[1], our_singles[1])):
        print(f"{name:34}{b.rate:>12.0f}{o.rate:>15.0f}{o.rate / b.rate:>8.3f}{o.failures:>8}")
    sb, so = single_rate(bare_singles), single_rate(our_singles)
    print(f"{'single POSTs, both':34}{sb:>12.0f}{so:>15.0f}{so / sb:>8.3f}")
    rb = sum(r.rate for r in bare_bundles) / len(bare_bundles) * ENTRIES
    ro, rp = our_bundles.rate * ENTRIES, in_process.rate * ENTRIES
    ratio = ro / rb
    print(f"{f'transaction Bundles of {ENTRIES}':34}{rb:>12.0f}{ro:>15.0f}{ratio:>8.3f}{our_bundles.failures:>8}"
          f"   target >= {TARGET_BUNDLES}: {verdict(ratio, TARGET_BUNDLES)}")
    print(f"{'  same, validated in process':34}{rb:>12.0f}{rp:>15.0f}{rp / rb:>8.3f}{in_process.failures:>8}")
    print(f"  (bare Bundles before / after the adapter: {bare_bundles[0].rate * ENTRIES:.0f} / "
          f"{bare_bundles[1].rate * ENTRIES:.0f} res/s; Bundle p50 {our_bundles.p(50) * 1e3:.0f} ms in the adapter, "
          f"{bare_bundles[0].p(50) * 1e3:.0f} ms bare)")
    errors = [r.first_error for r in (*our_singles, our_bundles, in_process) if r.first_error]
    if errors:
        print(f"first error: {errors[0]!r}", flush=True)


if __name__ == "__main__":
    main()
