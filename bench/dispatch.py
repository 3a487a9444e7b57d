"""``make bench``: dispatch throughput with 1 and with 2 Celery workers
(``python -m adapter worker --concurrency 1`` each, RabbitMQ, PostgreSQL) against the
fake Twilio with 50 ms of latency per request; printed as a ratio.

How it is run: a fresh PostgreSQL database per case; 100 patients made through the
HL7 intake; ``BENCH_DISPATCH`` notifications (default 1,000) copied in, scheduled in
the future; the workers are started and idle; then every notification is made due
in one UPDATE and the clock runs until the last one is ``sent``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from kombu import Connection

from bench.scheduler import ROOT, bench_settings, copy_notifications, seed_patients
from tests.harness import fresh_pg_database
from channels.fakes import FakeTwilio

COUNT = int(os.environ.get("BENCH_DISPATCH", "1000"))
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
SID, TOKEN = "AC" + "0" * 32, "fake-twilio-token"


def run_case(workers: int, fake: FakeTwilio) -> float:
    """Notifications sent per second by ``workers`` workers."""
    queue = f"adapter-bench-{uuid.uuid4().hex[:8]}"
    with fresh_pg_database("adapter_bench") as url, tempfile.TemporaryDirectory() as tmp:
        var_dir = Path(tmp)
        patients = seed_patients(bench_settings(url, var_dir))
        copy_notifications(url, patients, due=0, future=COUNT, prefix=queue)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
        env.update(
            PYTHONPATH=str(ROOT), ADAPTER_ENVIRONMENT="test", ADAPTER_DATABASE_URL=url, ADAPTER_VAR_DIR=str(var_dir),
            ADAPTER_MASTER_KEY_FILE=str(var_dir / "master.key"), ADAPTER_AUDIT_SIGNING_KEY_FILE=str(var_dir / "audit.key"),
            ADAPTER_BROKER_URL=BROKER, ADAPTER_CELERY_QUEUE=queue, ADAPTER_LOG_LEVEL="WARNING",
            ADAPTER_WORKER_POLL_INTERVAL_S="0.05", ADAPTER_CHANNELS="sms", ADAPTER_TWILIO_API_BASE=fake.base_url,
            ADAPTER_TWILIO_ACCOUNT_SID=SID, ADAPTER_TWILIO_AUTH_TOKEN=TOKEN, ADAPTER_TWILIO_FROM="+15005550006",
            # Benches run at any hour: the sending window (08:00-21:00 by default) is open.
            ADAPTER_SENDING_WINDOW_START="00:00", ADAPTER_SENDING_WINDOW_END="00:00", ADAPTER_SEND_ON_HOLIDAYS="true",
        )
        procs = [
            subprocess.Popen([sys.executable, "-m", "adapter", "worker", "--concurrency", "1"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            for _ in range(workers)
        ]
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        try:
            time.sleep(6)  # workers up and idle
            with psycopg.connect(plain, autocommit=True) as conn:
                began = time.perf_counter()
                conn.execute("UPDATE notification SET scheduled_for = now() AT TIME ZONE 'UTC' - interval '1 minute' "
                             "WHERE status = 'scheduled'")
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    sent = conn.execute("SELECT count(*) FROM notification WHERE status = 'sent'").fetchone()[0]
                    if sent >= COUNT:
                        break
                    time.sleep(0.1)
                elapsed = time.perf_counter() - began
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            with Connection(BROKER) as conn:
                conn.default_channel.queue_delete(queue)
    rate = sent / elapsed
    print(f"  {workers} worker(s): {sent:,} sent in {elapsed:.1f} s = {rate:,.0f}/s", flush=True)
    return rate


def main() -> None:
    print(f"\n== dispatch: {COUNT:,} notifications, Celery workers on RabbitMQ + PostgreSQL, "
          "fake Twilio with 50 ms latency", flush=True)
    with FakeTwilio(account_sid=SID, auth_token=TOKEN, latency_s=0.05) as fake:
        one = run_case(1, fake)
        two = run_case(2, fake)
        duplicates = sum(1 for n in fake.deliveries.values() if n > 1)
    print(f"  ratio 2 workers / 1 worker: {two / one:.2f}; deliveries counted twice at the provider: {duplicates}",
          flush=True)


if __name__ == "__main__":
    main()
