"""A dispatcher round touches the database in as few transactions as it can, and
one notification's failure stays its own (adapter.dispatch.Dispatcher)."""

from __future__ import annotations

from sqlalchemy import event, text

from tests.harness import migrated_container, settings_for


def _round(tmp_path, *, others_waiting: bool) -> tuple[list, int, list[int]]:
    container = migrated_container(settings_for(tmp_path))
    dispatcher = container.dispatcher
    dispatcher.others_waiting = lambda: others_waiting
    commits: list[int] = []
    event.listen(container.engine, "commit", lambda _conn: commits.append(1))
    with container.engine.begin() as connection:
        connection.execute(text("CREATE TABLE probe (v INTEGER)"))
    commits.clear()

    def work(session, item: int) -> int:
        session.execute(text("INSERT INTO probe VALUES (:v)"), {"v": item})
        if item == 2:
            raise ValueError("this one fails")
        return item * 10

    out = dispatcher._each_in_savepoint([0, 1, 2, 3], work)
    with container.engine.connect() as connection:
        kept = sorted(v for (v,) in connection.execute(text("SELECT v FROM probe")))
    container.engine.dispose()
    return out, len(commits), kept


def test_a_round_is_one_transaction_and_a_failure_is_undone_alone(tmp_path):
    out, commits, kept = _round(tmp_path, others_waiting=False)
    assert out[:2] == [0, 10] and isinstance(out[2], ValueError) and out[3] == 30
    assert commits == 1
    assert kept == [0, 1, 3]  # the failing item's savepoint was rolled back, nothing else


def test_a_round_commits_after_each_item_while_an_ack_waits(tmp_path):
    out, commits, kept = _round(tmp_path, others_waiting=True)
    assert out[:2] == [0, 10] and isinstance(out[2], ValueError) and out[3] == 30
    assert commits == 4  # the write lock is let go between items
    assert kept == [0, 1, 3]
