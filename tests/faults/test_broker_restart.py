"""Issue 8: the broker itself is restarted (RabbitMQ's application stopped and started;
Redis shut down and started again, losing everything it held) while a
``serve --workers celery`` process and a worker run. They recover by themselves:
every message sent before, during and after is acknowledged only when stored,
processed, and its notification reaches the fake provider exactly once.

This disturbs the machine's shared broker for a few seconds, so it runs in the one
pytest process of ``make test`` and restores the broker before it ends."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from tests.faults.conftest import (
    celery_cluster,
    AMQP_URL,
    REDIS_URL,
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
    # A short lease: work whose task the restart lost (Redis keeps nothing) is claimed again soon.
    try:
        with celery_cluster(tmp_path, pg_url, broker_url, queue_name, fake_twilio, claim_lease_s=5) as cluster:
            phases = cluster.bookings("R", 2, PER_PHASE, 50000)
            cluster.send(phases[0])
            restart_broker(broker_url)  # while the first phase may still be on its way
            cluster.send(phases[1])
            total = 2 * PER_PHASE
            wait_for(lambda: cluster.sent() == total, 120, "every booking confirmation sent after the restart", interval=0.3)
            cluster.check(total)
    finally:
        if not port_open(6379 if broker_url.startswith("redis") else 5672):  # never leave the broker down
            restart_broker(broker_url)
