"""Issue 8: SIGKILL a Celery worker in the middle of dispatch. Every notification
reaches the (slow) fake provider exactly once, counted by idempotency key, on
RabbitMQ and on Redis.

The two brokers give the dead worker's tasks back differently. RabbitMQ does at once,
when the connection drops: a second worker gets them within their claims' lease and
sends them. Redis does after ``broker_visibility_timeout_s``, which the settings
require to be longer than the claim lease: the task comes back stale and sends
nothing, and the notifications go out through a new claim once the lease ran out."""

from __future__ import annotations

import json
import time

import pytest
import redis
from sqlalchemy import func, select

from adapter.db import make_engine, make_sessionmaker, transaction
from adapter.models import Notification
from tests.faults.conftest import (
    AMQP_URL,
    REDIS_URL,
    Process,
    adapter_env,
    delete_queue,
    seed_bookings,
    settings_from_env,
    wait_for,
)

PATIENTS = 120
# Per broker: the claim lease, and what else the test sets for it.
LEASES = {
    AMQP_URL: {"claim_lease_s": 20},
    REDIS_URL: {"claim_lease_s": 4, "broker_visibility_timeout_s": 8},
}


def statuses(sessions) -> dict[str, int]:  # noqa: ANN001
    with transaction(sessions) as session:
        rows = session.execute(
            select(Notification.status, func.count()).where(Notification.kind == "booking_confirmation")
            .group_by(Notification.status)
        )
        return dict(rows.all())


def tasks_held_by_redis(queue: str) -> int:
    """Tasks of ``queue`` that Redis holds: waiting, or delivered and not acknowledged
    (kombu's ``unacked`` hash: message, exchange, routing key)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        unacked = sum(json.loads(raw)[2] == queue for raw in client.hvals("unacked"))
        return unacked + client.llen(queue)
    finally:
        client.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("broker_url", [AMQP_URL, REDIS_URL], ids=["rabbitmq", "redis"])
def test_sigkill_worker_mid_dispatch_delivers_every_notification_exactly_once(
    tmp_path, pg_url, fake_twilio, queue_name, broker_url
):
    env = adapter_env(
        tmp_path, pg_url, broker_url=broker_url, queue=queue_name, twilio=fake_twilio,
        claim_batch_size=5, **LEASES[broker_url],
    )
    settings = settings_from_env(env)
    seed_bookings(settings, PATIENTS)
    engine = make_engine(pg_url)
    sessions = make_sessionmaker(engine)
    assert statuses(sessions) == {"scheduled": PATIENTS}
    with transaction(sessions) as session:
        keys = set(session.scalars(select(Notification.idempotency_key).where(Notification.kind == "booking_confirmation")))

    victim = Process(["worker", "--concurrency", "2"], env, tmp_path / "worker-1.log")
    survivor = None
    try:
        # Kill it while it is sending: some delivered, most not yet.
        wait_for(lambda: len(fake_twilio.deliveries) >= 15 or victim.popen.poll() is not None, 40, "first deliveries")
        assert victim.popen.poll() is None, victim.output()
        victim.kill()
        killed_at = time.monotonic()
        in_flight = statuses(sessions).get("claimed", 0)
        assert len(fake_twilio.deliveries) < PATIENTS
        assert in_flight > 0  # claimed, some of them on the wire, when it died

        if broker_url == REDIS_URL:
            # The dead worker's tasks are still Redis' "unacknowledged"; once the visibility
            # timeout has passed, the next worker's start-up puts them back in the queue.
            assert tasks_held_by_redis(queue_name) > 0
            time.sleep(max(0.0, killed_at + settings.broker_visibility_timeout_s + 1 - time.monotonic()))
        survivor = Process(["worker", "--concurrency", "2"], env, tmp_path / "worker-2.log")
        wait_for(lambda: statuses(sessions) == {"sent": PATIENTS}, 60,
                 f"every notification sent after the kill ({in_flight} were claimed)", interval=0.3)
        if broker_url == REDIS_URL:  # the redelivered tasks ran (and sent nothing twice)
            wait_for(lambda: tasks_held_by_redis(queue_name) == 0, 30, "the dead worker's tasks to be redelivered")
    finally:
        for proc in (victim, survivor):
            if proc is not None:
                proc.terminate()
        delete_queue(broker_url, queue_name)
        engine.dispose()

    assert set(fake_twilio.deliveries) == keys
    assert max(fake_twilio.deliveries.values()) == 1, fake_twilio.deliveries.most_common(3)
