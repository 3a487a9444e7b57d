"""Who may read the console's message pages and press Replay, and the form token that
keeps another site from pressing it for them (CSRF): fast, in-process, no browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from adapter.auth import create_token
from adapter.models import ApiToken
from adapter.console import COOKIE
from adapter.db import read_transaction, transaction
from adapter.message_trace import messages_with_control_id, trace
from adapter.web import create_app
from hl7.header import read_header
from tests.core.test_siu_without_pid import siu
from tests.harness import migrated_container, settings_for


@dataclass
class Console:
    app: object
    container: object
    tokens: dict[str, str]

    def client(self, role: str | None) -> TestClient:
        client = TestClient(self.app, raise_server_exceptions=False, follow_redirects=False)
        if role:
            client.cookies.set(COOKIE, self.tokens[role], path="/ui")
        return client

    def status_of(self, control_id: str) -> str:
        with read_transaction(self.container.sessions) as session:
            [message_id] = messages_with_control_id(session, control_id)
            return trace(session, message_id).message["status"]


@pytest.fixture
def console(tmp_path) -> Iterator[Console]:
    """A cancellation without PID of an appointment not yet booked (in the error store),
    then its booking: the cancellation is processed once replayed."""
    container = migrated_container(settings_for(tmp_path))
    with transaction(container.sessions) as session:
        tokens = {role: create_token(session, role=role, name=f"console-{role}", now=container.clock.now())
                  for role in ("ehr", "officer", "admin")}
    for message in (siu("S15", "X1", "FL404", mrn=None, status="Cancelled"), siu("S12", "B1", "FL404")):
        container.intake.writer.write([(read_header(message), message)])
        container.intake.process_pending()
    yield Console(create_app(container), container, tokens)
    container.engine.dispose()


def error_id(console: Console) -> int:
    with read_transaction(console.container.sessions) as session:
        return messages_with_control_id(session, "X1")[0]


def patient_of(console: Console, control_id: str) -> str:
    with read_transaction(console.container.sessions) as session:
        return trace(session, messages_with_control_id(session, control_id)[0]).caused[0].patient


def form_token(page: str) -> str:
    return re.search(r'name="form_token" value="([0-9a-f]+)"', page).group(1)


def test_without_a_login_the_message_pages_send_you_to_the_login_form(console):
    client = console.client(None)
    for path in ("/ui/messages", f"/ui/messages/{error_id(console)}"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/login", path
    assert client.post(f"/ui/messages/{error_id(console)}/replay").status_code == 303
    assert console.status_of("X1") == "error"


def test_an_ehr_token_may_not_read_messages_and_an_officer_may_read_but_not_replay(console):
    ehr, officer = console.client("ehr"), console.client("officer")
    assert ehr.get("/ui/messages").status_code == 403
    listing = officer.get("/ui/messages", params={"status": "error"})
    assert listing.status_code == 200 and 'class="message"' in listing.text and "X1" in listing.text
    page = officer.get(f"/ui/messages/{error_id(console)}?lang=en")
    assert page.status_code == 200 and "It can be replayed." in page.text
    assert 'id="replay"' not in page.text  # the button is for admins only
    token = form_token(officer.get(f"/ui/patients/{patient_of(console, 'B1')}").text)

    refused = officer.post(f"/ui/messages/{error_id(console)}/replay", data={"form_token": token})

    assert refused.status_code == 403
    assert console.status_of("X1") == "error"


def test_a_replay_without_the_sessions_form_token_is_refused_and_with_it_processes_the_message(console):
    admin = console.client("admin")
    page = admin.get(f"/ui/messages/{error_id(console)}")
    assert 'id="replay"' in page.text
    replay = f"/ui/messages/{error_id(console)}/replay"

    assert admin.post(replay).status_code == 403  # a form posted from another site has no token
    assert admin.post(replay, data={"form_token": "0" * 64}).status_code == 403
    officers = form_token(console.client("officer").get(f"/ui/patients/{patient_of(console, 'B1')}").text)
    assert admin.post(replay, data={"form_token": officers}).status_code == 403  # another session's
    assert console.status_of("X1") == "error"

    done = admin.post(replay, data={"form_token": form_token(page.text)})

    assert done.status_code == 303 and done.headers["location"] == f"/ui/messages/{error_id(console)}?replayed=processed"
    assert console.status_of("X1") == "processed"
    assert "Replayed: processed." in admin.get(done.headers["location"] + "&lang=en").text


def test_a_console_replay_is_audited_with_the_admin_token_that_pressed_it(console):
    admin = console.client("admin")
    page = admin.get(f"/ui/messages/{error_id(console)}")

    admin.post(f"/ui/messages/{error_id(console)}/replay", data={"form_token": form_token(page.text)})

    audit = console.container.audit
    with read_transaction(console.container.sessions) as session:
        [token_id] = session.scalars(select(ApiToken.id).where(ApiToken.name == "console-admin"))
        replayed = [r for r in audit.entries(session) if r.action == "hl7_replayed"]
        assert audit.verify(session).ok
    assert [(r.actor, r.subject, r.details, r.outcome) for r in replayed] == [
        (f"token:{token_id}:admin", "", {"message": error_id(console), "outcome": "processed"}, "success")]


def test_the_patient_forms_need_the_form_token_too(console):
    officer, patient = console.client("officer"), patient_of(console, "B1")
    consent = {"purpose": "care_reminder", "channel": "sms", "decision": "deny"}
    assert officer.post(f"/ui/patients/{patient}/consents", data=consent).status_code == 403
    token = form_token(officer.get(f"/ui/patients/{patient}").text)
    assert officer.post(f"/ui/patients/{patient}/consents", data={**consent, "form_token": token}).status_code == 303


def test_the_console_lists_what_the_api_lists_for_the_same_filters(console):
    officer = console.client("officer")
    api = console.client(None)
    api.headers["Authorization"] = f"Bearer {console.tokens['officer']}"
    for filters in ({}, {"status": "error"}, {"status": "processed"}, {"type": "SIU^S12"}, {"type": "SIU"},
                    {"sender": "OSP_TEST", "type": "SIU^S15"}, {"control_id": "B1"}, {"sender": "OSP_ELSEWHERE"}):
        listed = api.get("/api/messages", params=filters).json()
        page = officer.get("/ui/messages", params=filters).text
        shown = re.findall(r'<a href="/ui/messages/(\d+)" class="trace">', page)
        assert shown == [str(item["id"]) for item in listed["items"]], filters
        assert f'<span id="total">{listed["total"]}</span>' in page, filters
    assert [i["control_id"] for i in api.get("/api/messages", params={"type": "SIU^S15"}).json()["items"]] == ["X1"]


def test_the_message_list_pages_through_the_store_newest_first_keeping_its_filters(console):
    messages = [siu("S12", f"P{i}", f"FLP{i}") for i in range(55)]
    console.container.intake.writer.write([(read_header(m), m) for m in messages])  # stored, not processed
    officer = console.client("officer")

    first = officer.get("/ui/messages", params={"status": "stored", "type": "SIU^S12"}).text
    ids = [int(i) for i in re.findall(r'class="trace">(\d+)<', first)]
    assert len(ids) == 50 and ids == sorted(ids, reverse=True) and 'id="previous"' not in first
    following = re.search(r'href="([^"]+)" id="next"', first).group(1).replace("&amp;", "&")
    assert "status=stored" in following and "type=SIU%5ES12" in following
    second = officer.get(following).text
    rest = [int(i) for i in re.findall(r'class="trace">(\d+)<', second)]
    assert len(rest) == 5 and max(rest) < min(ids) and 'id="previous"' in second and 'id="next"' not in second
