"""A sending facility with ``ack_timing: processed`` is answered once its message is
mapped: AE or AR with the reason and its own HL7 table 0357 code in ERR-3, and a
retransmission gets the same verdict. Driven through ``HL7Intake.handle``, the
handler behind MLLP and ``POST /hl7/v2``, on a real container."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta

import pytest

from hl7.client import read_ack_code
from hl7.header import read_header
from hl7.message import parse
from tests.core.test_end_to_end import siu
from tests.harness import migrated_container, settings_for

START = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)


@pytest.fixture
def container(tmp_path):
    config = tmp_path / "config"
    shutil.copytree("config", config)
    (config / "facilities.yaml").write_text("facilities:\n  default:\n    ack_timing: processed\n    start_time: [SCH-11]\n")
    container = migrated_container(settings_for(tmp_path, config_dir=config))
    yield container
    container.engine.dispose()


def answers(container, *raws: bytes) -> list[tuple[str, str]]:
    """MSA-1 and ERR-3.1 of the adapter's answer to each of ``raws``, sent one after
    the other (in one event loop, as one MLLP connection would)."""
    async def handle_all() -> list[bytes]:
        try:
            return [await container.intake.handle(raw) for raw in raws]
        finally:
            await container.intake.writer.stop()

    out = []
    for ack in asyncio.run(handle_all()):
        err = parse(ack.decode()).segment("ERR")
        # ERR-3 from v2.5; before, ERR-1 (ELD) with the code in its fourth component
        code = (err.value(3, 1) or err.repetitions(1)[0].component(4).split("&")[0]) if err else ""
        out.append((read_ack_code(ack)[0].value, code))
    return out


def test_each_reason_comes_back_with_its_own_error_code(container):
    ts = START.strftime("%Y%m%d%H%M%S+0000").encode()
    no_start = siu("S12", "P1", START).replace(b"|^^^" + ts + b"|", b"||")
    old_version = siu("S12", "P2", START).replace(b"|P|2.5|", b"|P|2.2|")
    latin_1_as_utf_8 = siu("S12", "P3", START).replace("Nicolò".encode(), "Nicolò".encode("latin-1"))
    assert answers(container, siu("S12", "P0", START), no_start, old_version, latin_1_as_utf_8) == [
        ("AA", ""),
        ("AE", "101"),  # required field missing
        ("AR", "203"),  # unsupported version id
        ("AR", "102"),  # data type error: not in the declared character set
    ]


def test_a_retransmission_of_a_message_stored_but_not_yet_processed_gets_its_real_verdict(container):
    """The adapter stored the message and stopped before mapping it (a crash, a
    restart): the sender, never answered, sends it again. It gets AE, not an AA
    for a message that will end in the error store."""
    ts = START.strftime("%Y%m%d%H%M%S+0000").encode()
    no_start = siu("S12", "P4", START).replace(b"|^^^" + ts + b"|", b"||")
    container.intake.writer.write([(read_header(no_start), no_start)])  # stored, as before the crash
    assert answers(container, no_start, no_start) == [("AE", "101"), ("AE", "101")]
