"""HL7 v2 flows through the whole adapter: ADT updates reach pending notices,
merges move everything, ACK after processing, and no input kills the listener."""

from __future__ import annotations

import pytest

import asyncio
import random
import shutil
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from adapter.clock import FrozenClock
from adapter.db import transaction
from adapter.models import Notification, OutboxMessage, Patient
from compliance.consent_store import record_consent, records_for
from hl7.client import send_messages
from tests.core.test_end_to_end import notifications, siu, wait_for
from tests.harness import running_adapter, settings_for

NOW = datetime.now(UTC).replace(microsecond=0)


def adt(trigger: str, control_id: str, mrn: str, phone: str = "", extra: str = "", *, language: str = "it") -> bytes:
    """An ADT for ``mrn``; ``phone`` is a mobile number without +39, or a PID-13 as written
    when it is the HL7 null ``""``; ``language`` is PID-15 as written."""
    telecom = f"^PRN^CP^^39^{phone[:3]}^{phone[3:]}" if phone and phone != '""' else phone
    return ("\r".join(s for s in [
        f"MSH|^~\\&|PAS|OSP_TEST|ADAPTER|NOTIFY|20260101000000||ADT^{trigger}^ADT_A01|{control_id}|P|2.5||||||UNICODE UTF-8",
        f"EVN|{trigger}|20260101000000",
        f"PID|1||{mrn}^^^OSP_TEST^MR||D'Alò^Nicolò||19800101|M|||||{telecom}||{language}",
        extra,
    ] if s) + "\r").encode()


def siu_for(mrn: str, control_id: str, start: datetime) -> bytes:
    return siu("S12", control_id, start).replace(b"0012345^^^OSP_TEST^MR", f"{mrn}^^^OSP_TEST^MR".encode()).replace(
        b"FL1^OSP_TEST", f"FL-{control_id}^OSP_TEST".encode()
    )


def outbox_addresses(adapter) -> list[str]:
    with transaction(adapter.container.sessions) as session:
        vault = adapter.container.vault
        return [vault.decrypt_str(session, row.to_enc) for row in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]


def test_a_new_phone_number_from_adt_a08_is_used_by_pending_reminders(tmp_path):
    clock = FrozenClock(NOW)
    with running_adapter(settings_for(tmp_path), clock=clock) as adapter:
        start = NOW + timedelta(days=3)
        send = lambda *m: asyncio.run(send_messages(list(m), "127.0.0.1", adapter.mllp_port))  # noqa: E731
        assert [r.code.value for r in send(siu_for("777", "B1", start))] == ["AA"]
        wait_for(lambda: outbox_addresses(adapter) == ["+393331234567"])
        assert [r.code.value for r in send(adt("A08", "U1", "777", "3475551234"))] == ["AA"]
        officer = adapter.client("officer")
        wait_for(lambda: officer.get("/api/messages", params={"control_id": "U1"}).json()["items"][0]["status"] == "processed")
        clock.set(start - timedelta(hours=24))
        wait_for(lambda: len(outbox_addresses(adapter)) == 2)
        assert outbox_addresses(adapter)[1] == "+393475551234"


def processed(adapter, control_id: str) -> None:
    officer = adapter.client("officer")
    wait_for(lambda: [i["status"] for i in officer.get("/api/messages", params={"control_id": control_id}).json()["items"]]
             == ["processed"])


def templates_used(adapter, kind: str) -> list[str]:
    with transaction(adapter.container.sessions) as session:
        return list(session.scalars(select(Notification.template_id).where(
            Notification.kind == kind, Notification.template_id.is_not(None)).order_by(Notification.id)))


def test_a_primary_language_deleted_by_adt_a08_sends_pending_reminders_in_the_default_language(tmp_path):
    """PID-15 ``""`` is the HL7 null (HL7 v2.5 §2.5.3): the language held is deleted, and the
    patient's next messages are in the clinic's default, as after any change of language."""
    clock = FrozenClock(NOW)
    with running_adapter(settings_for(tmp_path), clock=clock) as adapter:
        start = NOW + timedelta(days=3)
        send = lambda *m: asyncio.run(send_messages(list(m), "127.0.0.1", adapter.mllp_port))  # noqa: E731
        booking = siu_for("778", "L1", start).replace(b"||it\r", b"||\r")  # the booking says no language
        assert [r.code.value for r in send(adt("A04", "L0", "778", "3331234567", language="en"), booking)] == ["AA", "AA"]
        wait_for(lambda: templates_used(adapter, "booking_confirmation") == ["en/booking_confirmation"])
        assert [r.code.value for r in send(adt("A08", "L2", "778", language='""'))] == ["AA"]
        processed(adapter, "L2")
        with transaction(adapter.container.sessions) as session:
            assert session.scalar(select(Patient.language)) == ""
        clock.set(start - timedelta(hours=24))
        assert wait_for(lambda: templates_used(adapter, "reminder")) == ["it/reminder"]


def outbox_bodies(adapter) -> list[str]:
    with transaction(adapter.container.sessions) as session:
        vault = adapter.container.vault
        return [vault.decrypt_str(session, body) for body in session.scalars(select(OutboxMessage.body_enc).order_by(OutboxMessage.id))]


def test_a_given_name_deleted_with_the_hl7_null_is_not_written_to_the_patient_as_two_quotes(tmp_path):
    """PID-5.2 ``""`` deletes the given name held (HL7 v2.5 §2.5.3): the greeting names nobody,
    neither the name held before nor ``""``. PID-5 ``""`` deletes the whole name."""
    with running_adapter(settings_for(tmp_path)) as adapter:
        send = lambda *m: asyncio.run(send_messages(list(m), "127.0.0.1", adapter.mllp_port))  # noqa: E731
        booking = siu_for("779", "N1", NOW + timedelta(days=3)).replace(b"|D'Al\xc3\xb2^Nicol\xc3\xb2|", b"|D'Al\xc3\xb2^\"\"|")
        assert [r.code.value for r in send(adt("A04", "N0", "779", "3331234567"), booking)] == ["AA", "AA"]
        [body] = wait_for(lambda: outbox_bodies(adapter))
        assert body.startswith("Gentile ") and '""' not in body and "Nicolò" not in body, body
        assert [r.code.value for r in send(adt("A08", "N2", "779").replace(b"|D'Al\xc3\xb2^Nicol\xc3\xb2|", b'|""|'))] == ["AA"]
        processed(adapter, "N2")
        with transaction(adapter.container.sessions) as session:
            assert session.execute(select(Patient.given_name_enc, Patient.family_name_enc)).one() == (None, None)


def test_a_phone_number_deleted_by_adt_a08_is_not_messaged_and_the_pending_reminder_is_suppressed_with_the_reason(tmp_path):
    """PID-13 ``""`` (HL7 v2.5 §2.5.3): the patient's numbers are deleted; with no other
    contact, a reminder still pending is suppressed, and the audit log says why."""
    clock = FrozenClock(NOW)
    with running_adapter(settings_for(tmp_path), clock=clock) as adapter:
        start = NOW + timedelta(days=3)
        send = lambda *m: asyncio.run(send_messages(list(m), "127.0.0.1", adapter.mllp_port))  # noqa: E731
        booking = siu_for("780", "T1", start).replace(b"|^PRN^CP^^39^333^1234567|", b"||")  # the booking lists none
        assert [r.code.value for r in send(adt("A04", "T0", "780", "3331234567"), booking)] == ["AA", "AA"]
        wait_for(lambda: outbox_addresses(adapter) == ["+393331234567"])
        assert [r.code.value for r in send(adt("A08", "T2", "780", '""'))] == ["AA"]
        processed(adapter, "T2")
        clock.set(start - timedelta(hours=24))
        officer = adapter.client("officer")
        reminder = wait_for(lambda: [i for i in notifications(officer, status="suppressed") if i["kind"] == "reminder"])[0]
        assert reminder["reason"] == "no usable contact for any live channel"
        audited = officer.get("/api/audit", params={"patient": reminder["patient"], "limit": 1000}).json()["items"]
        assert [e["reason"] for e in audited if e["action"] == "suppressed"] == ["no usable contact for any live channel"]
        assert outbox_addresses(adapter) == ["+393331234567"]


@pytest.mark.parametrize("trigger", ["A40", "A34"])  # A34: the merge v2.3 systems send
def test_adt_a40_merge_moves_appointments_pending_notices_and_consent_to_the_survivor(tmp_path, trigger):
    with running_adapter(settings_for(tmp_path)) as adapter:
        start = NOW + timedelta(days=3)
        asyncio.run(send_messages([adt("A04", "R1", "111", "3331112222"), siu_for("999", "M1", start)], "127.0.0.1", adapter.mllp_port))
        officer = adapter.client("officer")
        wait_for(lambda: len(notifications(officer)) >= 4)
        sessions = adapter.container.sessions
        with transaction(sessions) as session:
            retired = session.scalar(select(Notification.patient_id).where(Notification.subject_ref.like("%FL-M1")))
            record_consent(session, patient_id=retired, purpose="*", channel="sms", decision="deny", source="api", at=NOW)
        merge = adt(trigger, "MG1", "111", extra="MRG|999^^^OSP_TEST^MR")
        assert asyncio.run(send_messages([merge], "127.0.0.1", adapter.mllp_port))[0].code.value == "AA"
        wait_for(lambda: officer.get("/api/messages", params={"control_id": "MG1"}).json()["items"][0]["status"] == "processed")
        with transaction(sessions) as session:
            survivor = session.scalar(select(Patient).where(Patient.id != retired, Patient.merged_into.is_(None)))
            owners = set(session.scalars(select(Notification.patient_id).where(Notification.subject_ref.like("%FL-M1"))))
            assert owners == {survivor.id}
            assert session.get(Patient, retired).merged_into == survivor.id
            assert [r.decision for r in records_for(session, survivor.id)] == ["deny"]


def test_a_facility_that_asks_for_ack_after_processing_gets_ae_with_the_reason(tmp_path):
    config = tmp_path / "config"
    shutil.copytree("config", config)
    (config / "facilities.yaml").write_text(
        "facilities:\n  default:\n    ack_timing: processed\n    start_time: [SCH-11]\n"
    )
    with running_adapter(settings_for(tmp_path, config_dir=config)) as adapter:
        start = NOW + timedelta(days=2)
        ts = start.strftime("%Y%m%d%H%M%S+0000").encode()
        good = siu("S12", "P1", start)
        no_start = siu("S12", "P2", start).replace(b"|^^^" + ts + b"|", b"||")
        first, second = asyncio.run(send_messages([good, no_start], "127.0.0.1", adapter.mllp_port))
        assert first.code.value == "AA"
        assert second.code.value == "AE" and b"\rERR|" in second.ack and b"SCH-11" in second.ack
        again = asyncio.run(send_messages([no_start], "127.0.0.1", adapter.mllp_port))[0]
        assert again.code.value == "AE"  # a retransmission gets the same verdict, processed once


def test_an_ae_for_a_missing_patient_key_names_within_its_err_the_identifier_types_pid3_has(tmp_path):
    """ERR holds 200 characters: the identifier types the hospital sent, what its engineer
    needs to fix the mapping, came after the rules tried and were cut off."""
    config = tmp_path / "config"
    shutil.copytree("config", config)
    (config / "facilities.yaml").write_text("facilities:\n  default:\n    ack_timing: processed\n")
    identifiers = "RSSMRA80A01H501U^^^NNITA^NNITA~7781^^^ASL_ROMA1^XX~42^^^OSP_TEST^AN"
    booking = siu("S12", "K1", NOW + timedelta(days=2)).replace(b"0012345^^^OSP_TEST^MR", identifiers.encode())
    with running_adapter(settings_for(tmp_path, config_dir=config)) as adapter:
        (answer,) = asyncio.run(send_messages([booking], "127.0.0.1", adapter.mllp_port))
    err = next(segment for segment in answer.ack.split(b"\r") if segment.startswith(b"ERR|"))
    assert answer.code.value == "AE" and err.split(b"|")[3].startswith(b"101^")
    for present in (b"NNITA", b"XX", b"AN", b"ASL_ROMA1"):
        assert present in err, err
    for value in (b"RSSMRA", b"7781", b"|42", b"Nicol"):
        assert value not in answer.ack


def processing_id(message: bytes, value: str) -> bytes:
    """Set MSH-11 (processing id: P production, T training, D debugging)."""
    segments = message.split(b"\r")
    fields = segments[0].split(b"|")
    fields[10] = value.encode()
    segments[0] = b"|".join(fields)
    return b"\r".join(segments)


def test_a_training_or_debugging_message_is_rejected_unstored_unless_the_facility_takes_it(tmp_path):
    """A hospital's test system pointed at production (MSH-11 T or D) must not message real
    patients: AR with error 202 (HL7 v2.5 §2.9.2), CR in enhanced mode, nothing stored. A
    facility configured for it (a test adapter) takes it."""
    from adapter.models import InboundMessage

    config = tmp_path / "config"
    shutil.copytree("config", config)
    yaml = (config / "facilities.yaml").read_text()
    (config / "facilities.yaml").write_text(yaml.replace("  LAB_CENTRALE:\n", "  TRAINING_LAB:\n    processing_ids: [T]\n  LAB_CENTRALE:\n"))
    start = NOW + timedelta(days=2)
    with running_adapter(settings_for(tmp_path, config_dir=config)) as adapter:
        send = lambda *m: asyncio.run(send_messages(list(m), "127.0.0.1", adapter.mllp_port))  # noqa: E731
        training, debugging, blank = send(processing_id(siu("S12", "T1", start), "T"),
                                          processing_id(siu("S12", "D1", start), "D^T"),
                                          processing_id(siu("S12", "B1", start), ""))
        assert training.code.value == "AR" and b"ERR|" in training.ack and b"202" in training.ack
        assert debugging.code.value == "AR"
        assert blank.code.value == "AA"  # an empty MSH-11 reads as production
        (committed,) = send(enhanced(processing_id(siu("S12", "T2", start), "T"), "AL", "NE"))
        assert committed.code.value == "CR"
        elsewhere = processing_id(siu("S12", "T3", start), "T").replace(b"|CUP|OSP_TEST|", b"|CUP|TRAINING_LAB|", 1)
        assert b"|TRAINING_LAB|" in elsewhere
        (taken,) = send(elsewhere)
        assert taken.code.value == "AA"
        with transaction(adapter.container.sessions) as session:
            assert sorted(session.scalars(select(InboundMessage.control_id))) == ["B1", "T3"]


def test_a_message_type_or_version_not_handled_is_rejected_at_once_and_not_stored(tmp_path):
    """HL7 v2.5 §2.9.2: a message type or version the receiver does not take is answered AR
    (error 200, 203) when it arrives. With the ACK after storage it used to be answered AA,
    stored, and found 'rejected' in the error store later: the sender believed it delivered.
    Triggers of the handled types that the adapter does not act on (A01, S16) stay AA."""
    from adapter.models import InboundMessage

    start = NOW + timedelta(days=2)
    with running_adapter(settings_for(tmp_path)) as adapter:
        send = lambda *m: asyncio.run(send_messages(list(m), "127.0.0.1", adapter.mllp_port))  # noqa: E731
        order = siu("S12", "O1", start).replace(b"|SIU^S12^SIU_S12|", b"|ORM^O01^ORM_O01|")
        old = siu("S12", "V1", start).replace(b"|P|2.5|", b"|P|2.2|")
        ignored = adt("A01", "I1", "MRN-I1")
        rejected_type, rejected_version, taken = send(order, old, ignored)
        assert rejected_type.code.value == "AR" and b"|200" in rejected_type.ack.split(b"ERR|")[1]
        assert rejected_version.code.value == "AR" and b"203" in rejected_version.ack.split(b"ERR|")[1]
        assert taken.code.value == "AA"
        with transaction(adapter.container.sessions) as session:
            assert list(session.scalars(select(InboundMessage.control_id))) == ["I1"]


def test_random_and_mutated_input_always_gets_an_ack_or_a_clean_close_and_the_listener_survives(tmp_path):
    rng = random.Random(20261126)
    base = siu("S12", "F0", NOW + timedelta(days=2))
    inputs: list[bytes] = []
    for i in range(150):
        if i % 3 == 0:
            inputs.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
        else:
            mutated = bytearray(base.replace(b"F0", f"F{i}".encode()))
            for _ in range(rng.randrange(1, 12)):
                position = rng.randrange(len(mutated))
                choice = rng.random()
                if choice < 0.4:
                    mutated[position] = rng.randrange(256)
                elif choice < 0.7:
                    del mutated[position]
                else:
                    mutated.insert(position, rng.choice(b"|^~\\&\r\n\x0b\x1c"))
            inputs.append(bytes(mutated))
    with running_adapter(settings_for(tmp_path)) as adapter:
        payloads = [p.replace(b"\x0b", b" ").replace(b"\x1c", b" ") for p in inputs]  # framing bytes are the transport's
        results = asyncio.run(send_messages(payloads, "127.0.0.1", adapter.mllp_port, connections=4, timeout=10, retries=0))
        assert all(r.code is not None for r in results), [r.error for r in results if r.code is None][:3]
        (after,) = asyncio.run(send_messages([siu("S12", "ALIVE", NOW + timedelta(days=2))], "127.0.0.1", adapter.mllp_port))
        assert after.code.value == "AA"


def enhanced(message: bytes, accept: str, application: str) -> bytes:
    """Set MSH-15 and MSH-16 (enhanced acknowledgement mode, HL7 v2.5 §2.9.3)."""
    segments = message.split(b"\r")
    fields = segments[0].split(b"|")
    fields += [b""] * (18 - len(fields))
    fields[14], fields[15] = accept.encode(), application.encode()
    segments[0] = b"|".join(fields)
    return b"\r".join(segments)


def test_enhanced_mode_commits_with_ca_then_sends_the_application_ack_to_the_senders_listener(tmp_path):
    from tests.core.test_replies import MllpListener

    listener = MllpListener(refuse=1)  # the first application ACK is refused: retried
    config = tmp_path / "config"
    shutil.copytree("config", config)
    (config / "facilities.yaml").write_text(
        "facilities:\n  default:\n    start_time: [SCH-11]\n"
        f"    writeback: {{host: 127.0.0.1, port: {listener.server.port}}}\n"
    )
    try:
        with running_adapter(settings_for(tmp_path, config_dir=config)) as adapter:
            start = NOW + timedelta(days=2)
            ts = start.strftime("%Y%m%d%H%M%S+0000").encode()
            good = enhanced(siu("S12", "EN1", start), "AL", "AL")
            bad = enhanced(siu("S12", "EN2", start).replace(b"|^^^" + ts + b"|", b"||"), "AL", "ER")
            quiet = enhanced(siu("S12", "EN3", start), "NE", "NE")
            first, second = asyncio.run(send_messages([good, bad], "127.0.0.1", adapter.mllp_port))
            assert first.code.value == second.code.value == "CA"  # stored: commit accept
            assert b"\rERR|" not in first.ack

            def application_acks() -> dict[str, str]:
                out = {}
                for message in listener.received:
                    msa = [s for s in message.split("\r") if s.startswith("MSA|")][0].split("|")
                    out[msa[2]] = msa[1]
                return out

            wait_for(lambda: len(application_acks()) == 2, timeout=20)
            assert application_acks() == {"EN1": "AA", "EN2": "AE"}
            assert any("ERR|" in m and "SCH-11" in m for m in listener.received if "|EN2" in m)

            from hl7.mllp import frame

            async def no_commit_ack() -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", adapter.mllp_port)
                writer.write(frame(quiet))
                await writer.drain()
                try:
                    return await asyncio.wait_for(reader.read(100), timeout=1.0)
                except TimeoutError:
                    return b""
                finally:
                    writer.close()

            assert asyncio.run(no_commit_ack()) == b""  # MSH-15 NE: no commit ACK at all
            officer = adapter.client("officer")
            wait_for(lambda: officer.get("/api/messages", params={"control_id": "EN3"}).json()["items"][0]["status"] == "processed")
            assert "EN3" not in application_acks()  # MSH-16 NE: no application ACK either
    finally:
        listener.stop()


def test_the_message_store_filtered_by_status_lists_only_messages_shown_with_that_status(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        officer = adapter.client("officer")
        start = NOW + timedelta(days=3)
        sent = asyncio.run(send_messages([siu_for("881", "D1", start), siu_for("882", "D2", start),
                                          siu_for("881", "D1", start)], "127.0.0.1", adapter.mllp_port))
        assert [r.code.value for r in sent] == ["AA", "AA", "AA"]
        wait_for(lambda: officer.get("/api/messages", params={"status": "processed"}).json()["total"] >= 1
                 and officer.get("/api/messages", params={"status": "stored"}).json()["total"] == 0)

        def listed(status: str) -> tuple[int, list[str]]:
            page = officer.get("/api/messages", params={"status": status}).json()
            return page["total"], [(i["control_id"], i["status"]) for i in page["items"]]

        assert listed("processed") == (1, [("D2", "processed")])
        assert listed("duplicate") == (1, [("D1", "duplicate")])
        assert officer.get("/api/messages").json()["total"] == 2
