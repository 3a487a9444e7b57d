"""Raw inbound messages live in ``inbound_raw``, apart from the message's row that
processing updates: an upgraded database keeps every raw message it held."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from adapter.db import make_engine
from adapter.migrate import alembic_config, upgrade


def test_upgrading_moves_every_held_raw_message_into_its_own_table(database_url):
    command.upgrade(alembic_config(database_url), "ba6e9f49d65c")
    engine = make_engine(database_url)
    at = datetime(2026, 11, 1, tzinfo=UTC).isoformat()
    with engine.begin() as conn:
        for control_id, raw in (("A1", b"\x01sealed-a"), ("A2", None), ("A3", b"\x02sealed-c" * 1000)):
            conn.execute(sa.text(
                "INSERT INTO inbound_message (source, sender, control_id, message_type, received_at, status,"
                " duplicates, raw_enc) VALUES ('hl7', 'LAB', :c, 'ORU^R01', :at, 'processed', 0, :raw)"),
                {"c": control_id, "at": at, "raw": raw})
    engine.dispose()

    upgrade(database_url)

    engine = make_engine(database_url)
    with engine.connect() as conn:
        held = dict(conn.execute(sa.text(
            "SELECT m.control_id, r.raw_enc FROM inbound_message m JOIN inbound_raw r ON r.message_id = m.id")).all())
        columns = {c["name"] for c in sa.inspect(conn).get_columns("inbound_message")}
        messages = conn.execute(sa.text("SELECT count(*) FROM inbound_message")).scalar()
    engine.dispose()
    assert {k: bytes(v) for k, v in held.items()} == {"A1": b"\x01sealed-a", "A3": b"\x02sealed-c" * 1000}
    assert "raw_enc" not in columns and messages == 3


def test_processing_a_large_report_does_not_write_its_raw_bytes_again(tmp_path):
    """Marking a message processed rewrites its row; the raw bytes are not in it."""
    import sqlite3
    from contextlib import closing
    from pathlib import Path

    from adapter.models import InboundMessage
    from hl7.header import read_header
    from tests.harness import migrated_container, settings_for

    container = migrated_container(settings_for(tmp_path))
    obx = "\r".join(f"OBX|{k}|TX|NOTE^Nota||Riga {k} di un referto lungo, come un PDF incluso||||||F" for k in range(30_000))
    raw = ("MSH|^~\\&|LIS|LAB|ADAPTER|NOTIFY|20260101000000||ORU^R01^ORU_R01|BIG1|P|2.5||||||UNICODE UTF-8\r"
           "PID|1||L1^^^LAB^MR||Rossi^Ada||19800101|F|||||^PRN^CP^^39^333^7654321||it\r"
           f"OBR|1|O1|R1^LIS|GLU^Glucosio|||20260101000000|||||||||||||||20260101000000|||F\r{obx}\r").encode()
    container.intake.writer.write([(read_header(raw), raw)])
    wal = Path(container.engine.url.database + "-wal")
    with closing(sqlite3.connect(container.engine.url.database)) as conn:
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0  # not busy: done
    assert wal.stat().st_size == 0

    assert container.intake.process_pending() == 1

    with container.sessions() as session:
        assert session.query(InboundMessage.status).scalar() == "processed"
    assert len(raw) > 2_000_000 and wal.stat().st_size < len(raw) / 4
    container.engine.dispose()
