"""fhir.resources installs a top-level ``fhir`` package; ours must not hide it.
Each entry point (server, worker, CLI, tests) is started the way users start it
and must import both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import fhir.resources.R4B.appointment as r4b, fhir.validate as ours; "
    "print(r4b.Appointment.__name__, ours.__name__)"
)


def test_fhir_resources_importable_beside_our_fhir_package_in_tests():
    import fhir.resources.R4B.appointment as r4b
    import fhir.routes

    assert r4b.Appointment.__name__ == "Appointment"
    assert Path(fhir.routes.__file__).parent == ROOT / "fhir"


@pytest.mark.parametrize("entry", ["adapter.cli", "adapter.runtime", "adapter.web", "adapter.dispatch"])
def test_fhir_resources_importable_from_every_entry_point(entry):
    """``python -m adapter ...`` runs from the repo root, which puts it first on sys.path."""
    result = subprocess.run(
        [sys.executable, "-c", f"import {entry}; {PROBE}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Appointment", "fhir.validate"]


def test_cli_starts_and_lists_its_commands():
    result = subprocess.run([sys.executable, "-m", "adapter", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ("serve", "demo", "hl7", "outbox", "tokens", "migrate"):
        assert command in result.stdout


def test_committed_openapi_document_equals_the_served_one():
    from adapter.openapi_doc import openapi_document

    committed = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(openapi_document())), "run `make openapi` and commit openapi/openapi.json"
