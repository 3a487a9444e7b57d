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
