"""The one table of supported interactions. :mod:`fhir.routes` registers a route
for each row and :func:`capability_statement` describes the same rows, so the
CapabilityStatement cannot claim what is not served (FHIR R4 §CapabilityStatement)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.validate import SUPPORTED_TYPES

FHIR_VERSION = "4.0.1"


@dataclass(frozen=True)
class Interaction:
    """``code`` is a TypeRestfulInteraction or SystemRestfulInteraction code (or
    an operation name starting with ``$``); ``path`` is relative to the base
    (``{type}`` is replaced by each supported type)."""

    code: str
    method: str
    path: str
    conditional: bool = False  # also answers the conditional form of ``code``


TYPE_INTERACTIONS = (
    Interaction("create", "POST", "/{type}", conditional=True),  # If-None-Exist
    Interaction("update", "PUT", "/{type}", conditional=True),  # PUT /Type?identifier=
    Interaction("update", "PUT", "/{type}/{id}"),
    Interaction("read", "GET", "/{type}/{id}"),
    Interaction("vread", "GET", "/{type}/{id}/_history/{vid}"),
    Interaction("delete", "DELETE", "/{type}/{id}"),
)
SYSTEM_INTERACTIONS = (
    Interaction("capabilities", "GET", "/metadata"),
    Interaction("$subscription-hook", "POST", "/$subscription-hook"),
    Interaction("transaction", "POST", "/"),
    Interaction("batch", "POST", "/"),
)
SUBSCRIPTION_HOOK_DEFINITION = (
    "https://adapter.example.org/fhir/OperationDefinition/subscription-hook")


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the table asks for."""
    out = {(i.method, i.path) for i in SYSTEM_INTERACTIONS}
    for kind in SUPPORTED_TYPES:
        out |= {(i.method, i.path.replace("{type}", kind)) for i in TYPE_INTERACTIONS}
    return out


def capability_statement(now: datetime) -> dict[str, Any]:
    codes = sorted({i.code for i in TYPE_INTERACTIONS})
    resources = [
        {
            "type": kind,
            "interaction": [{"code": code} for code in codes],
            "versioning": "versioned-update",
            "readHistory": False,
            "updateCreate": True,
            "conditionalCreate": any(i.conditional and i.code == "create"
                                     for i in TYPE_INTERACTIONS),
            "conditionalUpdate": any(i.conditional and i.code == "update"
                                     for i in TYPE_INTERACTIONS),
            "conditionalRead": "not-supported",
            "conditionalDelete": "not-supported",
            "referencePolicy": ["literal", "local"],
        }
        for kind in SUPPORTED_TYPES
    ]
    system = [{"code": i.code} for i in SYSTEM_INTERACTIONS
              if i.code in ("transaction", "batch")]
    operations = [{"name": i.code.lstrip("$"), "definition": SUBSCRIPTION_HOOK_DEFINITION}
                  for i in SYSTEM_INTERACTIONS if i.code.startswith("$")]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now.date().isoformat(),
        "kind": "instance",
        "software": {"name": "adapter FHIR front door"},
        "implementation": {"description": "Appointments, reports, invoices, patients and "
                                          "consent in; "
                                          "notifications to patients' phones out"},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "application/json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": system,
            "operation": operations,
        }],
    }


def routes_described(statement: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path) the CapabilityStatement promises, for the test that keeps
    the two equal."""
    paths = {
        "create": [("POST", "/{t}")],
        "update": [("PUT", "/{t}/{{id}}")],
        "read": [("GET", "/{t}/{{id}}")],
        "vread": [("GET", "/{t}/{{id}}/_history/{{vid}}")],
        "delete": [("DELETE", "/{t}/{{id}}")],
    }
    out = {("GET", "/metadata")}
    rest = statement["rest"][0]
    for resource in rest["resource"]:
        for interaction in resource["interaction"]:
            out |= {(m, p.format(t=resource["type"])) for m, p in paths[interaction["code"]]}
        if resource.get("conditionalUpdate"):
            out.add(("PUT", f"/{resource['type']}"))
    out |= {("POST", "/") for i in rest["interaction"] if i["code"] in ("transaction", "batch")}
    out |= {("POST", f"/${op['name']}") for op in rest.get("operation", [])}
    return out
