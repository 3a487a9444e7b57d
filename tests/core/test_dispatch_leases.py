"""Two dispatchers never have the same notification on the wire: a claim's lease bounds
who may send it, so one held past its lease (a rate limit's wait, a slow provider, a batch
waiting in the broker's queue) is not sent by its first claimer once another may have
claimed it again.

Real pipeline and dispatchers on PostgreSQL (each with its own engine, as two processes
have), WhatsAppChannel against :class:`FakeWhatsApp`, which like the Cloud API does not
de-duplicate: ``deliveries`` counts what reached the patient."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path


from adapter import events as ev
from adapter.bootstrap import Container, build
from adapter.clock import Clock, FrozenClock
from adapter.db import transaction
from channels.fakes import FakeWhatsApp
from tests.core.test_send_time_checks import confirmations
from tests.harness import migrated_container, settings_for

LEASE_S = 2.0


def settings(tmp_path: Path, url: str, fake: FakeWhatsApp, **overrides: object):  # noqa: ANN201
    return settings_for(tmp_path, url, channels=["whatsapp"], whatsapp_api_base=fake.base_url,
                        whatsapp_phone_number_id=fake.phone_number_id, whatsapp_token=fake.access_token,
                        whatsapp_app_secret=fake.app_secret, whatsapp_verify_token="verify-me",
                        claim_lease_s=LEASE_S, **overrides)


def book(container: Container, clock: Clock, patients: int) -> None:
    """One booking per patient; each calls for a booking confirmation at once."""
    now = clock.now()
    with transaction(container.sessions) as session:
        for n in range(patients):
            patient = ev.PatientDetails(key=ev.Identifier("urn:oid:leases", f"MRN{n}", "MR"), given_name="Anna",
                                        family_name="Rossi", language="it",
                                        telecom=(ev.ContactPoint("phone", f"+39333123456{n}", "mobile", 1),))
            container.pipeline.handle(session, [ev.AppointmentBooked(
                ev.Origin("api", "lease-test", f"B{n}"), now, patient,
                ev.Appointment(f"lease/A{n}", now + timedelta(days=3), "Prelievi"))], now=now)


def test_a_send_held_by_a_rate_limit_past_its_lease_is_not_sent_again_by_its_first_dispatcher(tmp_path, pg_url):
    # One message every 4 s: the round's second waits past its 2 s lease, and another
    # dispatcher (its own limit) claims it again and sends it meanwhile.
    with FakeWhatsApp() as fake:
        first = migrated_container(settings(tmp_path, pg_url, fake, channel_rate_limits={"whatsapp": 0.25}))
        second = build(settings(tmp_path, pg_url, fake))
        try:
            book(first, first.clock, patients=2)

            async def scenario() -> tuple[int, int]:
                round_one = asyncio.create_task(first.dispatcher.run_once())
                await asyncio.sleep(LEASE_S + 0.5)
                taken_again = await second.dispatcher.run_once()
                return await round_one, taken_again

            claimed, taken_again = asyncio.run(scenario())
            rows = confirmations(first)
        finally:
            first.engine.dispose()
            second.engine.dispose()
    assert (claimed, taken_again) == (2, 1)
    assert [row.status for row in rows] == ["sent", "sent"]
    assert [fake.deliveries[row.idempotency_key] for row in rows] == [1, 1]


def test_a_batch_that_waited_past_its_lease_sends_nothing_once_claimed_again(tmp_path, pg_url):
    # A Celery task waits in the queue past its lease; the claim loop claims the same
    # notification again and publishes a second task. Both run at once, the provider slow.
    clock = FrozenClock(datetime.now(UTC))
    with FakeWhatsApp(latency_s=0.5) as fake:
        container = migrated_container(settings(tmp_path, pg_url, fake), clock)
        try:
            book(container, clock, patients=1)
            stale = container.dispatcher._claim(clock.now())
            clock.advance(timedelta(seconds=LEASE_S + 1))
            fresh = container.dispatcher._claim(clock.now())
            assert stale[0] == fresh[0] and stale[1] < fresh[1]

            async def scenario() -> None:
                await asyncio.gather(container.dispatcher.deliver(*stale), container.dispatcher.deliver(*fresh))

            asyncio.run(scenario())
            (row,) = confirmations(container)
        finally:
            container.engine.dispose()
    assert row.status == "sent"
    assert fake.deliveries[row.idempotency_key] == 1


def test_a_provider_that_does_not_answer_is_given_up_before_the_lease_runs_out(tmp_path, pg_url):
    # The provider hangs for longer than the lease: the attempt ends (a time-out, tried
    # again later) while the claim still holds, never after another dispatcher may have it.
    with FakeWhatsApp(latency_s=3 * LEASE_S) as fake:
        container = migrated_container(settings(tmp_path, pg_url, fake))
        try:
            book(container, container.clock, patients=1)
            began = time.monotonic()
            assert asyncio.run(container.dispatcher.run_once()) == 1
            took = time.monotonic() - began
            (row,) = confirmations(container)
        finally:
            container.engine.dispose()
    assert took < LEASE_S, took
    assert row.status == "scheduled" and row.claimed_until is None
    assert row.decision["unclear_on"] == ["whatsapp"]  # it may have reached the provider
