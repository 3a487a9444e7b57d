"""Issue 8: the broker itself is restarted (RabbitMQ's application stopped and started;
Redis shut down and started again, losing everything it held) while a
``serve --workers celery`` process and a worker run. They recover by themselves:
every message sent before, during and after is acknowledged only when stored,
processed, and its notification reaches the fake provider exactly once.

This disturbs the machine's shared broker for a few seconds, so it runs in the one
pytest process of ``make test`` and restores the broker before it ends."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

import pytest

from adapter.db import make_engine, make_sessionmaker
from tests.faults.conftest import (
    assert_each_processed_and_sent_once,
    confirmations_sent,
    AMQP_URL,
    REDIS_URL,
    Process,
    adapter_env,
    delete_queue,
    free_port,
    future_start,
    send_until_acknowledged,
    siu_s12,
    start_serve,
    wait_for,
)

PER_PHASE = 30
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
               "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def restart_broker(broker_url: str) -> None:
    """Stop the broker, keep it down for a moment, start it again (the shared
    README's commands), and wait until it answers."""
    if broker_url.startswith("redis"):
        subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True, timeout=30)
        wait_for(lambda: not port_open(6379), 20, "redis down")
        time.sleep(1.0)
        subprocess.run(REDIS_START, check=True, capture_output=True, timeout=30)
        wait_for(lambda: port_open(6379), 30, "redis up again")
    else:
        subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, capture_output=True, timeout=120)
        time.sleep(1.0)
        subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, capture_output=True, timeout=120)
        subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=True, capture_output=True, timeout=120)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker_url", [AMQP_URL, REDIS_URL], ids=["rabbitmq", "redis"])
def test_broker_restarted_under_load_nothing_lost_nothing_sent_twice(tmp_path, pg_url, fake_twilio, queue_name, broker_url):
    fake_twilio.latency_s = 0.05
    # A short lease: work whose task the restart lost (Redis keeps nothing) is claimed again soon.
    env = adapter_env(tmp_path, pg_url, broker_url=broker_url, queue=queue_name, twilio=fake_twilio,
                      claim_batch_size=10, claim_lease_s=5, broker_visibility_timeout_s=5)
    http_port, mllp_port = free_port(), free_port()
    start = future_start()
    phases = [
        {f"R{p}M{i:03d}": siu_s12(f"R{p}M{i:03d}", 50000 + p * 1000 + i, start) for i in range(PER_PHASE)}
        for p in range(2)
    ]
    total = PER_PHASE * len(phases)
    server = start_serve(env, tmp_path, http_port, mllp_port, "--workers", "celery")
    worker = Process(["worker", "--concurrency", "2"], env, tmp_path / "worker.log")
    engine = make_engine(pg_url)
    sessions = make_sessionmaker(engine)

    def sent() -> int:
        return confirmations_sent(sessions)

    try:
        asyncio.run(send_until_acknowledged(phases[0], mllp_port, deadline=time.monotonic() + 60))
        restart_broker(broker_url)  # while the first phase may still be on its way
        asyncio.run(send_until_acknowledged(phases[1], mllp_port, deadline=time.monotonic() + 60))
        wait_for(lambda: sent() == total, 120, "every booking confirmation sent after the restart", interval=0.3)
        assert worker.popen.poll() is None, worker.output()
        assert server.popen.poll() is None, server.output()
        assert_each_processed_and_sent_once(sessions, fake_twilio, total)
    finally:
        worker.terminate()
        server.terminate()
        if not port_open(6379 if broker_url.startswith("redis") else 5672):  # never leave the broker down
            restart_broker(broker_url)
        delete_queue(broker_url, queue_name)
        engine.dispose()
