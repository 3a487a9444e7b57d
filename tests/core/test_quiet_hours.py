from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from adapter import events as ev
from adapter.clock import FrozenClock
from adapter.db import transaction
from adapter.models import Notification
from adapter.quiet_hours import SendingWindow, italian_holidays
from sqlalchemy import select, update
from tests.harness import migrated_container, settings_for

ROME = ZoneInfo("Europe/Rome")
WINDOW = SendingWindow(ROME, time(8, 0), time(21, 0))


def rome(*args: int) -> datetime:
    return datetime(*args, tzinfo=ROME)


def test_italian_public_holidays_include_the_fixed_days_and_easter_monday():
    days = italian_holidays(2027)
    assert {datetime(2027, 4, 25).date(), datetime(2027, 6, 2).date(), datetime(2027, 12, 26).date()} <= days
    assert datetime(2027, 3, 29).date() in days  # Easter Monday 2027


def test_saint_francis_on_4_october_is_a_national_holiday_from_2026_and_not_before():
    """L. 151/2025 (GU n. 236, 10 October 2025), in force from 1 January 2026."""
    assert datetime(2025, 10, 4).date() not in italian_holidays(2025)
    assert datetime(2026, 10, 4).date() in italian_holidays(2026)
    assert not WINDOW.allows(rome(2027, 10, 4, 10, 0))  # a Monday
    assert WINDOW.next_open(rome(2027, 10, 3, 22, 0)) == rome(2027, 10, 5, 8, 0)


def test_a_message_due_at_night_waits_for_the_morning_and_skips_holidays():
    assert WINDOW.next_open(rome(2026, 12, 1, 23, 30)) == rome(2026, 12, 2, 8, 0)
    assert WINDOW.next_open(rome(2026, 12, 24, 22, 0)) == rome(2026, 12, 27, 8, 0)
    assert WINDOW.next_open(rome(2026, 12, 2, 10, 0)) == rome(2026, 12, 2, 10, 0)


def test_a_reminder_due_at_night_goes_out_the_evening_before():
    assert WINDOW.last_open_before(rome(2026, 12, 2, 6, 0)) == rome(2026, 12, 1, 20, 59)


def test_equal_start_and_end_means_any_hour():
    assert SendingWindow(ROME, time(0, 0), time(0, 0), holidays=False).allows(rome(2026, 12, 25, 3, 0))


def test_pipeline_moves_non_urgent_notices_out_of_quiet_hours_but_not_urgent_ones(tmp_path):
    now = rome(2026, 12, 1, 22, 30).astimezone(UTC)  # a booking arrives at 22:30
    settings = settings_for(tmp_path, sending_window_start=time(8, 0), sending_window_end=time(21, 0), send_on_holidays=False)
    container = migrated_container(settings, FrozenClock(now))
    patient = ev.PatientDetails(key=ev.Identifier("urn:mrn", "q1"), given_name="Anna",
                                telecom=(ev.ContactPoint("phone", "+393331234567", "mobile"),))
    start = rome(2026, 12, 3, 7, 30).astimezone(UTC)  # 2 h before is 05:30, at night
    origin = ev.Origin("fhir", "test")
    with transaction(container.sessions) as session:
        container.pipeline.handle(session, [ev.AppointmentBooked(origin, now, patient, ev.Appointment("A/q1", start))], now=now)
        container.pipeline.handle(session, [ev.AppointmentCancelled(origin, now, patient, ev.Appointment("A/q2", start))], now=now)
    with transaction(container.sessions) as session:
        rows = {r.rule_id: r for r in session.scalars(select(Notification))}
    assert rows["booking-confirmation"].scheduled_for == rome(2026, 12, 2, 8, 0)
    assert rows["reminder-2h"].scheduled_for == rome(2026, 12, 2, 20, 59)  # the evening before
    assert rows["cancellation-notice"].scheduled_for == now  # urgent: at once
    container.engine.dispose()


def test_a_rate_limit_counts_from_when_a_send_went_through_even_when_the_loop_woke_late():
    import asyncio
    import time as clock

    from adapter.dispatch import Throttle

    async def run() -> list[float]:
        throttle = Throttle(rate=50.0)  # one every 20 ms
        loop = asyncio.get_running_loop()
        stamps = []

        async def one() -> None:
            await throttle.wait()
            stamps.append(loop.time())

        # A busy machine: the loop is blocked from 5 ms to 35 ms, so the second
        # send, due at 20 ms, goes through at about 35 ms.
        loop.call_later(0.005, clock.sleep, 0.030)
        await asyncio.gather(*(one() for _ in range(3)))
        return sorted(stamps)

    stamps = asyncio.run(run())
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    assert stamps[1] - stamps[0] >= 0.030  # it was held up
    assert min(gaps) >= 0.02 * 0.95  # and the third still waited its 20 ms after it


def test_a_channel_rate_limit_never_lets_sends_through_faster_than_configured():
    import asyncio

    from adapter.dispatch import Throttle

    async def run() -> list[float]:
        throttle = Throttle(rate=50.0)
        loop = asyncio.get_running_loop()
        stamps = []

        async def one() -> None:
            await throttle.wait()
            stamps.append(loop.time())

        await asyncio.gather(*(one() for _ in range(6)))
        return sorted(stamps)

    stamps = asyncio.run(run())
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    assert len(stamps) == 6 and min(gaps) >= 0.02 * 0.95  # never faster than 50 per second


def milan_clinic_config(tmp_path):
    """The shipped configuration, with a Milan hospital closed on St Ambrose (7 December)."""
    import shutil

    from tests.harness import settings_for as _settings

    config = tmp_path / "config"
    shutil.copytree(_settings(tmp_path).config_dir, config)
    facilities = config / "facilities.yaml"
    facilities.write_text(facilities.read_text() + "\n  OSP_MILANO:\n    local_holidays: ['12-07']\n")
    return config


def test_a_clinic_closed_on_its_patron_saint_sends_nothing_that_day_and_other_clinics_do(tmp_path):
    now = rome(2026, 12, 6, 22, 30).astimezone(UTC)  # bookings arrive the evening before St Ambrose
    settings = settings_for(tmp_path, config_dir=milan_clinic_config(tmp_path), sending_window_start=time(8, 0),
                            sending_window_end=time(21, 0), send_on_holidays=False)
    container = migrated_container(settings, FrozenClock(now))
    start = rome(2026, 12, 10, 9, 0).astimezone(UTC)
    with transaction(container.sessions) as session:
        for facility, mrn in (("OSP_MILANO", "m1"), ("OSP_ALTRO", "m2")):
            patient = ev.PatientDetails(key=ev.Identifier(facility, mrn), given_name="Anna",
                                        telecom=(ev.ContactPoint("phone", "+393331234567", "mobile"),))
            booking = ev.AppointmentBooked(ev.Origin("hl7", f"CUP^{facility}", mrn), now, patient,
                                           ev.Appointment(f"A/{mrn}", start))
            container.pipeline.handle(session, [booking], now=now)
    with transaction(container.sessions) as session:
        confirmations = {r.subject_ref: r.scheduled_for for r in session.scalars(
            select(Notification).where(Notification.rule_id == "booking-confirmation"))}
    # Milan: St Ambrose, then the Immaculate Conception (national); elsewhere the 7th is a working day.
    assert confirmations == {"A/m1": rome(2026, 12, 9, 8, 0), "A/m2": rome(2026, 12, 7, 8, 0)}
    container.engine.dispose()


def test_a_notice_claimed_on_the_clinics_local_holiday_goes_back_to_the_queue_until_it_reopens(tmp_path):
    import asyncio

    booked = rome(2026, 12, 6, 12, 0).astimezone(UTC)
    clock = FrozenClock(booked)
    settings = settings_for(tmp_path, config_dir=milan_clinic_config(tmp_path), sending_window_start=time(8, 0),
                            sending_window_end=time(21, 0), send_on_holidays=False)
    container = migrated_container(settings, clock)
    patient = ev.PatientDetails(key=ev.Identifier("OSP_MILANO", "m1"), given_name="Anna",
                                telecom=(ev.ContactPoint("phone", "+393331234567", "mobile"),))
    booking = ev.AppointmentBooked(ev.Origin("hl7", "CUP^OSP_MILANO", "m1"), booked, patient,
                                   ev.Appointment("A/m1", rome(2026, 12, 10, 9, 0).astimezone(UTC)))
    with transaction(container.sessions) as session:
        container.pipeline.handle(session, [booking], now=booked)
        session.execute(update(Notification).values(scheduled_for=rome(2026, 12, 7, 10, 0).astimezone(UTC)))
    clock.set(rome(2026, 12, 7, 10, 0).astimezone(UTC))  # held up until the holiday itself

    asyncio.run(container.dispatcher.run_once())

    with transaction(container.sessions) as session:
        rows = list(session.scalars(select(Notification)))
    assert rows and {(r.status, r.scheduled_for, r.sent_at) for r in rows} == {
        ("scheduled", rome(2026, 12, 9, 8, 0), None)}  # the 8th is a national holiday
    container.engine.dispose()
