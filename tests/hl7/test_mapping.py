"""HL7 v2 messages to adapter events, from the sample messages."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from adapter.events import (
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentFulfilled,
    AppointmentNoShow,
    AppointmentRescheduled,
    ContactPoint,
    Identifier,
    PatientsMerged,
    PatientUpdated,
    ReportReady,
    ReportWithdrawn,
)
from hl7.errors import MappingError, UnsupportedMessage
from hl7.facilities import FacilityConfig
from hl7.header import decode, read_header
from hl7.mapping import map_message

from .conftest import sample

RECEIVED = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
UTC = timezone.utc
FISCAL = Identifier("NNITA", "DLANCL80A01F205X", "NN")


def events_of(name: str, facilities: FacilityConfig):
    raw = sample(name)
    return map_message(decode(raw, read_header(raw)), facilities, received_at=RECEIVED)


def text_of(name: str) -> str:
    raw = sample(name)
    return decode(raw, read_header(raw))


def test_siu_s12_is_an_appointment_booked_with_patient_times_and_place(facilities):
    [event] = events_of("siu_s12_utf8_cr.hl7", facilities)
    assert isinstance(event, AppointmentBooked)
    assert event.origin.sender == "CUP^OSP_SLUCA" and event.origin.message_ref == "SIU0001"
    assert event.origin.source == "hl7"
    assert event.occurred_at == datetime(2025, 3, 1, 9, 15, tzinfo=UTC)
    a = event.appointment
    assert a.ref == "hl7:CUP^OSP_SLUCA:FL987654"
    assert a.start == datetime(2025, 3, 10, 8, 30, tzinfo=UTC)
    assert a.end == datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
    assert a.location == "Ambulatorio 2 - Piano terra" and a.service == "Visita cardiologica"
    p = event.patient
    assert p.key == FISCAL  # OSP_SLUCA keys patients by fiscal code
    assert (p.given_name, p.family_name, p.language) == ("Nicolò", "D'Alò", "it")
    assert p.telecom == (
        ContactPoint("phone", "+393331234567", "mobile", 1),
        ContactPoint("email", "nicolo.dalo@example.it", "home", 2),
        ContactPoint("phone", "+39027654321", "work", 3),
    )


@pytest.mark.parametrize(
    "name", ["siu_s12_utf8_cr.hl7", "siu_s12_latin1_lf.hl7", "siu_s12_nocharset_latin1_crlf.hl7"]
)
def test_every_encoding_and_segment_end_gives_the_same_booking(name, facilities):
    [event] = events_of(name, facilities)
    assert event.patient.family_name == "D'Alò" and event.patient.given_name == "Nicolò"
    assert event.appointment.start == datetime(2025, 3, 10, 8, 30, tzinfo=UTC)


def test_appointment_ref_is_stable_across_booking_reschedule_and_cancellation(facilities):
    refs = {
        events_of(n, facilities)[0].appointment.ref
        for n in ("siu_s12_utf8_cr.hl7", "siu_s13_local_time.hl7", "siu_s15_cancel.hl7")
    }
    assert refs == {"hl7:CUP^OSP_SLUCA:FL987654"}


def test_siu_s13_is_rescheduled_and_local_times_are_read_in_the_facility_zone(facilities):
    [event] = events_of("siu_s13_local_time.hl7", facilities)
    assert isinstance(event, AppointmentRescheduled)
    assert event.appointment.start == datetime(2025, 3, 12, 10, 0, tzinfo=UTC)  # 11:00 CET
    assert event.occurred_at == datetime(2025, 3, 2, 8, 0, tzinfo=UTC)


def test_local_time_in_summer_uses_the_summer_offset(facilities):
    text = text_of("siu_s13_local_time.hl7").replace("20250312110000", "20250715110000")
    [event] = map_message(text, facilities, received_at=RECEIVED)
    assert event.appointment.start == datetime(2025, 7, 15, 9, 0, tzinfo=UTC)  # 11:00 CEST


def test_siu_s14_is_a_modification_mapped_as_rescheduled(facilities):
    [event] = events_of("siu_s14_modification.hl7", facilities)
    assert isinstance(event, AppointmentRescheduled)


@pytest.mark.parametrize(
    "status, kind",
    [("Cancelled", AppointmentCancelled), ("Noshow", AppointmentNoShow),
     ("Complete", AppointmentFulfilled)],
)
def test_siu_s14_with_a_final_filler_status_maps_to_that_status(status, kind, facilities):
    text = text_of("siu_s14_modification.hl7").replace("|Booked", f"|{status}")
    [event] = map_message(text, facilities, received_at=RECEIVED)
    assert isinstance(event, kind)


@pytest.mark.parametrize(
    "name, reason", [("siu_s15_cancel.hl7", "cancelled"), ("siu_s17_delete.hl7", "deleted")]
)
def test_siu_s15_and_s17_are_cancellations_with_their_reason(name, reason, facilities):
    [event] = events_of(name, facilities)
    assert isinstance(event, AppointmentCancelled) and event.reason == reason


def test_siu_s26_is_a_no_show(facilities):
    [event] = events_of("siu_s26_noshow.hl7", facilities)
    assert isinstance(event, AppointmentNoShow)


def without_pid(name: str) -> str:
    return "\r".join(line for line in text_of(name).split("\r") if not line.startswith(("PID", "PD1", "PV1")))


@pytest.mark.parametrize(
    "name, kind",
    [("siu_s13_local_time.hl7", AppointmentRescheduled), ("siu_s14_modification.hl7", AppointmentRescheduled),
     ("siu_s15_cancel.hl7", AppointmentCancelled), ("siu_s17_delete.hl7", AppointmentCancelled),
     ("siu_s26_noshow.hl7", AppointmentNoShow)],
)
def test_an_siu_without_pid_names_the_appointment_and_no_patient(name, kind, facilities):
    """PID is optional in SIU (HL7 v2.5 §10.6): such a message is about the patient the
    appointment is stored for (the core finds them by ``appointment.ref``)."""
    [with_pid] = events_of(name, facilities)
    [event] = map_message(without_pid(name), facilities, received_at=RECEIVED)
    assert type(event) is kind and event.patient is None
    assert event.appointment == with_pid.appointment


def test_an_s14_without_pid_that_completes_the_appointment_is_its_fulfilment(facilities):
    text = without_pid("siu_s14_modification.hl7").replace("|Booked", "|Complete")
    [event] = map_message(text, facilities, received_at=RECEIVED)
    assert isinstance(event, AppointmentFulfilled) and event.patient is None


def test_a_booking_without_pid_is_a_mapping_error_saying_a_booking_must_carry_pid(facilities):
    with pytest.raises(MappingError, match="a booking must carry PID") as raised:
        map_message(without_pid("siu_s12_utf8_cr.hl7"), facilities, received_at=RECEIVED)
    assert raised.value.code == "100"


@pytest.mark.parametrize("name", ["oru_r01_final.hl7", "adt_a31_update.hl7", "adt_a40_merge.hl7"])
def test_a_report_or_patient_update_without_pid_is_still_a_mapping_error(name, facilities):
    with pytest.raises(MappingError, match="PID"):
        map_message(without_pid(name), facilities, received_at=RECEIVED)


def test_start_time_comes_from_where_the_facility_says(facilities):
    text = text_of("siu_s12_utf8_cr.hl7").replace("20250310093000+0100|0|min", "20250310150000+0100|0|min")
    [slu] = map_message(text, facilities, received_at=RECEIVED)  # OSP_SLUCA: AIS-4 first
    [other] = map_message(text.replace("OSP_SLUCA|", "OTHER|", 1), facilities, received_at=RECEIVED)
    assert slu.appointment.start == datetime(2025, 3, 10, 14, 0, tzinfo=UTC)
    assert other.appointment.start == datetime(2025, 3, 10, 8, 30, tzinfo=UTC)  # default: SCH-11


def test_default_facility_keys_patients_by_mrn(facilities):
    text = text_of("siu_s12_utf8_cr.hl7").replace("OSP_SLUCA|", "OTHER|", 1)
    [event] = map_message(text, facilities, received_at=RECEIVED)
    assert event.patient.key == Identifier("OSP_SLUCA", "0012345", "MR")
    assert event.appointment.ref == "hl7:CUP^OTHER:FL987654"


def test_an_identifier_without_assigning_authority_is_qualified_by_the_sending_facility(facilities):
    text = text_of("siu_s12_utf8_cr.hl7").replace("OSP_SLUCA|", "OTHER|", 1).replace("^^^OSP_SLUCA^MR", "^^^^MR")
    [event] = map_message(text, facilities, received_at=RECEIVED)
    assert event.patient.key == Identifier("OTHER", "0012345", "MR", authority_assumed=True)
    assert FISCAL in event.patient.identifiers  # an authority given is kept as it is


def test_missing_start_time_is_a_mapping_error(facilities):
    text = text_of("siu_s12_latin1_lf.hl7")
    text = text.replace("20250310093000+0100", "").replace("20250310100000+0100", "")
    with pytest.raises(MappingError, match="start time") as caught:
        map_message(text, facilities, received_at=RECEIVED)
    assert caught.value.code == "101"


def test_an_end_time_sent_as_the_hl7_null_is_read_as_absent_and_the_duration_gives_the_end(facilities):
    # The default facility reads SCH-11 first: its end SCH-11.5, else the duration SCH-9/SCH-10.
    text = text_of("siu_s12_latin1_lf.hl7").replace("OSP_SLUCA|", "OTHER|", 1).replace("20250310100000+0100", '""')
    [event] = map_message(text, facilities, received_at=RECEIVED)
    assert (event.appointment.start, event.appointment.end) == (datetime(2025, 3, 10, 8, 30, tzinfo=UTC),
                                                               datetime(2025, 3, 10, 9, 0, tzinfo=UTC))


def test_unreadable_timestamp_is_a_mapping_error_without_personal_data(facilities):
    text = text_of("siu_s12_latin1_lf.hl7").replace("20250310093000+0100", "2025-03-10 09:30")
    with pytest.raises(MappingError) as caught:
        map_message(text, facilities, received_at=RECEIVED)
    assert caught.value.code == "102" and "Nicol" not in str(caught.value)


def test_no_identifier_matching_the_patient_key_is_a_mapping_error(facilities):
    text = text_of("siu_s12_utf8_cr.hl7").replace("NNITA^NN", "XX^XX").replace("^MR~", "^PI~")
    with pytest.raises(MappingError, match="patient_key") as caught:
        map_message(text, facilities, received_at=RECEIVED)
    assert "DLANCL" not in str(caught.value) and "0012345" not in str(caught.value)


def test_oru_final_is_report_ready_with_codes(facilities):
    [event] = events_of("oru_r01_final.hl7", facilities)
    assert isinstance(event, ReportReady) and not event.amended
    assert event.report_ref == "hl7:LIS^LAB_CENTRALE:LAB778899"
    assert event.codes == ("24323-8", "PMC", "2345-7", "2160-0")
    assert event.patient.key == Identifier("LAB", "L556677", "MR")


def test_oru_corrected_is_an_amended_report_ready(facilities):
    [event] = events_of("oru_r01_corrected.hl7", facilities)
    assert isinstance(event, ReportReady) and event.amended


def test_oru_preliminary_maps_to_nothing(facilities):
    assert events_of("oru_r01_preliminary.hl7", facilities) == []


def test_oru_cancelled_withdraws_the_report(facilities):
    [event] = events_of("oru_r01_cancelled.hl7", facilities)
    assert isinstance(event, ReportWithdrawn)
    assert event.report_ref == "hl7:LIS^LAB_CENTRALE:LAB778899"


def test_oru_without_obr25_follows_the_obx_statuses(facilities):
    text = text_of("oru_r01_final.hl7").replace("||CH|F", "||CH|")
    [event] = map_message(text, facilities, received_at=RECEIVED)
    assert isinstance(event, ReportReady)
    partial = text.replace("N|||F\r", "N|||P\r", 1)
    assert map_message(partial, facilities, received_at=RECEIVED) == []


def test_adt_a04_a08_a28_a31_are_patient_updates(facilities):
    for name in ("adt_a04_register.hl7", "adt_a08_v23_latin1.hl7", "adt_a28_v28_escapes.hl7",
                 "adt_a31_update.hl7"):
        [event] = events_of(name, facilities)
        assert isinstance(event, PatientUpdated), name


def test_adt_a08_v23_latin1_reads_a_phone_in_xtn1_and_an_iso639_2_language(facilities):
    [event] = events_of("adt_a08_v23_latin1.hl7", facilities)
    p = event.patient
    assert p.family_name == "D'Alò" and p.language == "it"
    assert p.telecom[0] == ContactPoint("phone", "+393475551234", "mobile", 1)
    assert p.telecom[1].system == "email" and p.telecom[1].value == "nicolo.dalo@example.it"
    assert event.occurred_at == datetime(2025, 3, 1, 10, 0, tzinfo=UTC)  # EVN-2, local time


def test_adt_a28_v28_decodes_escapes_and_ignores_z_segments(facilities):
    [event] = events_of("adt_a28_v28_escapes.hl7", facilities)
    assert event.patient.family_name == "Dell\\Orto & Figli"
    assert event.patient.given_name == "Maria Grazia^Anna"
    assert event.patient.language == "en"


def test_adt_a31_carries_the_new_mobile_number(facilities):
    [event] = events_of("adt_a31_update.hl7", facilities)
    assert event.patient.telecom[0] == ContactPoint("phone", "+393397777777", "mobile", 1)


@pytest.mark.parametrize(("pid15", "cleared"), [('""', {"language"}), ("", set())], ids=["HL7 null", "empty"])
def test_adt_a31_pid_15_sent_as_the_hl7_null_clears_the_language_and_left_empty_keeps_it(facilities, pid15, cleared):
    text = text_of("adt_a31_update.hl7").replace("|it\r", f"|{pid15}\r")
    [event] = map_message(text, facilities, received_at=RECEIVED)
    assert (event.patient.language, event.patient.cleared) == ("", cleared)


@pytest.mark.parametrize(("pid5", "names", "cleared"), [
    ('D\'Alò^""^^^^^L', ("", "D'Alò"), {"given_name"}),
    ('""', ("", ""), {"given_name", "family_name"}),
    ("D'Alò^^^^^^L", ("", "D'Alò"), set()),
], ids=["given name null", "PID-5 null", "given name empty"])
def test_adt_a31_a_name_sent_as_the_hl7_null_clears_it_and_one_left_empty_keeps_it(facilities, pid5, names, cleared):
    text = text_of("adt_a31_update.hl7").replace("|D'Alò^Nicolò^^^^^L|", f"|{pid5}|")
    [event] = map_message(text, facilities, received_at=RECEIVED)
    assert (event.patient.given_name, event.patient.family_name, event.patient.cleared) == (*names, cleared)


def test_a_sender_that_writes_the_hl7_null_for_every_value_it_lacks_deletes_nothing(facilities):
    """``null_deletes: false``: its "" reads as not sent, so names, language and phones held stay."""
    text = (text_of("adt_a31_update.hl7").replace("|D'Alò^Nicolò^^^^^L|", '|""|').replace("|it\r", '|""\r')
            .replace("|^PRN^CP^^39^339^7777777~^NET^Internet^nicolo.dalo@example.it|^WPN^PH^^39^02^7654321|",
                     '|""|""|'))
    [deleting] = map_message(text, facilities, received_at=RECEIVED)
    assert deleting.patient.cleared == {"given_name", "family_name", "language"} and deleting.patient.telecom_listed
    rule = facilities.facilities["OSP_SLUCA"].model_copy(update={"null_deletes": False})
    lenient = facilities.model_copy(update={"facilities": {**facilities.facilities, "OSP_SLUCA": rule}})
    [keeping] = map_message(text, lenient, received_at=RECEIVED)
    assert (keeping.patient.cleared, keeping.patient.telecom_listed, keeping.patient.telecom) == (frozenset(), False, ())
    assert (keeping.patient.given_name, keeping.patient.family_name, keeping.patient.language) == ("", "", "")


def test_adt_a40_merges_the_mrg1_identifier_into_the_pid_patient(facilities):
    [event] = events_of("adt_a40_merge.hl7", facilities)
    assert isinstance(event, PatientsMerged)
    assert event.retired == Identifier("OSP_SLUCA", "0054321", "MR")
    assert event.surviving.key == Identifier("OSP_SLUCA", "0012345", "MR")


@pytest.mark.parametrize("trigger", ["A18", "A34", "A36", "A47"])
def test_the_merges_a40_replaced_and_an_identifier_change_merge_as_a40_does(facilities, trigger):
    """v2.3 systems still send A18/A34/A36 for a merge; A47 says MRG-1's identifier was
    wrong and PID-3's is right. Ignored, the retired record kept its appointments and
    notices, and a patient could be told twice."""
    text = text_of("adt_a40_merge.hl7").replace("ADT^A40^ADT_A39", f"ADT^{trigger}^ADT_A30").replace("|A40|", f"|{trigger}|")
    [event] = map_message(text, facilities, received_at=RECEIVED)
    assert isinstance(event, PatientsMerged)
    assert event.retired == Identifier("OSP_SLUCA", "0054321", "MR")
    assert event.surviving.key == Identifier("OSP_SLUCA", "0012345", "MR")
    with pytest.raises(MappingError, match=f"ADT\\^{trigger} message has no MRG segment"):
        map_message(text.replace("MRG|", "ZRG|"), facilities, received_at=RECEIVED)


SURVIVOR_WITH_FISCAL_CODE = ("PID|1||0012345^^^OSP_SLUCA^MR", "PID|1||0012345^^^OSP_SLUCA^MR~DLANCL80A01F205X^^^NNITA^NN")


def test_a40_takes_the_retired_identifier_from_those_of_mrg1_the_survivor_does_not_share(facilities):
    text = text_of("adt_a40_merge.hl7").replace(*SURVIVOR_WITH_FISCAL_CODE).replace(
        "MRG|0054321^^^OSP_SLUCA^MR", "MRG|DLANCL80A01F205X^^^NNITA^NN~0054321^^^OSP_SLUCA^MR~X9^^^OLD^PI")
    [event] = map_message(text, facilities, received_at=RECEIVED)  # OSP_SLUCA keys by fiscal code first
    assert event.retired == Identifier("OSP_SLUCA", "0054321", "MR")
    assert event.retired_also == (Identifier("OLD", "X9", "PI"),)


def test_a40_whose_mrg1_lists_only_the_survivors_identifiers_is_a_mapping_error(facilities):
    text = text_of("adt_a40_merge.hl7").replace(*SURVIVOR_WITH_FISCAL_CODE).replace(
        "MRG|0054321^^^OSP_SLUCA^MR", "MRG|DLANCL80A01F205X^^^NNITA^NN~0012345^^^OSP_SLUCA^MR")
    with pytest.raises(MappingError, match="only identifiers of the surviving patient"):
        map_message(text, facilities, received_at=RECEIVED)


def test_a40_whose_mrg1_is_the_hl7_null_names_no_record_to_merge(facilities):
    text = text_of("adt_a40_merge.hl7").replace("MRG|0054321^^^OSP_SLUCA^MR", 'MRG|""^^^OSP_SLUCA^MR')
    with pytest.raises(MappingError, match="MRG-1 .* is empty"):
        map_message(text, facilities, received_at=RECEIVED)


def test_a40_without_mrg_is_a_mapping_error(facilities):
    text = text_of("adt_a40_merge.hl7").replace("MRG|", "ZRG|")
    with pytest.raises(MappingError):
        map_message(text, facilities, received_at=RECEIVED)


@pytest.mark.parametrize("msh9", ["ADT^A01", "ADT^A03", "SIU^S16", "ORU^R30", "ACK^S12^ACK"])
def test_triggers_we_do_not_act_on_and_acks_map_to_nothing(msh9, facilities):
    text = text_of("adt_a04_register.hl7").replace("ADT^A04^ADT_A01", msh9)
    assert map_message(text, facilities, received_at=RECEIVED) == []


def test_other_message_types_are_unsupported(facilities):
    text = text_of("adt_a04_register.hl7").replace("ADT^A04^ADT_A01", "MDM^T02")
    with pytest.raises(UnsupportedMessage) as caught:
        map_message(text, facilities, received_at=RECEIVED)
    assert caught.value.code == "200"


@pytest.mark.parametrize("version", ["2.1", "2.2", "3.0", ""])
def test_versions_outside_2_3_to_2_8_are_unsupported(version, facilities):
    text = text_of("adt_a04_register.hl7").replace("|P|2.5|", f"|P|{version}|")
    with pytest.raises(UnsupportedMessage) as caught:
        map_message(text, facilities, received_at=RECEIVED)
    assert caught.value.code == "203"


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"])
def test_versions_2_3_to_2_8_are_mapped(version, facilities):
    text = text_of("adt_a04_register.hl7").replace("|P|2.5|", f"|P|{version}|")
    assert len(map_message(text, facilities, received_at=RECEIVED)) == 1


def test_hl7apy_validation_when_a_facility_asks_for_it():
    cfg = FacilityConfig.model_validate(
        {"facilities": {"default": {"validate_with_hl7apy": True}}}
    )
    text = text_of("siu_s12_utf8_cr.hl7").replace("OSP_SLUCA|", "X|", 1)
    assert len(map_message(text, cfg, received_at=RECEIVED)) == 1
    broken = "\r".join(s for s in text.split("\r") if not s.startswith("SCH"))
    with pytest.raises(MappingError, match="SCH"):
        map_message(broken, cfg, received_at=RECEIVED)


def test_a_report_of_many_obx_segments_leaves_no_object_per_segment_for_the_garbage_collector(facilities):
    """A large report (an embedded PDF, long free text) is mapped without keeping an
    object per segment alive: a full garbage collection scans every live object while
    every thread, the one that sends ACKs too, waits."""
    import gc

    from hl7.message import parse

    base = text_of("oru_r01_final.hl7").rstrip("\r")
    obx = [f"OBX|{k}|TX|NOTE{k % 3}^Nota||Riga {k} del referto||||||F" for k in range(20_000)]
    text = "\r".join([base, *obx]) + "\r"
    gc.collect()
    before = len(gc.get_objects())
    message = parse(text)
    assert len(gc.get_objects()) - before < 100
    assert sum(1 for _ in message.all("OBX")) == 20_000 + text_of("oru_r01_final.hl7").count("\rOBX|")
    [event] = map_message(text, facilities, received_at=RECEIVED)
    assert event.codes == ("24323-8", "PMC", "2345-7", "2160-0", "NOTE0", "NOTE1", "NOTE2")


def test_the_service_code_is_ais_3_with_its_coding_system(facilities):
    [event] = events_of("siu_s12_utf8_cr.hl7", facilities)
    assert event.appointment.service_code == "L|CARD01"
    text = text_of("siu_s12_utf8_cr.hl7").replace("CARD01^Visita cardiologica^L", "CARD01^Visita cardiologica")
    [event] = map_message(text, facilities, received_at=RECEIVED)
    assert event.appointment.service_code == "CARD01"


def test_the_service_code_is_that_of_the_ais_the_start_is_taken_from(facilities):
    # OSP_SLUCA takes the start from AIS-4, the earliest of the AIS: the blood test at 08:00.
    text = text_of("siu_s12_utf8_cr.hl7").replace(
        "AIL|1|", "AIS|2||LAB01^Prelievo^L|20250310080000+0100|0|min|10|min\rAIL|1|")
    [slu] = map_message(text, facilities, received_at=RECEIVED)
    assert (slu.appointment.service_code, slu.appointment.service) == ("L|LAB01", "Prelievo")
    # Another sender takes it from SCH-11 (09:30), which is the visit's AIS-4.
    [other] = map_message(text.replace("OSP_SLUCA|", "OTHER|", 1), facilities, received_at=RECEIVED)
    assert other.appointment.service_code == "L|CARD01"


def test_a_cancellation_without_ais_names_no_service(facilities):
    [event] = events_of("siu_s15_cancel.hl7", facilities)
    text = "\r".join(line for line in text_of("siu_s15_cancel.hl7").split("\r") if not line.startswith("AIS"))
    [bare] = map_message(text, facilities, received_at=RECEIVED)
    assert bare.appointment.service_code == "" and isinstance(event, AppointmentCancelled)
