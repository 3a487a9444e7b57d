"""The operators' lists refuse a filter value that no row can have: a typo such as
``status=delivred`` is a 422 listing the values, not an empty page that reads as
"none delivered"."""

from __future__ import annotations

import pytest

from tests.harness import running_adapter, settings_for


@pytest.fixture(scope="module")
def officer(tmp_path_factory):
    with running_adapter(settings_for(tmp_path_factory.mktemp("filters"))) as adapter, adapter.client("officer") as client:
        yield client


@pytest.mark.parametrize("path, name, value", [
    ("/api/notifications", "status", "delivred"),
    ("/api/messages", "status", "procesed"),
    ("/api/messages", "source", "hl7v2"),
])
def test_a_filter_value_no_row_can_have_is_a_422_naming_the_parameter(officer, path, name, value):
    answer = officer.get(path, params={name: value})
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"][-1] == name


@pytest.mark.parametrize("path, name, values", [
    ("/api/notifications", "status", ["scheduled", "sent", "delivered", "read", "failed", "suppressed", "cancelled"]),
    ("/api/messages", "status", ["stored", "processed", "duplicate", "error", "rejected", "ignored"]),
    ("/api/messages", "source", ["hl7", "fhir"]),
])
def test_every_documented_filter_value_is_accepted(officer, path, name, values):
    for value in values:
        answer = officer.get(path, params={name: value})
        assert answer.status_code == 200, (value, answer.text)


def test_messages_narrow_by_sender_as_msh4_or_as_listed_and_by_time_received(tmp_path):
    """What ``hl7 errors --facility/--since`` narrows by, for the operators' API."""
    from datetime import UTC, datetime, timedelta

    from tests.core.test_end_to_end import siu

    start = datetime.now(UTC) + timedelta(days=2)
    with running_adapter(settings_for(tmp_path)) as adapter, adapter.client("ehr") as ehr, \
            adapter.client("officer") as officer:
        for control_id, facility in (("A1", "OSP_TEST"), ("B1", "OSP_NORD"), ("B2", "OSP_NORD")):
            body = siu("S12", control_id, start).replace(b"|CUP|OSP_TEST|", f"|CUP|{facility}|".encode(), 1)
            assert ehr.post("/hl7/v2", content=body).status_code == 200

        def control_ids(**params: str) -> list[str]:
            answer = officer.get("/api/messages", params=params)
            assert answer.status_code == 200, answer.text
            return [item["control_id"] for item in answer.json()["items"]]

        assert control_ids(sender="OSP_NORD") == ["B2", "B1"]
        assert control_ids(sender="CUP^OSP_TEST") == ["A1"]
        assert control_ids(sender="OSP_") == []
        assert control_ids(since=(datetime.now(UTC) - timedelta(hours=1)).isoformat(), sender="OSP_TEST") == ["A1"]
        assert control_ids(since=(datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")) == []
