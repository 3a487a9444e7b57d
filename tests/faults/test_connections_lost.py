"""Issue 8: the database drops every connection, and the broker drops the worker's
connections (what a broker restart does to it, without restarting the broker other
tests share). A ``serve --workers celery`` process and a worker recover by
themselves: every message sent around the outages is acknowledged only when
stored, processed, and its notification reaches the fake provider exactly once."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from sqlalchemy.engine import make_url

from adapter.db import make_engine, make_sessionmaker
from tests.conftest import PG_ADMIN
from tests.faults.conftest import (
    assert_each_processed_and_sent_once,
    confirmations_sent,
    AMQP_URL,
    REDIS_URL,
    Process,
    adapter_env,
    delete_queue,
    drop_broker_connections,
    free_port,
    future_start,
    send_until_acknowledged,
    siu_s12,
    start_serve,
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
    fake_twilio.latency_s = 0.05
    env = adapter_env(tmp_path, pg_url, broker_url=broker_url, queue=queue_name, twilio=fake_twilio,
                      claim_batch_size=10, broker_visibility_timeout_s=5)
    http_port, mllp_port = free_port(), free_port()
    start = future_start()
    phases = [
        {f"P{p}M{i:03d}": siu_s12(f"P{p}M{i:03d}", 30000 + p * 1000 + i, start) for i in range(PER_PHASE)}
        for p in range(3)
    ]
    total = PER_PHASE * len(phases)
    server = start_serve(env, tmp_path, http_port, mllp_port, "--workers", "celery")
    worker = Process(["worker", "--concurrency", "2"], env, tmp_path / "worker.log")
    engine = make_engine(pg_url)
    sessions = make_sessionmaker(engine)

    def sent() -> int:
        return confirmations_sent(sessions)

    def send(payloads: dict[str, bytes]) -> None:
        asyncio.run(send_until_acknowledged(payloads, mllp_port, deadline=time.monotonic() + 60))

    try:
        send(phases[0])
        wait_for(lambda: sent() == PER_PHASE, 40, "phase 1 sent (worker up)", interval=0.2)

        assert terminate_backends(pg_url) > 0  # serve's and worker's pools hold dead connections now
        send(phases[1])
        wait_for(lambda: sent() == 2 * PER_PHASE, 40, "phase 2 sent after the database dropped us", interval=0.2)

        assert drop_broker_connections(worker, broker_url) > 0
        terminate_backends(pg_url)
        send(phases[2])
        wait_for(lambda: sent() == total, 60, "phase 3 sent after the broker dropped the worker", interval=0.2)
        assert worker.popen.poll() is None, worker.output()
        assert server.popen.poll() is None, server.output()

        assert_each_processed_and_sent_once(sessions, fake_twilio, total)
    finally:
        worker.terminate()
        server.terminate()
        delete_queue(broker_url, queue_name)
        engine.dispose()
