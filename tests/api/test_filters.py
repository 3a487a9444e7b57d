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
