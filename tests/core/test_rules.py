from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from adapter import events as ev
from adapter.errors import ConfigError
from adapter.rules import Plan, invoice_moot_at_send, load_rules, parse_duration, plan_notifications
from tests.harness import config_refusal

ROME = ZoneInfo("Europe/Rome")
RULES = load_rules(Path("config/rules.yaml"))
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
PATIENT = ev.PatientDetails(key=ev.Identifier("urn:mrn", "123"))
ORIGIN = ev.Origin("fhir", "test")


def booked(start: datetime) -> ev.AppointmentBooked:
    return ev.AppointmentBooked(ORIGIN, NOW, PATIENT, ev.Appointment("Appointment/a1", start))


def test_booking_three_days_ahead_plans_confirmation_two_reminders_and_follow_up():
    start = NOW + timedelta(days=3)
    plan = plan_notifications(booked(start), RULES, now=NOW, tz=ROME)
    by_rule = {p.rule_id: p for p in plan.notifications}
    assert by_rule["booking-confirmation"].scheduled_for == NOW
    assert by_rule["reminder-24h"].scheduled_for == start - timedelta(hours=24)
    assert by_rule["reminder-2h"].scheduled_for == start - timedelta(hours=2)
    follow_up = by_rule["follow-up"].scheduled_for.astimezone(ROME)
    assert (follow_up.date(), follow_up.hour) == ((start + timedelta(days=1)).astimezone(ROME).date(), 10)
    assert not any(p.too_late for p in plan.notifications)


def test_reminder_whose_time_has_passed_is_marked_too_late():
    plan = plan_notifications(booked(NOW + timedelta(hours=5)), RULES, now=NOW, tz=ROME)
    by_rule = {p.rule_id: p for p in plan.notifications}
    assert by_rule["reminder-24h"].too_late
    assert not by_rule["reminder-2h"].too_late


def test_nothing_about_an_appointment_to_come_is_sent_once_it_has_started_but_its_follow_up_is():
    start = NOW - timedelta(hours=1)
    cancelled = ev.AppointmentCancelled(ORIGIN, NOW, PATIENT, ev.Appointment("Appointment/a1", start))
    started = {p.rule_id: p.appointment_started
               for event in (booked(start), cancelled) for p in plan_notifications(event, RULES, now=NOW, tz=ROME).notifications}
    assert started == {"booking-confirmation": True, "reminder-24h": True, "reminder-2h": True, "follow-up": False,
                       "cancellation-notice": True}


def test_reschedule_sends_a_notice_and_moves_the_timed_notices():
    new_start = NOW + timedelta(days=5)
    event = ev.AppointmentRescheduled(ORIGIN, NOW, PATIENT, ev.Appointment("Appointment/a1", new_start))
    plan = plan_notifications(event, RULES, now=NOW, tz=ROME)
    assert plan.withdraw_timed and not plan.withdraw_all
    rules = sorted(p.rule_id for p in plan.notifications)
    assert rules == ["follow-up", "reminder-24h", "reminder-2h", "reschedule-notice"]
    assert {p.scheduled_for for p in plan.notifications if p.rule_id == "reminder-2h"} == {new_start - timedelta(hours=2)}


def test_cancellation_withdraws_everything_pending_and_sends_a_notice():
    event = ev.AppointmentCancelled(ORIGIN, NOW, PATIENT, ev.Appointment("Appointment/a1", NOW + timedelta(days=1)))
    plan = plan_notifications(event, RULES, now=NOW, tz=ROME)
    assert plan.withdraw_all
    assert [p.kind for p in plan.notifications] == ["cancellation_notice"]


def test_offsets_are_configurable(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {id: r48, when: appointment.booked, kind: reminder, before_start: 48h}\n")
    plan = plan_notifications(booked(NOW + timedelta(days=3)), load_rules(path), now=NOW, tz=ROME)
    assert [p.scheduled_for for p in plan.notifications] == [NOW + timedelta(days=1)]


@pytest.mark.parametrize(
    "body, expected",
    [
        ("rules:\n  - {id: x, when: appointment.booked, kind: reminder}\n", "exactly one of"),
        ("rules:\n  - {id: x, when: appointment.exploded, kind: reminder, immediately: true}\n", "rules.0.when"),
        ("rules:\n  - {id: x, when: appointment.booked, kind: reminder, before_start: soon}\n", "not a duration"),
        ("rules: [\n", "cannot read rules"),
    ],
)
def test_a_bad_rules_file_is_refused_naming_the_file_and_field(tmp_path, body, expected):
    assert expected in config_refusal(load_rules, tmp_path / "rules.yaml", body)


def test_durations_read_as_people_write_them():
    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("1d") == timedelta(days=1)


SERVICE_RULES = """
rules:
  - id: confirmation
    when: appointment.booked
    kind: booking_confirmation
    immediately: true
  - id: pre-visit-instructions
    when: appointment.booked
    kind: pre_visit_instructions
    before_start: 3d
    catch_up: true
    services: [{code: ECO-ADD}, {system: "urn:cup", code: "88.74.1"}, {prefix: "COLON-"}]
  - id: reminder-24h
    when: appointment.booked
    kind: reminder
    before_start: 24h
  - id: yearly-recall
    when: appointment.fulfilled
    kind: recall
    after_start: 335d
    at_local_time: "10:00"
    services: [{prefix: "OCU"}]
"""


def service_rules(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(SERVICE_RULES)
    return load_rules(path)


def booked_for(start: datetime, service_code: str) -> ev.AppointmentBooked:
    return ev.AppointmentBooked(ORIGIN, NOW, PATIENT, ev.Appointment("Appointment/a1", start, service_code=service_code))


@pytest.mark.parametrize("code, applies", [
    ("ECO-ADD", True),                 # code, any system
    ("L|ECO-ADD", True),
    ("urn:cup|88.74.1", True),         # system|code
    ("88.74.1", True),                 # a code sent without a system
    ("urn:other|88.74.1", False),      # the same code in another system
    ("L|colon-prep", True),            # prefix, any case
    ("L|CARD01", False),
    ("", False),                       # no service said: only rules without services apply
])
def test_a_rule_with_services_applies_only_to_appointments_of_those_services(tmp_path, code, applies):
    plan = plan_notifications(booked_for(NOW + timedelta(days=10), code), service_rules(tmp_path), now=NOW, tz=ROME)
    rules = {p.rule_id for p in plan.notifications}
    assert ("pre-visit-instructions" in rules) is applies
    assert {"confirmation", "reminder-24h"} <= rules  # no services: every appointment


def test_a_catch_up_notice_booked_after_its_moment_goes_at_once_while_a_reminder_is_too_late(tmp_path):
    start = NOW + timedelta(days=2)  # instructions were due 3 days before: a day ago
    plan = plan_notifications(booked_for(start, "ECO-ADD"), service_rules(tmp_path), now=NOW, tz=ROME)
    by_rule = {p.rule_id: p for p in plan.notifications}
    assert by_rule["pre-visit-instructions"].scheduled_for == NOW and not by_rule["pre-visit-instructions"].too_late
    late = plan_notifications(booked_for(NOW + timedelta(hours=5), "ECO-ADD"), service_rules(tmp_path), now=NOW, tz=ROME)
    assert {p.rule_id: p.too_late for p in late.notifications}["reminder-24h"] is True
    started = plan_notifications(booked_for(NOW - timedelta(hours=1), "ECO-ADD"), service_rules(tmp_path), now=NOW, tz=ROME)
    assert {p.rule_id: p.appointment_started for p in started.notifications}["pre-visit-instructions"] is True


def test_on_a_move_instructions_already_sent_are_not_planned_again_and_those_never_sent_are(tmp_path):
    rules = service_rules(tmp_path)

    def moved(start):
        event = ev.AppointmentRescheduled(ORIGIN, NOW, PATIENT, ev.Appointment("Appointment/a1", start, service_code="ECO-ADD"))
        plan = plan_notifications(event, rules, now=NOW, tz=ROME, sent_rules={"pre-visit-instructions"})
        return {p.rule_id: p for p in plan.notifications}.get("pre-visit-instructions")

    assert moved(NOW + timedelta(days=1)) is None  # already given: not again
    assert moved(NOW + timedelta(days=20)) is None  # nor before a later date (the reminders still come)
    event = ev.AppointmentRescheduled(ORIGIN, NOW, PATIENT, ev.Appointment("Appointment/a1", NOW + timedelta(days=1),
                                                                          service_code="ECO-ADD"))
    never_sent = {p.rule_id: p for p in plan_notifications(event, rules, now=NOW, tz=ROME).notifications}
    assert never_sent["pre-visit-instructions"].scheduled_for == NOW  # never given: given now
    far = ev.AppointmentRescheduled(ORIGIN, NOW, PATIENT, ev.Appointment("Appointment/a1", NOW + timedelta(days=20),
                                                                        service_code="ECO-ADD"))
    later = {p.rule_id: p for p in plan_notifications(far, rules, now=NOW, tz=ROME).notifications}
    assert later["pre-visit-instructions"].scheduled_for == NOW + timedelta(days=17)  # follows the new start


def test_a_recall_is_planned_about_eleven_months_after_a_fulfilled_visit_of_its_services(tmp_path):
    visit = NOW - timedelta(hours=2)
    fulfilled = ev.AppointmentFulfilled(ORIGIN, NOW, PATIENT, ev.Appointment("Appointment/a1", visit, service_code="L|OCU01"))
    [recall] = plan_notifications(fulfilled, service_rules(tmp_path), now=NOW, tz=ROME).notifications
    local = recall.scheduled_for.astimezone(ROME)
    assert (recall.kind, local.date(), local.hour) == ("recall", (visit + timedelta(days=335)).astimezone(ROME).date(), 10)
    other = ev.AppointmentFulfilled(ORIGIN, NOW, PATIENT, ev.Appointment("Appointment/a1", visit, service_code="L|CARD01"))
    assert plan_notifications(other, service_rules(tmp_path), now=NOW, tz=ROME).notifications == ()


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("{id: x, when: appointment.booked, kind: reminder, immediately: true, catch_up: true}",
         "rules.0 (rule x): Value error, catch_up only goes with before_start"),
        ("{id: x, when: appointment.booked, kind: reminder, before_start: 1d, services: []}",
         "rules.0 (rule x): Value error, services lists no service"),
        ("{id: x, when: report.ready, kind: report_ready, immediately: true, services: [{code: A}]}",
         "services only goes with an appointment trigger"),
        ("{id: x, when: appointment.booked, kind: reminder, before_start: 1d, services: [{code: A, prefix: B}]}",
         "rules.0.services.0 (rule x): Value error, give exactly one of code or prefix"),
        ("{id: x, when: appointment.booked, kind: reminder, before_start: 1d, services: [{cod: A}]}",
         "rules.0.services.0.cod (rule x)"),
    ],
)
def test_a_bad_services_list_or_catch_up_is_refused_naming_the_file_rule_and_field(tmp_path, rule, expected):
    path = tmp_path / "rules.yaml"
    path.write_text(f"rules:\n  - {rule}\n")
    with pytest.raises(ConfigError) as caught:
        load_rules(path)
    assert str(path) in str(caught.value) and expected in str(caught.value)


def issued(at: datetime) -> ev.InvoiceIssued:
    return ev.InvoiceIssued(ORIGIN, NOW, PATIENT, ev.Invoice("Invoice/i1", at, Decimal("35.00"), "EUR", "2026/7"))


def test_an_issued_invoice_plans_payment_reminders_14_and_30_days_after_its_issue_date_at_ten():
    at = datetime(2026, 11, 20, 16, 40, tzinfo=UTC)
    plan = plan_notifications(issued(at), RULES, now=NOW, tz=ROME)
    by_rule = {p.rule_id: p for p in plan.notifications}
    assert set(by_rule) == {"payment-reminder-14d", "payment-reminder-30d"}
    assert by_rule["payment-reminder-14d"].scheduled_for == datetime(2026, 12, 4, 10, 0, tzinfo=ROME)
    assert by_rule["payment-reminder-30d"].scheduled_for == datetime(2026, 12, 20, 10, 0, tzinfo=ROME)
    assert {(p.kind, p.subject_ref, p.urgent, p.too_late) for p in plan.notifications} == {
        ("payment_reminder", "Invoice/i1", False, False)}
    assert not plan.withdraw_all and not plan.withdraw_timed


def test_an_invoice_pushed_late_plans_only_the_reminders_still_ahead():
    plan = plan_notifications(issued(NOW - timedelta(days=20)), RULES, now=NOW, tz=ROME)
    assert {p.rule_id: p.too_late for p in plan.notifications} == {
        "payment-reminder-14d": True, "payment-reminder-30d": False}


@pytest.mark.parametrize("reason, said", [("balanced", "invoice paid"), ("cancelled", "invoice cancelled"),
                                          ("not-due", "invoice no longer due from the patient")])
def test_a_settled_invoice_withdraws_everything_pending_for_it(reason, said):
    plan = plan_notifications(ev.InvoiceSettled(ORIGIN, NOW, PATIENT, "Invoice/i1", reason), RULES, now=NOW, tz=ROME)
    assert plan == Plan(withdraw_all=True, reason=said)


def test_a_payment_reminder_is_moot_at_send_once_the_invoice_is_no_longer_due():
    assert invoice_moot_at_send("issued") is None
    assert invoice_moot_at_send("balanced") == "the invoice had been paid when it was due to be sent"
    assert invoice_moot_at_send("cancelled") == "the invoice had been cancelled when it was due to be sent"
    assert invoice_moot_at_send(None) == "the invoice was no longer known when it was due to be sent"


def test_an_invoice_rule_timed_before_the_issue_date_is_refused(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {id: p, when: invoice.issued, kind: payment_reminder, before_start: 1d}\n")
    with pytest.raises(ConfigError, match="after the issue date"):
        load_rules(path)
