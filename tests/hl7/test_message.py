"""The light parser: positions, repetitions and escape sequences."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hl7.errors import HeaderError
from hl7.header import Separators
from hl7.message import escape, parse, segment_lines, unescape

SEP = Separators()


def test_values_are_read_by_field_repetition_component_and_subcomponent():
    m = parse("MSH|^~\\&|A|B\rPID|1||111^^^OSP&1.2.3&ISO^MR~222^^^NNITA^NN||Rossi^Mario\r")
    pid = m.segment("PID")
    assert pid.value(3, 1) == "111" and pid.value(3, 4, 2) == "1.2.3"
    assert pid.value(3, 1, repetition=2) == "222" and pid.value(3, 5, repetition=2) == "NN"
    assert [r.component(1) for r in pid.repetitions(3)] == ["111", "222"]
    assert pid.value(5, 2) == "Mario" and pid.value(40) == "" and pid.value(3, 9) == ""


def test_msh_fields_are_numbered_as_in_the_standard():
    msh = parse("MSH|^~\\&|APP|FAC|||||SIU^S12|C1|P|2.5\r").msh
    assert msh.value(1) == "|" and msh.value(2) == "^~\\&"
    assert msh.value(3) == "APP" and msh.value(9, 2) == "S12" and msh.value(10) == "C1"


@pytest.mark.parametrize(
    "written, value",
    [
        ("a\\F\\b", "a|b"), ("a\\S\\b", "a^b"), ("a\\T\\b", "a&b"), ("a\\R\\b", "a~b"),
        ("a\\E\\b", "a\\b"), ("riga\\.br\\due", "riga\ndue"), ("Nicol\\XC3B2\\", "Nicolò"),
        ("Nicol\\XF2\\", "Nicolò"), ("\\H\\bold\\N\\", "bold"), ("broken\\", "broken\\"),
        ("\\Q\\", "\\Q\\"), ("\\XZZ\\", "\\XZZ\\"),
        # character-set switches are dropped; a stray escape character keeps its text
        ("a\\C2842\\b", "ab"), ("a\\M2442\\b", "ab"), ("a\\M244F28\\b", "ab"),
        ("Reparto \\Cardiologia\\ piano 2", "Reparto \\Cardiologia\\ piano 2"),
        ("\\Zlocale\\", "\\Zlocale\\"),
    ],
)
def test_escape_sequences_are_decoded(written, value):
    assert unescape(written, SEP) == value


def test_hex_escapes_use_the_message_character_set():
    assert unescape("\\XF2\\", SEP, "latin-1") == "ò"


def test_escape_is_the_inverse_of_unescape():
    text = "a|b^c&d~e\\f\nD'Alò"
    assert unescape(escape(text, SEP), SEP) == text


def test_z_segments_are_kept_and_blank_lines_skipped():
    m = parse("MSH|^~\\&|A\n\nPID|1\r\nZXY|1|local\n")
    assert [s.name for s in m.segments] == ["MSH", "PID", "ZXY"]
    assert m.segment("ZXY").value(2) == "local"


@given(st.text(alphabet="\r\nPID|^1x", max_size=60))
def test_segments_end_at_cr_lf_or_crlf_in_any_mix(text):
    assert segment_lines(text) == re.split(r"\r\n|\r|\n", text)


def test_text_without_msh_raises_header_error():
    with pytest.raises(HeaderError):
        parse("PID|1\r")


_PIECE = st.text(alphabet="ab^~&\\\\FSTRE.", max_size=12)


@given(fields=st.lists(_PIECE, min_size=1, max_size=5), name=st.sampled_from(["PID", "MSH", "ZXY"]),
       n=st.integers(0, 6), component=st.integers(1, 4), subcomponent=st.integers(1, 3), repetition=st.integers(1, 3))
def test_value_reads_what_its_repetition_and_component_say(fields, name, n, component, subcomponent, repetition):
    """``Segment.value`` splits the field itself (it is read ~17 times per message);
    it must give what the repetition's component gives, MSH-1 and MSH-2 whole."""
    text = "MSH|^~\\&|A|B|C|D|20250101||ADT^A08|1|P|2.5" + ("" if name == "MSH" else "\r" + "|".join([name, *fields]))
    message = parse(text)
    segment = message.msh if name == "MSH" else message.segment(name)
    if name == "MSH" and n in (1, 2):
        expected = segment.field(n)
    else:
        reps = segment.repetitions(n)
        expected = reps[repetition - 1].component(component, subcomponent) if repetition <= len(reps) else ""
    assert segment.value(n, component, subcomponent, repetition) == expected


def test_a_hex_escape_of_utf16_code_units_is_read_as_such_and_leaves_no_nul():
    """Dedalus HELIOS writes à as \\X00E0\\ in an 8859/1 message: one UTF-16 code unit, not
    the bytes 00 E0 (a NUL and an à). UTF-8 bytes and single bytes read as before."""
    from hl7.header import Separators
    from hl7.message import unescape

    sep = Separators()
    assert unescape("gi\\X00E0\\ Nicol\\X00F2\\", sep, "hl7_windows_1252") == "già Nicolò"
    assert unescape("Nicol\\XC3B2\\", sep, "utf-8") == "Nicolò"
    assert unescape("a\\X0D0A\\b", sep, "utf-8") == "a\r\nb"
