"""config/facilities.yaml: loading, inheritance and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from hl7.errors import FacilityConfigError
from hl7.facilities import load_facilities

from .conftest import ROOT


def test_the_shipped_facilities_file_is_valid_and_named_entries_inherit_from_default():
    cfg = load_facilities(ROOT / "config" / "facilities.yaml")
    slu = cfg.for_facility("OSP_SLUCA")
    assert slu.start_time == ["AIS-4", "SCH-11"] and slu.timezone == "Europe/Rome"
    assert slu.patient_key[0].assigning_authority == "NNITA"
    assert cfg.for_facility("UNKNOWN") == cfg.facilities["default"]
    assert cfg.for_facility("UNKNOWN").ack_timing == "stored"


@pytest.mark.parametrize(
    "body, names",
    [
        ("facilities:\n  default:\n    timezone: Mars/Olympus\n", "facilities.default.timezone"),
        ("facilities:\n  default: {}\n  X:\n    start_time: [PID-7]\n", "facilities.X.start_time"),
        ("facilities:\n  default:\n    patient_key: [{}]\n", "facilities.default.patient_key.0"),
        ("facilities:\n  default:\n    ack_timing: later\n", "facilities.default.ack_timing"),
        ("facilities:\n  default:\n    colour: red\n", "facilities.default.colour"),
        ("facilities:\n  X: {}\n", "facilities.default is required"),
        ("facilities: [\n", "not valid YAML"),
        ("facilities:\n  default: {}\n  X:\n    local_holidays: ['06-31']\n", "facilities.X.local_holidays.0"),
        ("facilities:\n  default: {}\n  X:\n    local_holidays: ['29 June']\n", "facilities.X.local_holidays.0"),
    ],
)
def test_a_bad_file_raises_an_error_naming_the_file_and_the_field(tmp_path: Path, body, names):
    path = tmp_path / "facilities.yaml"
    path.write_text(body)
    with pytest.raises(FacilityConfigError) as caught:
        load_facilities(path)
    assert str(path) in str(caught.value) and names in str(caught.value)


def test_a_missing_file_raises_an_error_naming_it(tmp_path: Path):
    with pytest.raises(FacilityConfigError, match="nope.yaml"):
        load_facilities(tmp_path / "nope.yaml")


def test_a_facility_names_its_local_holidays_as_month_and_day_and_others_keep_none(tmp_path: Path):
    path = tmp_path / "facilities.yaml"
    path.write_text("facilities:\n  default: {}\n  OSP_ROMA:\n    local_holidays: ['06-29']\n"
                    "  OSP_MILANO:\n    local_holidays: ['12-07', '02-29']\n")
    cfg = load_facilities(path)
    assert cfg.for_facility("OSP_ROMA").local_holidays == [(6, 29)]
    assert cfg.for_facility("OSP_MILANO").local_holidays == [(12, 7), (2, 29)]
    assert cfg.for_facility("ELSEWHERE").local_holidays == []
    assert cfg.local_holidays() == {"default": frozenset(), "OSP_ROMA": frozenset({(6, 29)}),
                                    "OSP_MILANO": frozenset({(12, 7), (2, 29)})}
