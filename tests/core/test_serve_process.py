"""`python -m adapter serve` as a process, the way operators start it: start-up
objects are left out of garbage collection and every collection is timed; the
helper processes that validate Bundles start and stop with it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client import parser

from bench.fhir_common import transaction_bundle
from fhir.validation_pool import default_processes
from tests.harness import adapter_env_vars

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):  # the thread or process has just ended
        return ""


def _helpers(pid: int) -> list[int]:
    # A child is listed under the thread that started it (a request's thread here).
    children = [c for task in Path(f"/proc/{pid}/task").iterdir() for c in _read(task / "children").split()]
    return [int(c) for c in children if "spawn_main" in _read(Path(f"/proc/{c}/cmdline"))]


def _wait_for_helpers(pid: int, expected: int) -> list[int]:
    deadline = time.monotonic() + 20
    while len(found := _helpers(pid)) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_serve_freezes_start_up_objects_times_collections_and_runs_validation_helpers(tmp_path):
    http_port, mllp_port = _free_port(), _free_port()
    env = {**os.environ, **adapter_env_vars(tmp_path), "ADAPTER_HTTP_HOST": "127.0.0.1", "ADAPTER_MLLP_HOST": "127.0.0.1"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "adapter", "serve", "--http-port", str(http_port),
                             "--mllp-port", str(mllp_port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                response = httpx.get(f"http://127.0.0.1:{http_port}/health/live", timeout=1)
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        token = (tmp_path / "admin-token").read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", headers={"Authorization": f"Bearer {token}"}) as client:
            assert _helpers(proc.pid) == []  # none until a large Bundle arrives
            bundle = client.post("/fhir/R4/", content=transaction_bundle(10), headers={"Content-Type": "application/fhir+json"})
            assert bundle.status_code == 200, bundle.text
            helpers = _wait_for_helpers(proc.pid, default_processes())
            for _ in range(50):  # some work, some garbage
                client.get("/api/messages")
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in parser.text_string_to_metric_families(client.get("/metrics").text)
                       for s in family.samples}
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    # Bundle validation helpers: one per core beyond the first, started by the first
    # large Bundle, stopped (joined) by serve's graceful stop.
    assert proc.returncode == 0, "SIGTERM must stop serve gracefully, not kill it"
    assert len(helpers) == default_processes()
    assert not any(Path(f"/proc/{pid}").exists() for pid in helpers)
    assert samples[("adapter_fhir_validation_helpers", ())] == default_processes()
    assert samples[("adapter_fhir_validation_helper_failures_total", ())] == 0
    assert samples[("adapter_gc_frozen_objects", ())] > 10_000
    assert samples[("adapter_gc_pause_seconds_count", (("generation", "0"),))] > 0


def test_what_the_http_server_logs_is_json_like_every_other_log_line(tmp_path):
    """Uvicorn's own logs (a malformed request, an exception in a request) follow the
    adapter's: one JSON object a line, an exception by its type and frames, never by
    its text (a driver's error can quote the row it failed on)."""
    http_port, mllp_port = _free_port(), _free_port()
    env = {**os.environ, **adapter_env_vars(tmp_path), "ADAPTER_HTTP_HOST": "127.0.0.1", "ADAPTER_MLLP_HOST": "127.0.0.1"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "adapter", "serve", "--http-port", str(http_port),
                             "--mllp-port", str(mllp_port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", http_port)) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nnot a header Rossi 3331234567\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    lines = [line for line in (tmp_path / "serve.log").read_text().splitlines() if line.strip()]
    not_json = [line for line in lines if not line.startswith("{")]
    assert not not_json, not_json[:5]
    records = [json.loads(line) for line in lines]
    assert any(r["logger"] == "uvicorn.error" and "Invalid HTTP request" in r["msg"] for r in records), records[-5:]
    assert "Rossi" not in (tmp_path / "serve.log").read_text()
