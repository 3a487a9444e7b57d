"""ACK structure (HL7 v2.5 §2.9, §2.14.8 MSA, §2.14.5 ERR)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from hl7.ack import AckCode, AckError, build_ack, build_reject_for_unreadable
from hl7.header import read_header
from hl7.message import parse

from .conftest import sample

NOW = datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)


def ack_of(raw: bytes, code: AckCode, error: AckError | None = None):
    header = read_header(raw)
    out = build_ack(header, code, error=error, now=NOW)
    return header, out, parse(out.decode(header.codec))


def test_ack_swaps_sender_and_receiver_and_echoes_the_control_id():
    header, _, ack = ack_of(sample("siu_s12_utf8_cr.hl7"), AckCode.AA)
    msh, msa = ack.msh, ack.segment("MSA")
    assert (msh.value(3), msh.value(4), msh.value(5), msh.value(6)) == (
        "ADAPTER", "NOTIFY", "CUP", "OSP_SLUCA")
    assert msh.field(9) == "ACK^S12^ACK"
    assert msh.value(10) and msh.value(10) != header.control_id
    assert (msh.value(11), msh.value(12), msh.value(18)) == ("P", "2.5", "UNICODE UTF-8")
    assert msh.value(7) == "20250301100000+0000"
    assert (msa.value(1), msa.value(2)) == ("AA", "SIU0001")
    assert ack.segment("ERR") is None


@pytest.mark.parametrize("code", [AckCode.AE, AckCode.AR, AckCode.CE, AckCode.CR])
def test_error_codes_carry_an_err_segment_with_code_severity_and_text(code):
    _, _, ack = ack_of(sample("siu_s12_utf8_cr.hl7"), code,
                       AckError("101", "no patient key | in PID-3", "E"))
    err = ack.segment("ERR")
    assert ack.segment("MSA").value(1) == code.value
    assert err.value(3, 1) == "101" and err.value(3, 3) == "HL70357"
    assert err.value(4) == "E" and err.value(8) == "no patient key | in PID-3"


def test_an_error_code_without_an_error_still_explains_itself():
    _, _, ack = ack_of(sample("siu_s12_utf8_cr.hl7"), AckCode.AE)
    assert ack.segment("ERR").value(3, 1) == "207"


def test_pre_v25_acks_use_err1_and_msa3_and_no_structure_in_msh9():
    _, _, ack = ack_of(sample("adt_a08_v23_latin1.hl7"), AckCode.AE, AckError("102", "bad date"))
    assert ack.msh.field(9) == "ACK^A08"
    assert ack.segment("MSA").value(3) == "bad date"
    assert ack.segment("ERR").value(1, 4, 1) == "102"


def test_ack_keeps_the_incoming_separators_and_charset():
    raw = "MSH#$%@!#APP#FAC#R#RF#2025##ADT$A08#X1#P#2.5#####8859/1\rPID#1#".encode("latin-1")
    _, out, ack = ack_of(raw, AckCode.AA)
    assert out.startswith(b"MSH#$%@!#R#RF#APP#FAC#")
    assert ack.segment("MSA").value(2) == "X1"


def test_ack_is_encoded_in_the_incoming_character_set():
    raw = "MSH|^~\\&|CUPò|OSP|R|RF|2025||ADT^A08|1|P|2.5||||||8859/1\r".encode("latin-1")
    _, out, _ = ack_of(raw, AckCode.AA)
    assert "CUPò".encode("latin-1") in out


def test_reject_for_unreadable_finds_the_control_id_when_it_can():
    raw = b"MSH|^~\\&|A|B|C|D|2025||ADT^A08|CID9|P|2.5||||||KOI8\r"
    ack = parse(build_reject_for_unreadable(raw, "unknown charset", code="103").decode())
    assert (ack.segment("MSA").value(1), ack.segment("MSA").value(2)) == ("AR", "CID9")
    assert ack.segment("ERR").value(3, 1) == "103"


def test_reject_for_garbage_has_an_empty_msa2():
    ack = parse(build_reject_for_unreadable(b"\x00\xffnot hl7", "not HL7").decode())
    assert ack.segment("MSA").value(1) == "AR" and ack.segment("MSA").value(2) == ""


def test_a_reject_for_an_unknown_charset_keeps_what_msh_says():
    """The sender uses its own separators, v2.3.1 and enhanced mode; only MSH-18 is
    unknown. Its reject is in its separators, to it (MSH-5/6 swapped), in its
    version's ERR layout, and CR (a commit reject), not a blank-header AR."""
    raw = b"MSH#$%@!#CUP#OSP#ADAPTER#NOTIFY#20250301101500##ADT$A08$ADT_A01#CID1#P#2.3.1###AL#NE##UNICODE UTF-16\rPID#1\r"
    ack = build_reject_for_unreadable(raw, "unsupported character set", code="103")
    msh, msa, err = ack.decode().rstrip("\r").split("\r")
    assert msh.startswith("MSH#$%@!#ADAPTER#NOTIFY#CUP#OSP#") and "#ACK$A08$ACK#" in msh and "#2.3.1" in msh
    assert msa == "MSA#CR#CID1#unsupported character set"
    assert err.startswith("ERR#$$$103!")  # ERR-1 (ELD) before v2.5; ! is its subcomponent separator


def test_a_reject_for_an_empty_msh9_still_answers_the_sender_in_its_separators():
    raw = b"MSH#$%@!#CUP#OSP#ADAPTER#NOTIFY#20250301101500###CID3#P#2.5\rPID#1\r"
    ack = parse(build_reject_for_unreadable(raw, "MSH-9 message type is empty", code="101").decode())
    assert ack.msh.value(3) == "ADAPTER" and ack.msh.value(5) == "CUP"
    assert (ack.segment("MSA").value(1), ack.segment("MSA").value(2)) == ("AR", "CID3")


def test_msa2_is_msh10_exactly_as_sent_escapes_included():
    raw = b"MSH|^~\\&|A|B|C|D|2025||ADT^A08|LAB\\T\\2025-001|P|2.5\r"
    out = build_ack(read_header(raw), AckCode.AA)
    assert b"\rMSA|AA|LAB\\T\\2025-001\r" in out


def test_control_characters_in_an_error_text_cannot_cut_the_ack_frame():
    """An error reason may quote the message (its type, say); MLLP's block characters
    in it would end the frame early. They go as \\Xhh\\."""
    raw = b"MSH|^~\\&|A|B|C|D|2025||ADT^A08|1|P|2.5\r"
    out = build_ack(read_header(raw), AckCode.AE, error=AckError("200", "message type X\x1cY\x0bZ"))
    assert b"\x1c" not in out and b"\x0b" not in out
    assert parse(out.decode()).segment("ERR").value(8) == "message type X\x1cY\x0bZ"
