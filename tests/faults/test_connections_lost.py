"""Issue 8: the database drops every connection, and the broker drops the worker's
connections (what a broker restart does to it, without restarting the broker other
tests share). A ``serve --workers celery`` process and a worker recover by
themselves: every message sent around the outages is acknowledged only when
stored, processed, and its notification reaches the fake provider exactly once."""

from __future__ import annotations


import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.harness import PG_ADMIN
from tests.faults.conftest import (
    celery_cluster,
    AMQP_URL,
    REDIS_URL,
    drop_broker_connections,
    wait_for,
)

PER_PHASE = 40


def terminate_backends(database_url: str) -> int:
    name = make_url(database_url).database
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("broker_url", [AMQP_URL, REDIS_URL], ids=["rabbitmq", "redis"])
def test_database_and_broker_connections_dropped_then_recovered_nothing_lost(
    tmp_path, pg_url, fake_twilio, queue_name, broker_url
):
    with celery_cluster(tmp_path, pg_url, broker_url, queue_name, fake_twilio) as cluster:
        phases = cluster.bookings("P", 3, PER_PHASE, 30000)
        total = PER_PHASE * len(phases)
        cluster.send(phases[0])
        wait_for(lambda: cluster.sent() == PER_PHASE, 40, "phase 1 sent (worker up)", interval=0.2)

        assert terminate_backends(pg_url) > 0  # serve's and worker's pools hold dead connections now
        cluster.send(phases[1])
        wait_for(lambda: cluster.sent() == 2 * PER_PHASE, 40, "phase 2 sent after the database dropped us", interval=0.2)

        assert drop_broker_connections(cluster.worker, broker_url) > 0
        terminate_backends(pg_url)
        cluster.send(phases[2])
        wait_for(lambda: cluster.sent() == total, 60, "phase 3 sent after the broker dropped the worker", interval=0.2)
        cluster.check(total)
