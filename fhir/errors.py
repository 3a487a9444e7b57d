"""Errors of the FHIR front door, each carrying what an OperationOutcome needs.

Raised anywhere in ``fhir/``; translated once, at the HTTP edge, by
:func:`fhir.outcome.outcome_response`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue (FHIR R4 §OperationOutcome): ``code`` is from
    the IssueType value set (invalid, structure, required, value, code-invalid,
    not-found, deleted, not-supported, conflict, duplicate, too-costly, business-rule,
    processing, exception); ``expression`` is a FHIRPath to the offending element."""

    code: str
    diagnostics: str
    expression: str = ""
    severity: str = "error"


class FhirError(Exception):
    """A request the front door answers with ``status`` and an OperationOutcome."""

    def __init__(self, status: int, issues: list[Issue] | Issue, *, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        self.issues = [issues] if isinstance(issues, Issue) else list(issues)
        super().__init__("; ".join(i.diagnostics for i in self.issues))

    def within_entry(self, entry_path: str, resource_type: str) -> FhirError:
        """The same error pointing into a Bundle entry: ``Appointment.start`` →
        ``Bundle.entry[2].resource.start``; an error without an element points
        at the entry itself."""

        def reroot(expression: str) -> str:
            if expression == resource_type or expression.startswith(resource_type + "."):
                return f"{entry_path}.resource{expression[len(resource_type):]}"
            if expression.startswith("Bundle"):
                return expression
            return f"{entry_path}.{expression}" if expression else entry_path

        issues = [Issue(i.code, i.diagnostics, reroot(i.expression), i.severity)
                  for i in self.issues]
        return FhirError(self.status, issues, headers=self.headers)


def invalid(diagnostics: str, expression: str = "", *, code: str = "invalid") -> FhirError:
    return FhirError(400, Issue(code, diagnostics, expression))


def unprocessable(diagnostics: str, expression: str = "", *, code: str = "business-rule") -> FhirError:
    return FhirError(422, Issue(code, diagnostics, expression))


def not_found(diagnostics: str) -> FhirError:
    return FhirError(404, Issue("not-found", diagnostics))


def gone(diagnostics: str) -> FhirError:
    """410: a deleted resource or its deletion version (FHIR R4 §3.1.0.2, §3.1.0.7)."""
    return FhirError(410, Issue("deleted", diagnostics))


def precondition_failed(diagnostics: str, expression: str = "") -> FhirError:
    return FhirError(412, Issue("conflict", diagnostics, expression))


class UpstreamError(Exception):
    """A source FHIR server could not be reached or answered with an error."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)
