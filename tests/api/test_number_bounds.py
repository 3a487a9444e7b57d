"""Numbers in queries and paths fit the database's 64-bit integers: a larger one is
a 422 naming the parameter, never an overflow in the database driver (a 500).
Schemathesis found ``GET /api/messages?offset=986312735314319368926527488``."""

from __future__ import annotations

import pytest

from tests.harness import running_adapter, settings_for

HUGE = str(2**80)


@pytest.fixture(scope="module")
def officer(tmp_path_factory):
    with running_adapter(settings_for(tmp_path_factory.mktemp("bounds"))) as adapter, adapter.client("officer") as client:
        yield client


@pytest.mark.parametrize("path, name", [
    (f"/api/messages?offset={HUGE}", "offset"),
    (f"/api/notifications?offset={HUGE}", "offset"),
    (f"/api/replies?offset={HUGE}", "offset"),
    (f"/api/incidents?offset={HUGE}", "offset"),
    (f"/api/audit?offset={HUGE}", "offset"),
    (f"/api/audit/proof/inclusion?seq={HUGE}&tree_size=1", "seq"),
    (f"/api/audit/proof/consistency?old=0&new={HUGE}", "new"),
    (f"/api/notifications/{HUGE}/why", "notification_id"),
])
def test_a_number_too_large_for_the_database_is_a_422_naming_it(officer, path, name):
    answer = officer.get(path)
    assert answer.status_code == 422, answer.text
    assert [error["loc"][-1] for error in answer.json()["detail"]] == [name]


@pytest.mark.parametrize("path", ["/api/messages", "/api/notifications", "/api/replies", "/api/incidents", "/api/audit"])
def test_the_largest_offset_the_database_holds_is_an_empty_page(officer, path):
    """Schemathesis found ``/api/audit?offset=9223372036854775806`` a 500 once
    offsets were bounded: the page's end passed the largest index."""
    answer = officer.get(path, params={"offset": 2**63 - 2, "limit": 100})
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == []


def test_audit_pages_are_the_log_cut_in_order(officer):
    """Pages of /api/audit, now cut by the database, are the log in order (reading
    appends an entry each time, so the whole log is read first)."""
    for _ in range(5):  # each read is itself audited
        officer.get("/api/audit", params={"limit": 1})
    whole = officer.get("/api/audit", params={"limit": 1000}).json()["items"]
    assert len(whole) >= 3
    pages = [officer.get("/api/audit", params={"limit": 2, "offset": start}).json()["items"]
             for start in range(0, len(whole), 2)]
    assert [entry["seq"] for page in pages for entry in page][: len(whole)] == [entry["seq"] for entry in whole]
