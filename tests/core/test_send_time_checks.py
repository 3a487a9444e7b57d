"""What the dispatcher checks again at send time, beyond consent: a notice about an
appointment to come is not sent once the appointment has started or been cancelled,
however it came to be held back (quiet hours, a provider's Retry-After, a backlog);
and what changed while a prepared message waited for its turn (a STOP, a cancellation)
holds back that message too.

Real pipeline, dispatcher, TwilioChannel against :class:`FakeTwilio`, SQLite; a
FrozenClock moved to the next due time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import func, select

from adapter import events as ev
from adapter.bootstrap import Container
from adapter.clock import FrozenClock
from adapter.db import transaction
from adapter.models import Notification
from adapter.replies_flow import handle_reply
from channels.base import InboundReply
from channels.fakes import FakeTwilio
from channels.twilio import TwilioChannel
from tests.harness import migrated_container, settings_for

ROME = ZoneInfo("Europe/Rome")
FROM = "+390200000000"
NUMBER = "+393331234567"
ORIGIN = ev.Origin("api", "send-time-test", "B1")
PATIENT = ev.PatientDetails(key=ev.Identifier("urn:oid:send-time", "MRN1", "MR"), given_name="Nicolò",
                            family_name="Rossi", language="it",
                            telecom=(ev.ContactPoint("phone", NUMBER, "mobile", 1),))


def rig(tmp_path, twilio: FakeTwilio, clock: FrozenClock) -> Container:
    settings = settings_for(tmp_path, channels=["sms"], twilio_api_base=twilio.base_url,
                            twilio_account_sid=twilio.account_sid, twilio_auth_token=twilio.auth_token,
                            twilio_from=FROM, sending_window_start=time(8), sending_window_end=time(21),
                            send_on_holidays=False)
    container = migrated_container(settings, clock)
    container.dispatcher.channels["sms"] = TwilioChannel.from_settings(settings, client=httpx.AsyncClient(timeout=5))
    return container


def book(container: Container, clock: FrozenClock, start: datetime) -> None:
    with transaction(container.sessions) as session:
        container.pipeline.handle(session, [ev.AppointmentBooked(
            ORIGIN, clock.now(), PATIENT, ev.Appointment("send-time/A1", start.astimezone(UTC), "Prelievi"))],
            now=clock.now())


async def drain(container: Container, clock: FrozenClock, until: datetime) -> None:
    """Run the dispatcher, moving the clock to the next due time, up to ``until``."""
    while True:
        if await container.dispatcher.run_once():
            continue
        with transaction(container.sessions) as session:
            due = session.scalar(select(func.min(Notification.scheduled_for))
                                 .where(Notification.status == "scheduled"))
        if due is None or due > until:
            return
        clock.set(max(due, clock.now()) + timedelta(seconds=1))


def notices(container: Container) -> dict[str, Notification]:
    with transaction(container.sessions) as session:
        rows = {row.rule_id: row for row in session.scalars(select(Notification))}
        session.expunge_all()
    return rows


def audited(container: Container, action: str) -> list[str]:
    with transaction(container.sessions) as session:
        return [entry.reason for entry in container.audit.entries(session) if entry.action == action]


def test_a_reminder_held_past_the_start_by_quiet_hours_and_a_retry_after_is_suppressed_not_sent(tmp_path):
    # Booked Monday 10:00 for Tuesday 07:30: the 2-hour reminder (05:30, at night) is moved
    # to Monday 20:59; Twilio answers it 429 with Retry-After 90 s, which lands in quiet
    # hours, and the window opens again Tuesday 08:00, after the start.
    clock = FrozenClock(datetime(2026, 3, 9, 10, 0, tzinfo=ROME))
    start = datetime(2026, 3, 10, 7, 30, tzinfo=ROME)
    with FakeTwilio(retry_after_s=90) as twilio:
        container = rig(tmp_path, twilio, clock)
        try:
            book(container, clock, start)

            async def scenario() -> None:
                await container.dispatcher.run_once()  # the booking confirmation
                twilio.fail_next("429")
                await drain(container, clock, until=start.astimezone(UTC) + timedelta(days=2))
                await container.dispatcher.channels["sms"].aclose()

            asyncio.run(scenario())
            rows = notices(container)
            suppressed = audited(container, "suppressed")
        finally:
            container.engine.dispose()
    reminder = rows["reminder-2h"]
    assert reminder.status == "suppressed", (reminder.status, reminder.sent_at)
    assert reminder.reason == "the appointment had already started when it was due to be sent"
    assert reminder.decision["at_send"] == {"appointment": reminder.reason}
    assert reminder.reason in suppressed
    assert twilio.deliveries[reminder.idempotency_key] == 0
    # The follow-up speaks of the visit that took place: it still goes.
    assert rows["follow-up"].status == "sent"
    assert twilio.deliveries[rows["follow-up"].idempotency_key] == 1


def claimed_when(tmp_path, twilio: FakeTwilio, start: datetime, *, sent_until: datetime, claim_at: datetime,
                 arriving: Callable[[datetime], ev.Event], then_until: datetime | None = None) -> tuple[list[int], Container]:
    """Book ``start``; send what falls due up to ``sent_until``; at ``claim_at`` a worker
    claims what is due, and the event ``arriving(now)`` comes in while it holds it; the
    worker then delivers, and the dispatcher goes on up to ``then_until``. Returns the
    claimed ids and the container (disposed: for reading its database)."""
    clock = FrozenClock(datetime(2026, 3, 10, 10, 0, tzinfo=ROME))
    container = rig(tmp_path, twilio, clock)
    try:
        book(container, clock, start)

        async def scenario() -> list[int]:
            await drain(container, clock, until=sent_until)
            clock.set(claim_at)
            claimed = container.dispatcher._claim(clock.now())
            with transaction(container.sessions) as session:
                container.pipeline.handle(session, [arriving(clock.now())], now=clock.now())
            await container.dispatcher.deliver(*claimed)
            if then_until is not None:
                await drain(container, clock, until=then_until)
            await container.dispatcher.channels["sms"].aclose()
            return claimed[0]

        return asyncio.run(scenario()), container
    finally:
        container.engine.dispose()


def appointment_at(start: datetime) -> ev.Appointment:
    return ev.Appointment("send-time/A1", start.astimezone(UTC))


def test_a_reminder_claimed_before_its_appointment_was_cancelled_is_suppressed_not_sent(tmp_path):
    start = datetime(2026, 3, 20, 10, 0, tzinfo=ROME)
    with FakeTwilio() as twilio:
        ids, container = claimed_when(
            tmp_path, twilio, start, sent_until=datetime(2026, 3, 10, 10, 0, tzinfo=ROME),  # the confirmation
            claim_at=start - timedelta(hours=24),
            arriving=lambda now: ev.AppointmentCancelled(ORIGIN, now, PATIENT, appointment_at(start)),
            then_until=start - timedelta(hours=24) + timedelta(minutes=5))
        rows = notices(container)
    reminder = rows["reminder-24h"]
    assert ids == [reminder.id]
    assert rows["reminder-2h"].status == "cancelled"  # still waiting: withdrawn by the cancellation
    assert reminder.status == "suppressed"
    assert reminder.reason == "the appointment had been cancelled when it was due to be sent"
    assert twilio.deliveries[reminder.idempotency_key] == 0
    # The cancellation notice is what a cancelled appointment calls for: it goes.
    assert rows["cancellation-notice"].status == "sent"
    assert twilio.deliveries[rows["cancellation-notice"].idempotency_key] == 1


def throttled_rig(tmp_path, twilio: FakeTwilio, clock: FrozenClock, **settings_overrides: object) -> Container:
    """One SMS every 2 s: a round's second message waits for its turn that long, well
    past RECHECK_AFTER_S (1 s), after which it is looked at again before it goes."""
    settings = settings_for(tmp_path, channels=["sms"], twilio_api_base=twilio.base_url,
                            twilio_account_sid=twilio.account_sid, twilio_auth_token=twilio.auth_token,
                            twilio_from=FROM, channel_rate_limits={"sms": 0.5}, **settings_overrides)
    container = migrated_container(settings, clock)
    container.dispatcher.channels["sms"] = TwilioChannel.from_settings(settings, client=httpx.AsyncClient(timeout=5))
    return container


def book_two(container: Container, clock: FrozenClock, start: datetime) -> None:
    """The patient of this module, then a second one (whose confirmation waits its turn)."""
    second = ev.PatientDetails(key=ev.Identifier("urn:oid:send-time", "MRN2", "MR"), given_name="Anna",
                               family_name="Bianchi", language="it",
                               telecom=(ev.ContactPoint("phone", "+393337654321", "mobile", 1),))
    with transaction(container.sessions) as session:
        for n, patient in enumerate((PATIENT, second), start=1):
            container.pipeline.handle(session, [ev.AppointmentBooked(
                ev.Origin("api", "send-time-test", f"B{n}"), clock.now(), patient,
                ev.Appointment(f"send-time/A{n}", start.astimezone(UTC), "Prelievi"))], now=clock.now())


def while_the_second_waits(container: Container, clock: FrozenClock, twilio: FakeTwilio, change) -> None:  # noqa: ANN001
    """A round sends the first confirmation; ``change`` comes while the second waits for
    its turn; then the dispatcher runs until nothing is due."""

    async def scenario() -> None:
        round_one = asyncio.create_task(container.dispatcher.run_once())
        while not twilio.deliveries.total() and not round_one.done():  # the first is out: the second's turn is 2 s away
            await asyncio.sleep(0.01)
        with transaction(container.sessions) as session:
            change(session)
        assert not round_one.done()  # the second still waits for its turn
        assert await round_one == 2
        await drain(container, clock, until=clock.now())
        await container.dispatcher.channels["sms"].aclose()

    asyncio.run(scenario())


def confirmations(container: Container) -> list[Notification]:
    with transaction(container.sessions) as session:
        rows = list(session.scalars(select(Notification).where(Notification.kind == "booking_confirmation")
                                    .order_by(Notification.id)))
        session.expunge_all()
    return rows


def test_a_stop_received_while_the_message_waits_for_its_turn_is_obeyed_and_the_message_not_sent(tmp_path):
    clock = FrozenClock(datetime(2026, 3, 10, 10, 0, tzinfo=ROME))
    with FakeTwilio() as twilio:
        container = throttled_rig(tmp_path, twilio, clock)
        try:
            book_two(container, clock, datetime(2026, 3, 20, 10, 0, tzinfo=ROME))
            while_the_second_waits(container, clock, twilio, lambda session: handle_reply(
                session, container, InboundReply("twilio", "+393337654321", "STOP", "SM-stop-1"), "sms",
                now=clock.now()))
            first, second = confirmations(container)
            suppressed = audited(container, "suppressed")
        finally:
            container.engine.dispose()
    assert first.status == "sent" and twilio.deliveries[first.idempotency_key] == 1
    assert twilio.deliveries[second.idempotency_key] == 0
    assert second.status == "suppressed", (second.status, second.sent_at)
    assert second.reason == "no usable contact for any live channel", second.reason  # the STOP suspended it
    assert "at_send" not in second.decision  # the consent given at the first preparation is not its record
    assert second.reason in suppressed


def test_a_cancellation_received_while_the_confirmation_waits_for_its_turn_suppresses_it(tmp_path):
    clock = FrozenClock(datetime(2026, 3, 10, 10, 0, tzinfo=ROME))
    start = datetime(2026, 3, 20, 10, 0, tzinfo=ROME)
    second_patient = ev.PatientDetails(key=ev.Identifier("urn:oid:send-time", "MRN2", "MR"))
    with FakeTwilio() as twilio:
        container = throttled_rig(tmp_path, twilio, clock)
        try:
            book_two(container, clock, start)
            while_the_second_waits(container, clock, twilio, lambda session: container.pipeline.handle(session, [
                ev.AppointmentCancelled(ev.Origin("api", "send-time-test", "C2"), clock.now(), second_patient,
                                        ev.Appointment("send-time/A2", start.astimezone(UTC)))], now=clock.now()))
            first, second = confirmations(container)
        finally:
            container.engine.dispose()
    assert first.status == "sent"
    assert twilio.deliveries[second.idempotency_key] == 0
    assert second.status == "suppressed"
    assert second.reason == "the appointment had been cancelled when it was due to be sent"


def test_a_no_show_withdraws_the_follow_up_waiting_for_its_time(tmp_path):
    clock = FrozenClock(datetime(2026, 3, 10, 10, 0, tzinfo=ROME))
    start = datetime(2026, 3, 12, 10, 0, tzinfo=ROME)
    with FakeTwilio() as twilio:
        container = rig(tmp_path, twilio, clock)
        try:
            book(container, clock, start)
            clock.set(start + timedelta(hours=3))  # the hospital records that the patient did not come
            with transaction(container.sessions) as session:
                container.pipeline.handle(session, [ev.AppointmentNoShow(
                    ORIGIN, clock.now(), PATIENT, ev.Appointment("send-time/A1", start.astimezone(UTC)))],
                    now=clock.now())
            asyncio.run(drain(container, clock, until=start.astimezone(UTC) + timedelta(days=3)))
            rows = notices(container)
            withdrawn = audited(container, "cancelled")
        finally:
            container.engine.dispose()
    follow_up = rows["follow-up"]
    assert follow_up.status == "cancelled" and follow_up.reason == "patient did not show"
    assert follow_up.reason in withdrawn
    assert twilio.deliveries[follow_up.idempotency_key] == 0


def test_a_follow_up_claimed_when_the_no_show_comes_is_suppressed_not_sent(tmp_path):
    # A worker has claimed the follow-up ("thank you for your visit") when the hospital's
    # no-show (SIU^S26, FHIR Appointment.status noshow) comes in.
    start = datetime(2026, 3, 12, 10, 0, tzinfo=ROME)
    with FakeTwilio() as twilio:
        _, container = claimed_when(
            tmp_path, twilio, start, sent_until=start - timedelta(minutes=1),  # confirmation, reminders
            claim_at=datetime(2026, 3, 13, 10, 0, 1, tzinfo=ROME),
            arriving=lambda now: ev.AppointmentNoShow(ORIGIN, now, PATIENT, appointment_at(start)))
        rows = notices(container)
        suppressed = audited(container, "suppressed")
    follow_up = rows["follow-up"]
    assert twilio.deliveries[follow_up.idempotency_key] == 0
    assert follow_up.status == "suppressed", follow_up.status
    assert follow_up.reason == "the patient did not come to the appointment"
    assert follow_up.decision["at_send"] == {"appointment": follow_up.reason}
    assert follow_up.reason in suppressed


def test_a_follow_up_claimed_when_the_appointment_is_found_entered_in_error_is_suppressed_not_sent(tmp_path):
    start = datetime(2026, 3, 12, 10, 0, tzinfo=ROME)
    with FakeTwilio() as twilio:
        _, container = claimed_when(
            tmp_path, twilio, start, sent_until=start - timedelta(minutes=1),
            claim_at=datetime(2026, 3, 13, 10, 0, 1, tzinfo=ROME),
            arriving=lambda now: ev.AppointmentCancelled(ORIGIN, now, PATIENT, appointment_at(start),
                                                         reason="entered-in-error"))
        rows = notices(container)
    follow_up = rows["follow-up"]
    assert twilio.deliveries[follow_up.idempotency_key] == 0
    assert follow_up.status == "suppressed", follow_up.status
    assert follow_up.reason == "the appointment had been cancelled when it was due to be sent"


def test_a_reminder_claimed_before_its_appointment_was_moved_is_suppressed_and_the_new_one_goes(tmp_path):
    """A reminder a worker held when the reschedule came went out anyway, with the new
    time in it, beside the reminder planned for the new time: the patient got it twice."""
    start, moved = datetime(2026, 3, 20, 10, 0, tzinfo=ROME), datetime(2026, 3, 20, 16, 0, tzinfo=ROME)
    with FakeTwilio() as twilio:
        ids, container = claimed_when(
            tmp_path, twilio, start, sent_until=datetime(2026, 3, 10, 10, 0, tzinfo=ROME),
            claim_at=start - timedelta(hours=24),
            arriving=lambda now: ev.AppointmentRescheduled(ORIGIN, now, PATIENT, appointment_at(moved),
                                                           previous_start=start.astimezone(UTC)),
            then_until=moved - timedelta(hours=23))
        with transaction(container.sessions) as session:
            reminders = [(row.id, row.status, row.reason) for row in session.scalars(
                select(Notification).where(Notification.rule_id == "reminder-24h").order_by(Notification.id))]
    (old, old_status, reason), (_, new_status, _) = reminders
    assert ids == [old] and (old_status, new_status) == ("suppressed", "sent")
    assert reason == "the appointment was moved after it was planned; the reminder for the new time is planned apart"


def test_a_message_whose_turn_comes_after_the_sending_window_closed_waits_for_the_morning(tmp_path):
    """A provider's rate limit held a confirmation past 21:00, and it went out at night:
    the window was checked only when the round was prepared."""
    clock = FrozenClock(datetime(2026, 3, 10, 20, 59, 58, tzinfo=ROME))
    with FakeTwilio() as twilio:
        container = throttled_rig(tmp_path, twilio, clock, sending_window_start=time(8), sending_window_end=time(21))
        try:
            book_two(container, clock, datetime(2026, 3, 20, 10, 0, tzinfo=ROME))
            while_the_second_waits(container, clock, twilio, lambda _session: clock.advance(timedelta(seconds=5)))
            first, second = confirmations(container)
        finally:
            container.engine.dispose()
    assert first.status == "sent" and twilio.deliveries[second.idempotency_key] == 0
    assert (second.status, second.scheduled_for) == ("scheduled", datetime(2026, 3, 11, 8, 0, tzinfo=ROME))
