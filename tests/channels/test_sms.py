from decimal import Decimal
from math import ceil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.sms import GSM7_BASIC, Encoding, check_template_fits, count_segments, estimate_cost


@pytest.mark.parametrize(("length", "segments"), [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3)])
def test_gsm7_text_fits_160_in_one_part_and_153_per_part_when_split(length, segments) -> None:
    count = count_segments("a" * length)
    assert (count.encoding, count.segments, count.chars) == (Encoding.GSM7, segments, length)


@pytest.mark.parametrize(("length", "segments"), [(70, 1), (71, 2), (134, 2), (135, 3)])
def test_ucs2_text_fits_70_in_one_part_and_67_per_part_when_split(length, segments) -> None:
    count = count_segments("’" + "a" * (length - 1))
    assert (count.encoding, count.segments) == (Encoding.UCS2, segments)


def test_extension_table_characters_count_double() -> None:
    assert count_segments("€" * 80).segments == 1
    assert count_segments("€" * 81).chars == 162
    assert count_segments("€" * 81).segments == 2
    for char in "[]{}^~\\|\f":
        assert count_segments(char).chars == 2


def test_an_extension_character_is_never_split_across_parts() -> None:
    # 152 septets then "€" (2 septets) does not fit in the first 153-septet part.
    assert count_segments("a" * 152 + "€" + "a" * 8).segments == 2
    assert count_segments("a" * 152 + "€" + "a" * 152).segments == 3


def test_italian_lower_case_accents_are_gsm7_but_capitals_and_typographic_quotes_are_not() -> None:
    assert count_segments("à è é ì ò ù").encoding is Encoding.GSM7
    for char in "ÀÈÌÒÙóá’“”":
        count = count_segments(f"Gentile paziente {char}")
        assert (count.encoding, count.offending, count.offending_index) == (
            Encoding.UCS2, char, 17)


def test_an_emoji_takes_two_ucs2_units() -> None:
    assert count_segments("😀" * 35).segments == 1
    assert count_segments("😀" * 35 + "a").segments == 2


def test_empty_text_needs_no_segment() -> None:
    assert count_segments("").segments == 0


@given(st.text(alphabet=sorted(GSM7_BASIC), min_size=1, max_size=1200))
def test_segments_of_any_plain_gsm7_text_follow_the_160_153_rule(text: str) -> None:
    n = len(text)
    assert count_segments(text).segments == (1 if n <= 160 else ceil(n / 153))


def test_cost_is_segments_times_the_configured_price() -> None:
    assert estimate_cost("a" * 161, Decimal("0.08")) == Decimal("0.16")


def test_a_template_over_its_part_budget_is_reported_with_the_offending_character() -> None:
    samples = {"it/reminder": "Gentile Maria, l’appuntamento è confermato." * 2,
               "it/confirm": "Risponda 1 per confermare, 2 per annullare."}
    [problem] = check_template_fits(samples, max_segments=1)
    assert (problem.sample, problem.segments, problem.offending) == ("it/reminder", 2, "’")
    assert "U+2019" in str(problem) and "Maria" not in str(problem)
