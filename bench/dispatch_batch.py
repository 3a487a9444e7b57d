"""``make bench``: dispatch throughput against a fake provider with 50 ms of latency,
in process: the Dispatcher as configured (concurrent sends within each claimed batch)
against the same Dispatcher with ``concurrency=1`` (the same messages sent one by one);
printed as a ratio. No assertions.

How it is run: per case, a fresh SQLite database in a temporary directory; patients
with a mobile number booked through the real pipeline, so one booking confirmation
each is due at once; the real TwilioChannel against :class:`FakeTwilio`
(``latency_s=0.05``, no faults) started in this process; ``Dispatcher.run_once`` in a
loop until nothing is due. Only the dispatch is timed. One by one costs at least
50 ms a message, so that case sends fewer messages (``BENCH_DISPATCH_ONE_BY_ONE``)
and the ratio is of rates.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from channels.fakes import FakeTwilio

CONCURRENT = int(os.environ.get("BENCH_DISPATCH_BATCH", "1000"))
ONE_BY_ONE = int(os.environ.get("BENCH_DISPATCH_ONE_BY_ONE", "100"))
LATENCY_S = 0.05
SID, TOKEN, FROM = "AC" + "0" * 32, "fake-twilio-token", "+390200000000"


def book(container, count: int) -> None:  # noqa: ANN001
    from adapter import events as ev
    from adapter.db import transaction

    now = container.clock.now()
    start = now + timedelta(days=30)
    for first in range(0, count, 200):
        events = [
            ev.AppointmentBooked(
                origin=ev.Origin("api", "bench", f"B{i}"), occurred_at=now,
                patient=ev.PatientDetails(
                    key=ev.Identifier("urn:oid:bench", f"MRN{i}", "MR"), given_name="Nicolò",
                    family_name=f"Rossi{i}", language="it",
                    telecom=(ev.ContactPoint("phone", f"+39333{i:07d}", "mobile", 1),),
                ),
                appointment=ev.Appointment(ref=f"bench/A{i}", start=start, location="Ambulatorio 1"),
            )
            for i in range(first, min(first + 200, count))
        ]
        with transaction(container.sessions) as session:
            container.pipeline.handle(session, events, now=now)


def run_case(fake: FakeTwilio, count: int, concurrency: int | None) -> tuple[int, float]:
    """(sent, seconds) for ``count`` due booking confirmations; ``concurrency`` None is
    the Dispatcher as ``build`` configures it."""
    import httpx
    from sqlalchemy import func, select

    from adapter.clock import FrozenClock
    from adapter.db import transaction
    from adapter.dispatch import Dispatcher
    from adapter.models import Notification
    from channels.twilio import TwilioChannel
    from tests.harness import migrated_container, settings_for

    with tempfile.TemporaryDirectory(prefix="adapter-bench-") as tmp:
        settings = settings_for(
            Path(tmp), channels=["sms"], twilio_api_base=fake.base_url, twilio_account_sid=SID,
            twilio_auth_token=TOKEN, twilio_from=FROM,
        )
        # Frozen at a weekday morning in Rome; the reminders (30 days on) never fall due.
        container = migrated_container(settings, FrozenClock(datetime(2026, 3, 10, 9, 0, tzinfo=UTC)))
        try:
            book(container, count)
            dispatcher = container.dispatcher
            if concurrency is not None:
                d = dispatcher
                dispatcher = Dispatcher(
                    sessions=d.sessions, gate=d.gate, templates=d.templates, channels=d.channels,
                    preference=d.preference, clock=d.clock, clinic=d.clinic, rules=d.rules, batch_size=d.batch_size,
                    lease=d.lease, concurrency=concurrency, window=d.window,
                    rate_limits=settings.channel_rate_limits,
                )

            async def drain() -> float:
                dispatcher.channels["sms"] = TwilioChannel.from_settings(
                    settings, client=httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=100)))
                began = time.perf_counter()
                while await dispatcher.run_once():
                    pass
                elapsed = time.perf_counter() - began
                await dispatcher.channels["sms"].aclose()
                return elapsed

            elapsed = asyncio.run(drain())
            with transaction(container.sessions) as session:
                sent = session.scalar(select(func.count()).select_from(Notification).where(Notification.status == "sent"))
        finally:
            container.engine.dispose()
    return sent, elapsed


def main() -> None:
    import logging

    logging.getLogger("adapter").setLevel(logging.WARNING)
    print(f"\n== dispatch batch: in process, SQLite, fake Twilio with {LATENCY_S * 1000:.0f} ms latency; "
          f"concurrent sends ({CONCURRENT:,}) vs one by one ({ONE_BY_ONE:,})", flush=True)
    with FakeTwilio(account_sid=SID, auth_token=TOKEN, latency_s=LATENCY_S) as fake:
        rates = {}
        for label, count, concurrency in (("one by one (concurrency=1)", ONE_BY_ONE, 1),
                                          ("as configured", CONCURRENT, None)):
            sent, elapsed = run_case(fake, count, concurrency)
            rates[label] = sent / elapsed
            print(f"  {label}: {sent:,} sent in {elapsed:.2f} s = {rates[label]:,.0f}/s", flush=True)
        duplicates = sum(1 for n in fake.deliveries.values() if n > 1)
    one, many = rates.values()
    print(f"  ratio as configured / one by one: {many / one:.1f}x "
          f"(one by one cannot beat {1 / LATENCY_S:.0f}/s); deliveries counted twice at the provider: {duplicates}",
          flush=True)


if __name__ == "__main__":
    main()
