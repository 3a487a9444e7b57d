"""Fault tests: real PostgreSQL, RabbitMQ and Redis on 127.0.0.1, real adapter
processes (``python -m adapter serve`` / ``worker``) killed with SIGKILL. Each test
has its own database (``pg_url``) and its own queue name, so runs never collide.
The services must be running (shared/README.md says how to start them): no skip."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from channels.fakes import FakeTwilio
from tests.harness import adapter_env_vars

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_URL = "redis://127.0.0.1:6379/0"
TWILIO_SID = "AC" + "0" * 32
TWILIO_TOKEN = "fake-twilio-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def siu_s12(control_id: str, patient: int, start: datetime) -> bytes:
    """A booking for patient ``patient`` (own MRN and mobile number)."""
    ts = start.strftime("%Y%m%d%H%M%S+0000")
    return ("\r".join([
        f"MSH|^~\\&|CUP|OSP_TEST|ADAPTER|NOTIFY|20260101000000||SIU^S12^SIU_S12|{control_id}|P|2.5||||||UNICODE UTF-8",
        f"SCH|PL{patient}^CUP|FL{patient}^OSP_TEST|||||VIS^Visita||30|min|^^^{ts}|||||||||||||Booked",
        f"PID|1||{patient:08d}^^^OSP_TEST^MR||D'Alò^Nicolò||19800101|M|||||^PRN^CP^^39^333^{patient:07d}||it",
        f"AIS|1||CARD01^Visita^L|{ts}|0|min|30|min",
    ]) + "\r").encode()


def future_start() -> datetime:
    return (datetime.now(UTC) + timedelta(days=3)).replace(second=0, microsecond=0)


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN, latency_s=0.2) as fake:
        yield fake


@pytest.fixture
def queue_name() -> Iterator[str]:
    yield f"adapter-test-{uuid.uuid4().hex[:12]}"


def delete_queue(broker_url: str, queue: str) -> None:
    try:
        with Connection(broker_url, connect_timeout=5) as conn:
            conn.default_channel.queue_delete(queue)
    except Exception:  # noqa: BLE001 - best effort clean-up
        pass


def adapter_env(tmp_path: Path, database_url: str, *, broker_url: str = "", queue: str = "",
                twilio: FakeTwilio | None = None, **extra: object) -> dict[str, str]:
    """Environment for ``python -m adapter ...`` subprocesses of one test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.update({
        "PYTHONPATH": str(ROOT),
        **adapter_env_vars(tmp_path, database_url),
        "ADAPTER_WORKER_POLL_INTERVAL_S": "0.05",
        "ADAPTER_LOG_LEVEL": "WARNING",
    })
    if broker_url:
        env["ADAPTER_BROKER_URL"] = broker_url
        env["ADAPTER_CELERY_QUEUE"] = queue
    if twilio is not None:
        env.update({
            "ADAPTER_CHANNELS": "sms",
            "ADAPTER_TWILIO_API_BASE": twilio.base_url,
            "ADAPTER_TWILIO_ACCOUNT_SID": TWILIO_SID,
            "ADAPTER_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "ADAPTER_TWILIO_FROM": "+15005550006",
        })
    env.update({f"ADAPTER_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def settings_from_env(env: dict[str, str]):  # noqa: ANN201
    """The same settings as the subprocesses, for checks from the test process."""
    from adapter.settings import Settings

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Process:
    """A ``python -m adapter`` subprocess in its own process group (SIGKILL takes
    the whole tree: a Celery worker and its pool)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "adapter", *args], cwd=ROOT, env=env,
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def terminate_together(*processes: Process | None) -> None:
    """SIGTERM every process first, then wait for each: they shut down side by side,
    not one after the other."""
    running = [proc for proc in processes if proc is not None]
    for proc in running:
        if proc.popen.poll() is None:
            os.killpg(proc.popen.pid, signal.SIGTERM)
    for proc in running:
        proc.terminate()


def start_serve(env: dict[str, str], tmp_path: Path, http_port: int, mllp_port: int, *extra: str) -> Process:
    proc = Process(["serve", "--http-port", str(http_port), "--mllp-port", str(mllp_port), *extra],
                   env, tmp_path / f"serve-{mllp_port}.log")

    def listening() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"serve exited: {proc.output()}")
        try:
            socket.create_connection(("127.0.0.1", mllp_port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(listening, 30, "serve to listen")
    return proc


def seed_bookings(settings, count: int) -> None:  # noqa: ANN001
    """``count`` patients, each with one booking: one confirmation due now each."""
    from adapter.bootstrap import build
    from adapter.migrate import upgrade

    upgrade(settings.database_url)
    container = build(settings, channels={})
    start = future_start()

    async def feed() -> None:
        for i in range(count):
            ack = await container.intake.handle(siu_s12(f"SEED{i}", 1000 + i, start))
            assert b"MSA|AA" in ack, ack

    asyncio.run(feed())
    container.intake.process_pending()
    container.engine.dispose()


def broker_connections_of(proc: Process, broker_port: int) -> list[int]:
    """Local ports of the TCP connections that ``proc``'s process group holds to
    the broker on 127.0.0.1:``broker_port``."""
    import re

    pids = subprocess.run(["ps", "-o", "pid=", "-g", str(proc.popen.pid)], capture_output=True, text=True).stdout.split()
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"dport = :{broker_port}"],
                         capture_output=True, text=True, check=True).stdout
    ports = []
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            match = re.search(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:%d" % broker_port, line)
            if match:
                ports.append(int(match.group(1)))
    return ports


def drop_broker_connections(proc: Process, broker_url: str) -> int:
    """Cut ``proc``'s broker connections from the broker side (as a broker restart
    does), without touching anyone else's."""
    if broker_url.startswith("redis"):
        import redis

        ports = broker_connections_of(proc, 6379)
        client = redis.Redis.from_url(broker_url)
        killed = 0
        for port in ports:
            try:
                client.client_kill(f"127.0.0.1:{port}")
                killed += 1
            except redis.exceptions.ResponseError:  # that connection closed on its own meanwhile
                pass
        client.close()
        return killed
    ports = broker_connections_of(proc, 5672)
    listing = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "peer_port"],
                             capture_output=True, text=True, check=True).stdout
    pids = [parts[0] for parts in map(str.split, listing.splitlines())
            if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) in ports]
    # Side by side: each rabbitmqctl starts an Erlang VM (about 1.5 s).
    closing = [subprocess.Popen(["rabbitmqctl", "-q", "close_connection", pid, "fault test"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for pid in pids]
    for closer in closing:
        _, error = closer.communicate(timeout=60)
        assert closer.returncode == 0, error.decode(errors="replace")
    return len(closing)


async def send_until_acknowledged(payloads: dict[str, bytes], port: int, *, connections: int = 8,
                                  deadline: float, on_ack=None) -> dict[str, int]:  # noqa: ANN001
    """Senders as integration engines behave: each connection sends its slice in
    order; a message without an AA (dropped connection, refused connect, time-out,
    AE "could not be stored") is sent again until it gets one. Returns the
    number of attempts per control id."""
    from hl7.client import MLLPClientError, MLLPConnection, read_ack_code

    attempts: dict[str, int] = {}
    items = list(payloads.items())

    async def sender(slice_: list[tuple[str, bytes]]) -> None:
        conn = MLLPConnection("127.0.0.1", port, timeout=10.0)
        try:
            for control_id, payload in slice_:
                while True:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{control_id} never acknowledged")
                    attempts[control_id] = attempts.get(control_id, 0) + 1
                    try:
                        ack = await conn.send(payload)
                    except (OSError, asyncio.TimeoutError, MLLPClientError):
                        await conn.close()
                        await asyncio.sleep(0.1)
                        continue
                    code, acked_id = read_ack_code(ack)
                    assert acked_id == control_id
                    if code is not None and code.value == "AA":
                        if on_ack is not None:
                            on_ack(control_id)
                        break
                    await asyncio.sleep(0.1)
        finally:
            await conn.close()

    await asyncio.gather(*(sender(items[i::connections]) for i in range(connections)))
    return attempts


def confirmations_sent(sessions) -> int:  # noqa: ANN001 - a sessionmaker
    """How many booking confirmations have reached ``sent``."""
    from sqlalchemy import func, select

    from adapter.db import transaction
    from adapter.models import Notification

    with transaction(sessions) as session:
        return session.scalar(select(func.count()).where(
            Notification.kind == "booking_confirmation", Notification.status == "sent"))


def assert_each_processed_and_sent_once(sessions, fake_twilio: FakeTwilio, total: int) -> None:  # noqa: ANN001
    """Every inbound message processed, one confirmation each, each delivered once."""
    from sqlalchemy import func, select

    from adapter.db import transaction
    from adapter.models import InboundMessage, Notification

    with transaction(sessions) as session:
        inbound = dict(session.execute(
            select(InboundMessage.status, func.count()).group_by(InboundMessage.status)).all())
        keys = set(session.scalars(select(Notification.idempotency_key).where(
            Notification.kind == "booking_confirmation")))
    assert inbound == {"processed": total}
    assert len(keys) == total and set(fake_twilio.deliveries) == keys
    assert max(fake_twilio.deliveries.values()) == 1


@dataclass
class CeleryCluster:
    """One ``serve --workers celery`` and one Celery worker on a fresh PostgreSQL
    database and a per-test queue, sending SMS to a fake Twilio. Claims have a short
    lease (5 s unless the test says otherwise), so work whose task a fault lost is
    claimed again soon; Redis' visibility timeout is twice that, as it must be longer."""

    server: Process
    worker: Process
    mllp_port: int
    sessions: Any
    fake_twilio: FakeTwilio

    def bookings(self, prefix: str, phases: int, per_phase: int, first_patient: int) -> list[dict[str, bytes]]:
        """``phases`` batches of SIU^S12 bookings, one new patient each, control ids ``<prefix><p>M<i>``."""
        start = future_start()
        return [
            {f"{prefix}{p}M{i:03d}": siu_s12(f"{prefix}{p}M{i:03d}", first_patient + p * 1000 + i, start)
             for i in range(per_phase)}
            for p in range(phases)
        ]

    def send(self, payloads: dict[str, bytes]) -> None:
        asyncio.run(send_until_acknowledged(payloads, self.mllp_port, deadline=time.monotonic() + 60))

    def sent(self) -> int:
        return confirmations_sent(self.sessions)

    def check(self, total: int) -> None:
        """Both processes survived, and every message was processed and confirmed once."""
        assert self.worker.popen.poll() is None, self.worker.output()
        assert self.server.popen.poll() is None, self.server.output()
        assert_each_processed_and_sent_once(self.sessions, self.fake_twilio, total)


@contextmanager
def celery_cluster(tmp_path: Path, pg_url: str, broker_url: str, queue: str, fake_twilio: FakeTwilio,
                   claim_lease_s: float = 5, **settings: object) -> Iterator[CeleryCluster]:
    fake_twilio.latency_s = 0.05
    from adapter.db import make_engine, make_sessionmaker
    from adapter.migrate import upgrade

    env = adapter_env(tmp_path, pg_url, broker_url=broker_url, queue=queue, twilio=fake_twilio, claim_batch_size=10,
                      claim_lease_s=claim_lease_s, broker_visibility_timeout_s=2 * claim_lease_s, **settings)
    http_port, mllp_port = free_port(), free_port()
    # Migrated first (each unit's ExecStartPre); then serve and the worker start side by
    # side, as systemd starts them, each taking seconds to import and connect.
    upgrade(pg_url)
    worker = Process(["worker", "--concurrency", "2"], env, tmp_path / "worker.log")
    server = None
    engine = make_engine(pg_url)
    try:
        server = start_serve(env, tmp_path, http_port, mllp_port, "--workers", "celery")
        yield CeleryCluster(server, worker, mllp_port, make_sessionmaker(engine), fake_twilio)
    finally:
        terminate_together(worker, server)
        delete_queue(broker_url, queue)
        engine.dispose()
