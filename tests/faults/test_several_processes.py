"""Several adapter processes on one PostgreSQL database, as production runs them
(README "Production deployment": ``serve`` instances behind a balancer, Celery
workers, each unit running ``migrate`` before it starts): what one process alone
never meets."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from adapter.auth import hash_token
from adapter.db import make_engine, make_sessionmaker, transaction
from adapter.migrate import upgrade
from adapter.models import ApiToken, InboundMessage, Patient
from hl7.client import MLLPConnection
from tests.faults.conftest import (
    AMQP_URL,
    ROOT,
    Process,
    adapter_env,
    confirmations_sent,
    delete_queue,
    free_port,
    future_start,
    seed_bookings,
    settings_from_env,
    siu_s12,
    start_serve,
    terminate_together,
    wait_for,
)


@pytest.mark.timeout(60)
def test_migrations_started_by_several_processes_at_once_all_succeed(tmp_path, pg_url):
    # systemd starts adapter-serve@1, @2 and the workers together, each with
    # ExecStartPre=... migrate: on a new database they all find it empty.
    env = adapter_env(tmp_path, pg_url)
    migrations = [subprocess.Popen([sys.executable, "-m", "adapter", "migrate"], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(4)]
    outputs = [process.communicate(timeout=50)[0].decode(errors="replace") for process in migrations]
    assert [process.returncode for process in migrations] == [0] * 4, outputs[-1][-2000:]


def registration(control_id: str, patient: int) -> bytes:
    """ADT^A04 registering patient ``patient`` (MRN and mobile number of their own)."""
    return ("\r".join([
        f"MSH|^~\\&|PAS|OSP_TEST|ADAPTER|NOTIFY|20260101000000||ADT^A04^ADT_A01|{control_id}|P|2.5||||||UNICODE UTF-8",
        "EVN|A04|20260101000000",
        f"PID|1||{patient:08d}^^^OSP_TEST^MR||D'Alò^Nicolò||19800101|M|||||^PRN^CP^^39^333^{patient:07d}||it",
        "PV1|1|O",
    ]) + "\r").encode()


@contextmanager
def two_servers(tmp_path: Path, pg_url: str, queue: str, **settings: object) -> Iterator[list[tuple[int, int]]]:
    """Two ``serve --workers celery`` on one database (as behind a balancer); their
    HTTP and MLLP ports. The admin token is in ``tmp_path / "admin-token"``."""
    env = adapter_env(tmp_path, pg_url, broker_url=AMQP_URL, queue=queue, **settings)
    upgrade(pg_url)  # the units' ExecStartPre (migrations run together: tested above)
    ports = [(free_port(), free_port()) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:  # side by side: each takes seconds to start
        servers = list(pool.map(lambda p: start_serve(env, tmp_path, *p, "--workers", "celery"), ports))
    try:
        for http_port, _ in ports:
            wait_for(lambda: _listening(http_port), 10, "HTTP")
        yield ports
    finally:
        terminate_together(*servers)
        delete_queue(AMQP_URL, queue)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


async def send_once(port: int, payload: bytes) -> bytes:
    conn = MLLPConnection("127.0.0.1", port, timeout=20.0)
    try:
        return await conn.send(payload)
    finally:
        await conn.close()


@pytest.mark.timeout(90)
def test_one_new_patient_sent_to_two_servers_at_once_is_registered_by_both_messages(tmp_path, pg_url, queue_name):
    # A sender whose connections a balancer spreads over two servers; it wants the
    # ACK after processing. Both messages name the same new patient at the same moment.
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    (config / "facilities.yaml").write_text("facilities:\n  default:\n    ack_timing: processed\n")
    patients = 12
    with two_servers(tmp_path, pg_url, queue_name, config_dir=config) as ((_, first), (_, second)):
        async def send_pairs() -> list[bytes]:
            acks = []
            for p in range(patients):
                acks += await asyncio.gather(send_once(first, registration(f"A{p}", 7000 + p)),
                                             send_once(second, registration(f"B{p}", 7000 + p)))
            return acks

        acks = asyncio.run(send_pairs())
    engine = make_engine(pg_url)
    with transaction(make_sessionmaker(engine)) as session:
        statuses = dict(session.execute(
            select(InboundMessage.status, func.count()).group_by(InboundMessage.status)).all())
        registered = session.scalar(select(func.count()).select_from(Patient))
    engine.dispose()
    refused = [ack.decode(errors="replace") for ack in acks if b"MSA|AA" not in ack]
    assert refused == []
    assert statuses == {"processed": 2 * patients}
    assert registered == patients


@pytest.mark.timeout(120)
def test_a_worker_started_before_a_key_rotation_still_sends_to_patients_registered_after_it(
        tmp_path, pg_url, fake_twilio, queue_name):
    env = adapter_env(tmp_path, pg_url, broker_url=AMQP_URL, queue=queue_name, twilio=fake_twilio)
    upgrade(pg_url)
    worker = Process(["worker", "--concurrency", "1"], env, tmp_path / "worker.log")  # starts meanwhile
    mllp_port, server = free_port(), None
    engine = make_engine(pg_url)
    sessions = make_sessionmaker(engine)
    start = future_start()
    try:
        server = start_serve(env, tmp_path, free_port(), mllp_port, "--workers", "celery")
        asyncio.run(send_once(mllp_port, siu_s12("ROT1", 8001, start)))
        wait_for(lambda: confirmations_sent(sessions) == 1, 40, "the first confirmation")
        rotated = subprocess.run([sys.executable, "-m", "adapter", "keys", "rotate", "--grace", "1"], cwd=ROOT,
                                 env=env, capture_output=True, text=True, timeout=60)
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        # A new patient: the server seals their contact under the new key (it takes the
        # key in the file before wrapping a data key, whatever its housekeeping has seen).
        asyncio.run(send_once(mllp_port, siu_s12("ROT2", 8002, start)))
        wait_for(lambda: confirmations_sent(sessions) == 2, 30, "the confirmation after the rotation")
        assert worker.popen.poll() is None, worker.output()
    finally:
        terminate_together(worker, server)
        delete_queue(AMQP_URL, queue_name)
        engine.dispose()


@pytest.mark.timeout(90)
def test_a_conditional_create_posted_to_two_servers_at_once_creates_one_resource(tmp_path, pg_url, queue_name):
    # An EHR that failed over mid-request: the same If-None-Exist create reaches both servers.
    patient = json.loads((ROOT / "tests/samples/fhir/patient.json").read_text())
    pairs = 8
    with two_servers(tmp_path, pg_url, queue_name) as ports:
        token = (tmp_path / "admin-token").read_text().strip()
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{http_port}/fhir/R4", timeout=30,
                                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
                   for http_port, _ in ports]
        answers, afterwards = [], []
        for i in range(pairs):
            mrn = f"MRN-TWICE-{i}"
            body = json.dumps({**patient, "identifier": [{"system": "https://hospital.example.org/mrn", "value": mrn}]})
            condition = {"If-None-Exist": f"identifier=https://hospital.example.org/mrn|{mrn}"}
            together = threading.Barrier(2)

            def post(client: httpx.Client, body: str = body, condition: dict = condition,
                     together: threading.Barrier = together) -> int:
                together.wait()
                return client.post("/Patient", content=body, headers=condition).status_code

            with ThreadPoolExecutor(2) as pool:
                answers.append(sorted(pool.map(post, clients)))
            afterwards.append(clients[0].post("/Patient", content=body, headers=condition).status_code)
        for client in clients:
            client.close()
    assert answers == [[200, 201]] * pairs  # one created it, the other found it
    assert afterwards == [200] * pairs  # one match, not a 412 for two


@pytest.mark.timeout(150)
def test_production_signs_audit_tree_heads_only_with_a_provisioned_key_every_host_shares(tmp_path, pg_url):
    # Two hosts, each with its own var/: had each made a signing key of its own, the
    # heads one signed were 'bad signature' to the other's audit verify (exit 1).
    upgrade(pg_url)

    def on_host(host: str, *args: str, **settings: object) -> subprocess.CompletedProcess[str]:
        env = adapter_env(tmp_path, pg_url, environment="production", var_dir=tmp_path / host,
                          sandbox_webhook_secret="s" * 32, **settings)
        env.pop("ADAPTER_AUDIT_SIGNING_KEY_FILE", None)
        env.update({f"ADAPTER_{k.upper()}": str(v) for k, v in settings.items()})
        return subprocess.run([sys.executable, "-m", "adapter", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)

    with ThreadPoolExecutor(2) as pool:  # two processes side by side: each takes seconds to start
        without_key = pool.submit(on_host, "a", "audit", "sign")
        missing_key = pool.submit(on_host, "b", "audit", "sign", audit_signing_key_file=tmp_path / "nowhere.key")
        refused, refused_too = without_key.result(), missing_key.result()
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "ADAPTER_AUDIT_SIGNING_KEY_FILE" in refused.stderr
    assert not list((tmp_path / "a").glob("*signing*"))
    assert refused_too.returncode == 2 and "ADAPTER_AUDIT_SIGNING_KEY_FILE" in refused_too.stderr
    shared = tmp_path / "audit.key"
    shared.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    # a signs; b verifies that (an audited read: one more entry) and signs over it; a verifies both.
    for host, command in (("a", "sign"), ("b", "verify"), ("b", "sign"), ("a", "verify")):
        done = on_host(host, "audit", command, audit_signing_key_file=shared)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(90)
def test_two_servers_started_at_once_on_a_new_database_make_one_admin_token(tmp_path, pg_url):
    # Two hosts' units start together on a new database: each looked for a token, found
    # none, and made an admin token of its own. The test holds both at the insert (a
    # lock on the table that lets reads through) until both have looked.
    from compliance.crypto import LocalMasterKey

    keys = {"master_key": LocalMasterKey.generate()}  # the same keys on both hosts, made beforehand
    (tmp_path / "audit.key").write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    upgrade(pg_url)  # each unit's ExecStartPre
    database, libpq_url = make_url(pg_url).database, pg_url.replace("postgresql+psycopg://", "postgresql://")
    hosts = [tmp_path / "a", tmp_path / "b"]
    ports = [free_port() for _ in hosts]
    servers: list[Process] = []
    with psycopg.connect(libpq_url) as gate, psycopg.connect(libpq_url, autocommit=True) as watch:
        gate.execute("LOCK TABLE api_token IN SHARE MODE")  # until gate.commit(): reads pass, inserts wait
        try:
            for host, http_port in zip(hosts, ports, strict=True):
                servers.append(Process(["serve", "--http-port", str(http_port), "--mllp-port", str(free_port())],
                                       adapter_env(tmp_path, pg_url, var_dir=host, **keys), host.with_suffix(".log")))

            def both_at_the_token() -> bool:
                for server in servers:
                    assert server.popen.poll() is None, server.output()
                waiting = [query for (query,) in watch.execute(
                    "SELECT query FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", (database,))]
                # Both inserting a token, or (once they take turns) one inserting and one waiting its turn.
                return len(waiting) == 2 and any("INSERT INTO api_token" in query for query in waiting)

            wait_for(both_at_the_token, 60, "both servers to reach the first admin token")
            gate.commit()
            for server, http_port in zip(servers, ports, strict=True):
                wait_for(lambda: _listening(http_port), 30, "HTTP")
                assert server.popen.poll() is None, server.output()
        finally:
            for server in servers:
                server.terminate()

    engine = make_engine(pg_url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            stored = session.scalars(select(ApiToken.token_hash).where(ApiToken.role == "admin")).all()
    finally:
        engine.dispose()
    shown = [host / "admin-token" for host in hosts if (host / "admin-token").exists()]
    assert len(stored) == 1, f"{len(stored)} admin tokens"
    assert len(shown) == 1 and hash_token(shown[0].read_text().strip()) == stored[0]


@pytest.mark.timeout(90)
def test_a_worker_started_first_on_a_new_database_prepares_it_and_waits_for_work(tmp_path, pg_url):
    """Hosts come up in any order: a worker that starts before any `serve` (which
    migrates) used to stop with a traceback, exit 1, on the missing tables."""
    queue = f"adapter-test-{os.getpid()}-first-worker"
    env = adapter_env(tmp_path, pg_url, broker_url=AMQP_URL, queue=queue)
    worker = Process(["worker", "--concurrency", "1"], env, tmp_path / "worker.log")
    try:
        engine = make_engine(pg_url)

        def migrated() -> bool:
            assert worker.popen.poll() is None, worker.output()
            with engine.connect() as conn:
                return conn.exec_driver_sql("SELECT to_regclass('public.notification')").scalar() is not None

        wait_for(migrated, 60, "the worker to create the schema")
        seed_bookings(settings_from_env(env), 3)  # then bookings arrive: the worker sends them
        wait_for(lambda: confirmations_sent(make_sessionmaker(engine)) == 3, 60, "the worker to send")
        assert worker.popen.poll() is None, worker.output()
        engine.dispose()
    finally:
        worker.terminate()
        delete_queue(AMQP_URL, queue)
    assert "Traceback" not in worker.output()
