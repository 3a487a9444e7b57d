"""The fast MSH reader and character sets."""

from __future__ import annotations

import pytest

from hl7.errors import CharsetError, HeaderError
from hl7.header import decode, read_header

from .conftest import sample


def test_header_fields_are_read_by_position():
    h = read_header(sample("siu_s12_utf8_cr.hl7"))
    assert (h.sending_application, h.sending_facility) == ("CUP", "OSP_SLUCA")
    assert (h.receiving_application, h.receiving_facility) == ("ADAPTER", "NOTIFY")
    assert (h.message_code, h.trigger_event, h.message_structure) == ("SIU", "S12", "SIU_S12")
    assert (h.control_id, h.processing_id, h.version) == ("SIU0001", "P", "2.5")
    assert h.charset == "UNICODE UTF-8" and h.sender == "CUP^OSP_SLUCA"
    assert not h.enhanced_mode


def test_separators_are_read_from_msh1_and_msh2_not_assumed():
    raw = b"MSH#$%@!#APP#FAC#R#RF#2025##ADT$A08#X1#P#2.5##\rPID#1"
    h = read_header(raw)
    assert h.separators.field == "#" and h.separators.component == "$"
    assert (h.message_code, h.trigger_event, h.control_id) == ("ADT", "A08", "X1")


def test_v28_truncation_character_is_the_fifth_encoding_character():
    h = read_header(sample("adt_a28_v28_escapes.hl7"))
    assert h.separators.truncation == "#" and h.separators.encoding_characters == "^~\\&#"


@pytest.mark.parametrize("end", [b"\r", b"\n", b"\r\n"])
def test_segment_ends_cr_lf_and_crlf_are_accepted(end):
    raw = b"MSH|^~\\&|A|B|C|D|2025||ADT^A08|CID|P|2.5" + end + b"PID|1" + end
    assert read_header(raw).control_id == "CID"


def test_enhanced_mode_follows_msh15_and_msh16():
    raw = b"MSH|^~\\&|A|B|C|D|2025||ADT^A08|CID|P|2.5|||AL|NE\r"
    h = read_header(raw)
    assert (h.accept_ack_type, h.application_ack_type, h.enhanced_mode) == ("AL", "NE", True)


@pytest.mark.parametrize(
    "raw",
    [b"", b"PID|1||x\r", b"MSH", b"MSHA^~\\&|", b"MSH|^~|A\r", b"MSH|^~\\&|A|B|C|D|2025||ADT^A08|\r",
     b"MSH|^~\\&|A|B|C|D|2025|||CID|P|2.5\r", b"MSH|^^\\&|A\r"],
)
def test_anything_not_starting_with_a_well_formed_msh_raises_header_error(raw):
    with pytest.raises(HeaderError):
        read_header(raw)


def test_unknown_charset_raises_charset_error():
    with pytest.raises(CharsetError):
        read_header(b"MSH|^~\\&|A|B|C|D|2025||ADT^A08|1|P|2.5||||||EBCDIC\r")


@pytest.mark.parametrize(
    "name", ["siu_s12_utf8_cr.hl7", "siu_s12_latin1_lf.hl7", "siu_s12_nocharset_latin1_crlf.hl7",
             "adt_a08_v23_latin1.hl7"],
)
def test_italian_names_decode_intact_in_every_charset(name):
    raw = sample(name)
    text = decode(raw, read_header(raw))
    assert "D'Alò^Nicolò" in text


def test_declared_utf8_with_latin1_bytes_raises_charset_error():
    raw = sample("siu_s12_latin1_lf.hl7").replace(b"8859/1", b"UNICODE UTF-8")
    with pytest.raises(CharsetError):
        decode(raw, read_header(raw))


def test_names_round_trip_through_encode_and_decode_in_utf8_and_latin1():
    for charset, codec in (("UNICODE UTF-8", "utf-8"), ("8859/1", "latin-1")):
        text = f"MSH|^~\\&|A|B|C|D|2025||ADT^A08|1|P|2.5||||||{charset}\rPID|1||1||D'Alò^Nicolò\r"
        raw = text.encode(codec)
        assert decode(raw, read_header(raw)) == text


@pytest.mark.parametrize("charset", ["", "8859/1"])
def test_windows_typography_under_latin_1_or_no_charset_reads_as_windows_wrote_it(charset):
    """Windows programs label their text 8859/1, or nothing, and write ’ as 0x92 and
    € as 0x80: control characters in ISO 8859-1 proper. They are read as browsers
    read ISO-8859-1 (WHATWG), so a patient's name holds no control character."""
    text = f"MSH|^~\\&|A|B|C|D|2025||ADT^A08|1|P|2.5||||||{charset}\rPID|1||1||D’Alò^Nicolò\rZPY|5€\r"
    raw = text.encode("cp1252")
    assert decode(raw, read_header(raw)) == text


def test_the_usual_spellings_of_latin_1_and_utf_8_are_understood():
    for charset in ("ISO-8859-1", "ISO8859-1", "LATIN1", "WINDOWS-1252", "UTF8"):
        header = read_header(f"MSH|^~\\&|A|B|C|D|2025||ADT^A08|1|P|2.5||||||{charset}\r".encode())
        assert header.charset == charset


def test_a_nul_byte_in_msh_is_refused_before_it_reaches_the_database():
    """PostgreSQL text cannot hold NUL; no HL7 value has one."""
    with pytest.raises(HeaderError) as caught:
        read_header(b"MSH|^~\\&|A\x00|B|C|D|2025||ADT^A08|1|P|2.5\r")
    assert caught.value.code == "102"
