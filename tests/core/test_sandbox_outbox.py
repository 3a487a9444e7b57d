"""The sandbox channel's outbox (the embedded default's "sent" messages): the sends of
one dispatcher round are recorded together, one row per idempotency key, and a message
that cannot be recorded fails alone."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event, func, select

from adapter.db import transaction
from adapter.models import OutboxMessage
from adapter.providers import outbox_sink
from channels.base import OutboundMessage
from tests.harness import migrated_container, settings_for


def _message(n: int, key: str | None = None) -> OutboundMessage:
    return OutboundMessage(to=f"+39333000{n:04d}", body=f"Promemoria {n}", idempotency_key=key or f"key-{n}")


def _rows(container) -> int:
    with transaction(container.sessions) as session:
        return session.scalar(select(func.count()).select_from(OutboxMessage))


@pytest.fixture
def container(tmp_path):
    container = migrated_container(settings_for(tmp_path))
    yield container
    container.engine.dispose()


def test_the_sends_of_one_round_are_recorded_in_one_transaction(container):
    record = outbox_sink(container.sessions, container.vault, container.clock)
    asyncio.run(record(_message(0)))  # the system key is made in a transaction of its own
    commits: list[int] = []
    event.listen(container.engine, "commit", lambda _conn: commits.append(1))

    async def round_of(count: int) -> list[str]:
        return await asyncio.gather(*(record(_message(n)) for n in range(1, count + 1)))

    ids = asyncio.run(round_of(20))
    assert len(commits) == 1  # one commit for the round, not one per message
    assert len(set(ids)) == 20 and all(i.startswith("sandbox-") for i in ids)
    assert _rows(container) == 21


def test_one_key_is_one_row_whether_sent_twice_at_once_or_again_later(container):
    record = outbox_sink(container.sessions, container.vault, container.clock)

    async def twice() -> list[str]:
        return await asyncio.gather(record(_message(1, "same")), record(_message(1, "same")))

    first, second = asyncio.run(twice())
    again = asyncio.run(record(_message(1, "same")))
    assert first == second == again
    assert _rows(container) == 1


def test_a_message_that_cannot_be_recorded_fails_alone(container):
    record = outbox_sink(container.sessions, container.vault, container.clock)
    broken = OutboundMessage(to=None, body="x", idempotency_key="broken")  # type: ignore[arg-type]

    async def round_with_a_broken_one() -> list[object]:
        return await asyncio.gather(record(_message(1)), record(broken), record(_message(2)),
                                    return_exceptions=True)

    first, failed, third = asyncio.run(round_with_a_broken_one())
    assert isinstance(failed, Exception)
    assert isinstance(first, str) and isinstance(third, str) and first != third
    assert _rows(container) == 2


def test_every_send_gets_an_answer_when_nothing_can_be_recorded(container):
    """The outbox table is gone (a broken database): each send fails, in its own
    time, and none waits for ever for a write that will not come."""
    from sqlalchemy import text

    record = outbox_sink(container.sessions, container.vault, container.clock)
    with transaction(container.sessions) as session:
        session.execute(text("DROP TABLE outbox_message"))

    async def round_of(count: int) -> list[object]:
        return await asyncio.wait_for(
            asyncio.gather(*(record(_message(n)) for n in range(count)), return_exceptions=True), timeout=30)

    outcomes = asyncio.run(round_of(5))
    assert len(outcomes) == 5 and all(isinstance(o, Exception) for o in outcomes)


def test_a_message_refused_by_a_constraint_twice_fails_alone_and_the_rest_are_recorded(container):
    """A constraint refuses one message (a trigger here; a concurrent retry in life):
    its write is tried again once, then it fails alone, without holding up the
    other sends of its round."""
    from sqlalchemy import text

    record = outbox_sink(container.sessions, container.vault, container.clock)
    with transaction(container.sessions) as session:
        session.execute(text(
            "CREATE TRIGGER refuse BEFORE INSERT ON outbox_message WHEN NEW.idempotency_key = 'refused' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"))

    async def round_with_a_refused_one() -> list[object]:
        return await asyncio.wait_for(asyncio.gather(
            record(_message(1)), record(_message(2, "refused")), record(_message(3)), return_exceptions=True), timeout=30)

    first, refused, third = asyncio.run(round_with_a_refused_one())
    assert isinstance(refused, Exception)
    assert isinstance(first, str) and isinstance(third, str)
    assert _rows(container) == 2
