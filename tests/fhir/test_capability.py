"""The CapabilityStatement tells the truth: it is generated from the table that
registers the routes, and every interaction it lists answers over HTTP."""

from __future__ import annotations

from fastapi.routing import APIRoute

from fhir.capability import routes_described, served_routes
from fhir.routes import build_router
from tests.fhir.conftest import sample


def registered_routes(router) -> set[tuple[str, str]]:
    return {(method, route.path) for route in router.routes if isinstance(route, APIRoute)
            and route.include_in_schema for method in route.methods}


def test_the_capability_statement_lists_exactly_the_registered_routes(adapter):
    statement = adapter.get("/metadata")
    assert statement.status_code == 200
    body = statement.json()
    assert body["resourceType"] == "CapabilityStatement" and body["fhirVersion"] == "4.0.1"
    router = build_router(sessions=adapter.sessions, service=adapter.service)
    assert routes_described(body) == registered_routes(router) == served_routes()


def test_every_interaction_the_capability_statement_lists_is_answered(adapter):
    rest = adapter.get("/metadata").json()["rest"][0]
    patient = sample("patient.json")
    for resource in rest["resource"]:
        codes = {i["code"] for i in resource["interaction"]}
        assert codes == {"create", "update", "read", "vread", "delete"}
        assert resource["conditionalCreate"] and resource["conditionalUpdate"]
    pid = adapter.post("/Patient", patient).json()["id"]
    assert adapter.put(f"/Patient/{pid}", {**patient, "id": pid}).status_code == 200
    assert adapter.get(f"/Patient/{pid}").status_code == 200
    assert adapter.get(f"/Patient/{pid}/_history/2").status_code == 200
    assert adapter.http.delete(f"{adapter.base}/Patient/{pid}").status_code == 200
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    assert [o["name"] for o in rest["operation"]] == ["subscription-hook"]
