"""OperationOutcome rendering (FHIR R4 §OperationOutcome) for every error answer."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import Response

from fhir.errors import FhirError, Issue

FHIR_JSON = "application/fhir+json"


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """Render issues as an OperationOutcome resource.

    >>> operation_outcome([Issue("invalid", "bad", "Patient.gender")])["issue"][0]["expression"]
    ['Patient.gender']
    """
    rendered = []
    for issue in issues:
        item: dict[str, Any] = {
            "severity": issue.severity,
            "code": issue.code,
            "diagnostics": issue.diagnostics,
        }
        if issue.expression:
            item["expression"] = [issue.expression]
        rendered.append(item)
    return {"resourceType": "OperationOutcome", "issue": rendered}


def fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type=FHIR_JSON,
        headers=headers,
    )


def outcome_response(error: FhirError) -> Response:
    return fhir_response(operation_outcome(error.issues), error.status, error.headers or None)


def information(diagnostics: str) -> dict[str, Any]:
    return operation_outcome([Issue("informational", diagnostics, severity="information")])
