"""``make bench``: the scheduler's cost grows with what is due, not with what is
stored. Claiming and sending 10,000 due notifications with 10,000 stored, then with
1,000,000 stored (990,000 pending in the future); the target is a ratio of at most
1.5. Also the ``serve`` process's memory (RSS) with 10,000 and with 1,000,000 pending.

How it is run: a fresh PostgreSQL database per case on 127.0.0.1; 100 patients made
through the HL7 intake; the notification rows copied in with ``COPY``; the in-process
dispatcher (``Dispatcher.run_once`` in a loop, the production claim) against a
channel that accepts at once, so that the figure is the scheduler and the
dispatcher's own database work, not a provider's latency.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import psycopg

from tests.harness import fresh_pg_database

ROOT = Path(__file__).resolve().parent.parent
DUE = int(os.environ.get("BENCH_DUE", "10000"))
STORED_LARGE = int(os.environ.get("BENCH_STORED", "1000000"))
PATIENTS = 100


def bench_settings(database_url: str, var_dir: Path, **overrides):  # noqa: ANN001, ANN201
    from adapter.settings import Settings

    from datetime import time

    return Settings(
        environment="test", database_url=database_url, var_dir=var_dir,
        master_key_file=var_dir / "master.key", audit_signing_key_file=var_dir / "audit.key",
        channels=["sms"], claim_batch_size=100,
        # Benches run at any hour: the sending window (08:00-21:00 by default) is open.
        **{"sending_window_start": time(0, 0), "sending_window_end": time(0, 0), "send_on_holidays": True,
           **overrides},
    )


def seed_patients(settings, count: int = PATIENTS) -> list[tuple[str, str]]:  # noqa: ANN001
    """``count`` patients with a mobile number, through the HL7 intake; their own
    notifications are ended so that only the copied rows are due."""
    from adapter.bootstrap import build
    from adapter.db import transaction
    from adapter.migrate import upgrade
    from adapter.models import Appointment, Notification
    from sqlalchemy import select, update

    sys.path.insert(0, str(ROOT))
    from tests.faults.conftest import siu_s12

    upgrade(settings.database_url)
    container = build(settings, channels={})
    start = (datetime.now(UTC) + timedelta(days=30)).replace(second=0, microsecond=0)

    async def feed() -> None:
        for i in range(count):
            await container.intake.handle(siu_s12(f"B{i}", 50000 + i, start))

    asyncio.run(feed())
    container.intake.process_pending()
    with transaction(container.sessions) as session:
        session.execute(update(Notification).values(status="cancelled", reason="bench set-up"))
        pairs = [tuple(row) for row in session.execute(select(Appointment.patient_id, Appointment.ref))]
    container.engine.dispose()
    return pairs


def copy_notifications(database_url: str, patients: list[tuple[str, str]], *, due: int, future: int, prefix: str = "") -> None:
    """``due`` rows scheduled a minute ago and ``future`` rows in the next year,
    with COPY (hundreds of thousands of rows a second)."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    now = datetime.now(UTC).replace(tzinfo=None)
    columns = ("patient_id, kind, rule_id, subject_ref, scheduled_for, status, urgent, tried_channels, "
               "idempotency_key, attempts, status_at, created_at, decision")
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY notification ({columns}) FROM STDIN") as copy:
            for i in range(due + future):
                when = now - timedelta(minutes=1) if i < due else now + timedelta(days=1, seconds=i % 31_000_000)
                patient_id, appointment_ref = patients[i % len(patients)]
                copy.write_row((patient_id, "booking_confirmation", "booking-confirmation", appointment_ref,
                                when, "scheduled", False, "[]", f"{prefix}bench-{i}", 0, now, now, "{}"))
        conn.commit()
        conn.execute("ANALYZE notification")


class InstantChannel:
    """Accepts every message at once (the provider is not what is measured)."""

    name: ClassVar[str] = "sms"

    async def send(self, message):  # noqa: ANN001, ANN201
        from channels.base import SendResult

        return SendResult.ok(f"instant-{message.idempotency_key}")


def claim_and_send(settings) -> tuple[float, int]:  # noqa: ANN001
    """Seconds to claim and send everything due, in-process; and how many."""
    from adapter.bootstrap import build

    container = build(settings, channels={"sms": InstantChannel()})

    async def drain() -> int:
        total = 0
        while sent := await container.dispatcher.run_once():
            total += sent
        return total

    began = time.perf_counter()
    sent = asyncio.run(drain())
    elapsed = time.perf_counter() - began
    container.engine.dispose()
    return elapsed, sent


def serve_rss_mb(database_url: str, var_dir: Path) -> float:
    """RSS of ``python -m adapter serve --workers celery`` once it answers
    ``/health/ready`` and ``/metrics`` (which counts due and overdue notifications)."""
    import httpx

    sys.path.insert(0, str(ROOT))
    from bench.common import free_port

    http_port, mllp_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.update(ADAPTER_ENVIRONMENT="test", ADAPTER_DATABASE_URL=database_url, ADAPTER_VAR_DIR=str(var_dir),
               ADAPTER_MASTER_KEY_FILE=str(var_dir / "master.key"),
               ADAPTER_AUDIT_SIGNING_KEY_FILE=str(var_dir / "audit.key"), ADAPTER_LOG_LEVEL="WARNING",
               PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "adapter", "serve", "--http-port", str(http_port),
                             "--mllp-port", str(mllp_port), "--workers", "celery"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        token = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        token = (var_dir / "admin-token").read_text().strip() if (var_dir / "admin-token").exists() else ""
        httpx.get(f"http://127.0.0.1:{http_port}/health/ready", timeout=60)
        httpx.get(f"http://127.0.0.1:{http_port}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=120)
        httpx.get(f"http://127.0.0.1:{http_port}/api/notifications", params={"limit": 100},
                  headers={"Authorization": f"Bearer {token}"}, timeout=120)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return kb / 1024
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def case(stored: int) -> tuple[float, int, float]:
    with fresh_pg_database("adapter_bench") as url, tempfile.TemporaryDirectory() as tmp:
        var_dir = Path(tmp)
        settings = bench_settings(url, var_dir)
        patients = seed_patients(settings)
        began = time.perf_counter()
        copy_notifications(url, patients, due=DUE, future=stored - DUE)
        print(f"  {stored:>9,} stored: rows copied in {time.perf_counter() - began:.1f} s", flush=True)
        rss = serve_rss_mb(url, var_dir)
        elapsed, sent = claim_and_send(settings)
        print(f"  {stored:>9,} stored: {sent:,} due claimed and sent in {elapsed:.1f} s "
              f"({sent / elapsed:,.0f}/s); serve RSS {rss:.0f} MB", flush=True)
        return elapsed, sent, rss


def main() -> None:
    print(f"\n== scheduler: claim and send {DUE:,} due with {DUE:,} vs {STORED_LARGE:,} stored "
          "(PostgreSQL, in-process dispatcher, instant channel)", flush=True)
    small_s, small_n, small_rss = case(DUE)
    large_s, large_n, large_rss = case(STORED_LARGE)
    print(json.dumps({
        "due": DUE, "stored_small": DUE, "stored_large": STORED_LARGE,
        "seconds_small": round(small_s, 2), "seconds_large": round(large_s, 2),
        "ratio_large_over_small": round(large_s / small_s, 2), "target_ratio_at_most": 1.5,
        "serve_rss_mb_small": round(small_rss), "serve_rss_mb_large": round(large_rss),
        "rss_ratio": round(large_rss / small_rss, 2),
    }))
    print(f"  ratio ({STORED_LARGE:,} stored / {DUE:,} stored): {large_s / small_s:.2f} (target <= 1.5); "
          f"serve RSS ratio {large_rss / small_rss:.2f}", flush=True)


if __name__ == "__main__":
    main()
