"""A batch received whole (HL7 v2.5 §2.10.3), over MLLP and HTTP: each message handled as
if it came alone, one answer with all their ACKs in order."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from adapter.db import transaction
from adapter.models import InboundMessage
from hl7.client import MLLPConnection
from tests.core.test_end_to_end import siu
from tests.harness import running_adapter, settings_for

START = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)


def batch(*messages: bytes, file_header: bool = True, line_end: bytes = b"\r") -> bytes:
    heads = [b"FHS|^~\\&|CUP|OSP_TEST|ADAPTER|NOTIFY|20260101||||F1"] if file_header else []
    heads.append(b"BHS|^~\\&|CUP|OSP_TEST|ADAPTER|NOTIFY|20260101||||B1")
    tail = [b"BTS|%d" % len(messages)] + ([b"FTS|1"] if file_header else [])
    lines = heads + [segment for m in messages for segment in m.rstrip(b"\r").split(b"\r")] + tail
    return line_end.join(lines) + line_end


def segments(answer: bytes) -> list[str]:
    return [s for s in answer.decode().split("\r") if s]


def test_a_batch_over_mllp_is_answered_with_each_message_s_ack_in_order(tmp_path):
    booking = siu("S12", "BAT1", START)
    unsupported = siu("S12", "BAT2", START).replace(b"|SIU^S12^SIU_S12|", b"|ORM^O01^ORM_O01|")
    with running_adapter(settings_for(tmp_path)) as adapter:
        async def send(raw: bytes) -> bytes:
            async with MLLPConnection("127.0.0.1", adapter.mllp_port, timeout=10) as conn:
                return await conn.send(raw)

        answer = segments(asyncio.run(send(batch(booking, unsupported, booking, line_end=b"\r\n"))))
        assert answer[0].startswith("FHS|^~\\&|ADAPTER|NOTIFY|CUP|OSP_TEST|") and answer[0].endswith("|F1")
        assert answer[1].startswith("BHS|^~\\&|ADAPTER|NOTIFY|CUP|OSP_TEST|") and answer[1].endswith("|B1")
        assert [s[:11] for s in answer if s.startswith("MSA|")] == ["MSA|AA|BAT1", "MSA|AR|BAT2", "MSA|AA|BAT1"]
        assert answer[-2:] == ["BTS|3", "FTS|1"]
        with transaction(adapter.container.sessions) as session:  # the repeat is a duplicate, processed once
            assert list(session.scalars(select(InboundMessage.control_id))) == ["BAT1"]


def test_a_batch_posted_over_http_without_a_file_header_is_answered_the_same_way(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter, adapter.client("ehr") as ehr:
        answer = ehr.post("/hl7/v2", content=batch(siu("S12", "HB1", START), siu("S12", "HB2", START + timedelta(days=1)),
                                                   file_header=False),
                          headers={"Content-Type": "x-application/hl7-v2+er7"})
        assert answer.status_code == 200, answer.text
        said = segments(answer.content)
        assert said[0].startswith("BHS|") and said[-1] == "BTS|2"
        assert [s[:10] for s in said if s.startswith("MSA|")] == ["MSA|AA|HB1", "MSA|AA|HB2"]


def test_a_large_batch_is_stored_in_its_order_and_a_booking_then_its_move_apply_in_that_order(tmp_path):
    """Messages of a batch share group commits (a night's results in one frame must not take
    a commit each), yet are stored, and so processed, in the batch's order. A facility that
    answers after processing gets them handled one by one, in order, too."""
    import shutil

    from adapter.models import Appointment

    config = tmp_path / "config"
    shutil.copytree("config", config)
    yaml = (config / "facilities.yaml").read_text()
    (config / "facilities.yaml").write_text(yaml.replace("  LAB_CENTRALE:\n", "  AFTER_PROCESSING:\n"
                                                         "    ack_timing: processed\n  LAB_CENTRALE:\n", 1))
    bookings = [siu("S12", f"L{n:03d}", START).replace(b"FL1^OSP_TEST", f"FL{n}^OSP_TEST".encode()) for n in range(120)]
    moved = START + timedelta(days=5)

    def after_processing(raw: bytes) -> bytes:
        return raw.replace(b"|CUP|OSP_TEST|", b"|CUP|AFTER_PROCESSING|", 1).replace(b"FL1^OSP_TEST", b"FLP^AFTER_PROCESSING")

    with running_adapter(settings_for(tmp_path, config_dir=config)) as adapter:
        async def send(raw: bytes) -> bytes:
            async with MLLPConnection("127.0.0.1", adapter.mllp_port, timeout=30) as conn:
                return await conn.send(raw)

        answer = segments(asyncio.run(send(batch(*bookings))))
        assert [s.split("|")[2] for s in answer if s.startswith("MSA|")] == [f"L{n:03d}" for n in range(120)]
        with transaction(adapter.container.sessions) as session:
            stored = list(session.scalars(select(InboundMessage.control_id).order_by(InboundMessage.id)))
        assert stored == [f"L{n:03d}" for n in range(120)]

        pair = batch(after_processing(siu("S12", "P1", START)), after_processing(siu("S13", "P2", moved)))
        assert [s[:9] for s in segments(asyncio.run(send(pair))) if s.startswith("MSA|")] == ["MSA|AA|P1", "MSA|AA|P2"]
        with transaction(adapter.container.sessions) as session:
            start = session.scalar(select(Appointment.start).where(Appointment.ref.like("%FLP%")))
        assert start == moved  # the move, applied after the booking
