"""/metrics tells an operator when acknowledged messages are not being mapped: the
age of the oldest stored, unprocessed inbound message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapter.metrics import StoreCollector
from hl7.header import read_header
from tests.core.test_end_to_end import siu
from tests.harness import migrated_container, settings_for


def _gauges(container, *, later: timedelta) -> dict[str, float]:
    collector = StoreCollector(container.sessions, lambda: container.clock.now() + later)
    return {family.name: family.samples[0].value for family in collector.collect()
            if len(family.samples) == 1 and not family.samples[0].labels}


def test_the_oldest_waiting_message_ages_until_it_is_processed(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    start = datetime.now(UTC) + timedelta(days=2)
    raws = [siu("S12", f"OLD{n}", start) for n in range(3)]
    assert _gauges(container, later=timedelta(0))["adapter_inbound_oldest_waiting_seconds"] == 0.0

    container.intake.writer.write([(read_header(raw), raw) for raw in raws])  # as the ACK path stores them
    gauges = _gauges(container, later=timedelta(minutes=5))
    assert gauges["adapter_inbound_queue_depth"] == 3
    assert 300 <= gauges["adapter_inbound_oldest_waiting_seconds"] < 330

    assert container.intake.process_pending() == 3
    gauges = _gauges(container, later=timedelta(minutes=5))
    assert gauges["adapter_inbound_queue_depth"] == 0
    assert gauges["adapter_inbound_oldest_waiting_seconds"] == 0.0
    container.engine.dispose()
