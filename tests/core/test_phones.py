"""A phone number is parsed once, and every place that reads it gets what
``phonenumbers`` itself says: the HL7 mapping, contact validation and blind indexes."""

from __future__ import annotations

import re

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapter import phones
from adapter.patients import normalise_phone
from compliance.pseudonyms import e164
from hl7.datatypes import _normalise_phone

REGIONS = st.sampled_from(["IT", "GB", "US", "DE", "FR", "CH"])
DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=16)
NUMBERS = st.one_of(
    st.builds(lambda d: "3" + d, st.text(alphabet="0123456789", min_size=8, max_size=10)),  # Italian mobiles
    st.builds(lambda d: "0" + d, st.text(alphabet="0123456789", min_size=4, max_size=10)),  # Italian landlines
    st.builds(lambda p, d: p + d, st.sampled_from(["+39", "0039", "+44", "+1", "+49", "+", "00"]), DIGITS),
    st.builds(lambda d, ext: f"{d} ext. {ext}", DIGITS, st.text(alphabet="0123456789", min_size=1, max_size=4)),
    st.builds(lambda d: " ".join(re.findall(".{1,3}", d)), DIGITS),  # "333 123 456 7"
    st.text(alphabet="0123456789+() -./abc", max_size=20),
)


def fresh(text: str, region: str) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None


def facts_from_phonenumbers(text: str, region: str) -> tuple:
    parsed = fresh(text, region)
    if parsed is None:
        return (None, False, False, False)
    return (
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164),
        phonenumbers.is_possible_number(parsed),
        phonenumbers.is_valid_number(parsed),
        phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.MOBILE,
    )


def facts(read: phones.Phone) -> tuple:
    return (read.e164, read.possible, read.valid, read.mobile)


@settings(max_examples=400, deadline=None)
@given(NUMBERS, REGIONS)
@example("00000000000", "GB")  # E.164 "+440000000000", which reads as +44000000000
@example("+4400000000000", "IT")
def test_a_number_and_the_e164_text_it_reads_as_have_what_phonenumbers_says(text, region):
    phones._READ.clear()
    read = phones.phone(text, region)
    assert facts(read) == facts_from_phonenumbers(text, region)
    if read.e164 is not None:
        # Remembered under its E.164 text: what a fresh parse of that text says too.
        assert facts(phones.phone(read.e164, region)) == facts_from_phonenumbers(read.e164, region)


@settings(max_examples=300, deadline=None)
@given(NUMBERS, REGIONS)
def test_mapping_contact_validation_and_blind_indexes_normalise_as_before(text, region):
    """Each reader's result, against its definition on ``phonenumbers`` alone."""
    phones._READ.clear()
    cleaned = re.sub(r"[\s().\-/]", "", text)
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]
    parsed = fresh(cleaned, region)
    if parsed is None or not phonenumbers.is_possible_number(parsed):
        expected_mapping = (cleaned, False)
    else:
        expected_mapping = (phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164),
                            phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.MOBILE)
    assert _normalise_phone(text, region) == expected_mapping

    # Validation and the blind index read what the mapping produced, as the pipeline does.
    produced = expected_mapping[0]
    parsed = fresh(produced, region)
    valid = parsed is not None and phonenumbers.is_valid_number(parsed)
    assert normalise_phone(produced, region) == (
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) if valid else None)
    assert e164(produced, region) == (
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) if parsed is not None
        else re.sub(r"[^0-9+]", "", produced))


def test_a_new_mobile_is_parsed_once_for_mapping_validation_and_its_blind_index(monkeypatch):
    phones._READ.clear()
    calls = []
    real = phonenumbers.parse
    monkeypatch.setattr(phonenumbers, "parse", lambda *a, **k: calls.append(a) or real(*a, **k))
    mapped, mobile = _normalise_phone("333 765 4321", "IT")
    assert (mapped, mobile) == ("+393337654321", True)
    assert normalise_phone(mapped) == "+393337654321"
    assert e164(mapped) == "+393337654321"
    assert len(calls) == 1


def test_memory_holds_at_most_the_last_numbers_read():
    phones._READ.clear()
    for i in range(phones.REMEMBERED + 500):
        phones.phone(f"33{i:08d}", "IT")
    assert len(phones._READ) <= phones.REMEMBERED + 1


@pytest.mark.parametrize("text", ["", "abc", "+", "++39"])
def test_unreadable_numbers_have_no_e164_form(text):
    read = phones.phone(text, "IT")
    assert (read.e164, read.possible, read.valid, read.mobile) == (None, False, False, False)
