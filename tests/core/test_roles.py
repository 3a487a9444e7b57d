"""Roles everywhere (issue 7): every route of the app, against every role and no token.
Provider webhooks are left out: they check the provider's signature, not a token."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from adapter.auth import create_token
from adapter.db import transaction
from adapter.web import create_app
from compliance.models import AuditEntry
from tests.harness import migrated_container, settings_for

OPEN = "open"
UNPROTECTED_DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def required_role(method: str, path: str) -> str | None:
    """The policy (INTERFACES.md): health and the API description open; FHIR and HL7 for
    ``ehr``; reads and officers' actions under /api and the console for ``officer``;
    erasure, keys and the console's Replay for ``admin`` (admin may do everything). None: not token-checked."""
    if path.startswith("/webhooks/"):
        return None
    if path.startswith("/health/") or path in UNPROTECTED_DOCS or path in ("/ui/login", "/ui/logout", "/ui/static/{path:path}"):
        return OPEN
    if path.startswith(("/fhir/", "/hl7/")):
        return "ehr"
    if (method == "DELETE" and path.startswith("/api/patients/")) or path.endswith(("/erase", "/replay")):
        return "admin"
    if "/keys" in path:
        return "admin"
    if path.startswith(("/api/", "/ui", "/metrics")):
        return "officer"
    raise AssertionError(f"no role policy for {method} {path}: add one to this test")


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def routes(app) -> Iterator[tuple[str, str]]:
    for route in iter_route_contexts(app.routes):
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                yield method, route.path


@pytest.fixture(scope="module")
def app_and_tokens(tmp_path_factory):
    container = migrated_container(settings_for(tmp_path_factory.mktemp("roles")))
    with transaction(container.sessions) as session:
        tokens = {role: create_token(session, role=role, name=f"roles-{role}", now=container.clock.now())
                  for role in ("ehr", "officer", "admin")}
    yield create_app(container), tokens, container
    container.engine.dispose()


def call(client: TestClient, method: str, path: str, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return client.request(method, concrete(path), headers=headers, follow_redirects=False, **kwargs)


def test_every_route_admits_exactly_the_roles_it_should(app_and_tokens):
    app, tokens, _ = app_and_tokens
    client = TestClient(app, raise_server_exceptions=False)
    checked, wrong = 0, []
    for method, path in routes(app):
        needed = required_role(method, path)
        if needed is None:
            continue
        checked += 1
        for who in (None, "ehr", "officer", "admin"):
            status = call(client, method, path, tokens[who] if who else None).status_code
            if needed == OPEN:
                ok = status not in (401, 403)
            elif who is None:
                ok = status == 401 or (path.startswith("/ui") and status in (303, 307))
            elif who == "admin" or who == needed:
                ok = status not in (401, 403, 429)
            else:
                ok = status == 403
            if not ok:
                wrong.append(f"{method} {path} as {who or 'no token'}: {status} (needs {needed})")
    assert checked > 30
    assert not wrong, "\n".join(wrong)


def test_failed_authentication_is_audited_and_rate_limited_per_client(app_and_tokens):
    app, tokens, container = app_and_tokens
    client = TestClient(app, raise_server_exceptions=False, client=("203.0.113.7", 50000))
    other = TestClient(app, raise_server_exceptions=False, client=("203.0.113.8", 50000))
    bad = {"Authorization": "Bearer adp_guessed"}
    with transaction(container.sessions) as session:
        before = len(session.scalars(select(AuditEntry.seq).where(AuditEntry.action == "auth_failed")).all())

    statuses = [client.get("/api/notifications", headers=bad).status_code for _ in range(12)]

    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    good = {"Authorization": f"Bearer {tokens['officer']}"}
    refused = client.get("/api/notifications", headers=good)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert other.get("/api/notifications", headers=good).status_code == 200
    with transaction(container.sessions) as session:
        after = len(session.scalars(select(AuditEntry.seq).where(AuditEntry.action == "auth_failed")).all())
    assert after - before == 10
