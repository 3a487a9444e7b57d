"""The console's inbound messages in a real browser (Debian's Chromium, Playwright)
against a running adapter fed over MLLP: the list and its filters, a message's trace,
and an admin replaying an error-store message once the appointment it names is known.
Screenshots go to test-artifacts/ui/."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from playwright.sync_api import expect

from tests.core import test_siu_without_pid
from tests.core.test_siu_without_pid import settled, siu
from tests.harness import running_adapter, settings_for
from tests.ui.test_console import browser, log_in, shot  # noqa: F401 - browser is a fixture

PERSONAL = ("Nicol", "D'Al", "D&#39;Al", "1234567", "0012345")  # siu()'s patient: name, phone, MRN


def send(adapter, *messages: bytes) -> list[str]:  # noqa: ANN001
    """Over MLLP, from a thread of its own: Playwright's sync API keeps an event loop in this one."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(test_siu_without_pid.send, adapter, *messages).result()


def assert_no_personal_data(page) -> None:  # noqa: ANN001
    html = page.content()
    assert not [value for value in PERSONAL if value in html]


def test_an_admin_finds_a_failed_message_and_replays_it_once_its_appointment_is_booked(browser, tmp_path):  # noqa: F811
    with running_adapter(settings_for(tmp_path)) as adapter:
        # A cancellation without PID of an appointment the adapter has not heard of yet: the
        # error store. Then the booking arrives, and the cancellation can be applied.
        assert send(adapter, siu("S15", "X1", "FL404", mrn=None, status="Cancelled")) == ["AA"]
        assert settled(adapter, "X1")["status"] == "error"
        assert send(adapter, siu("S12", "B1", "FL404")) == ["AA"]
        assert settled(adapter, "B1")["status"] == "processed"

        page = log_in(browser, adapter, "admin")
        page.click("#nav-messages")
        rows = page.locator("#messages tr.message")
        expect(rows).to_have_count(2)
        expect(rows.first).to_contain_text("B1")  # newest first
        expect(page.locator("#total")).to_have_text("2")
        expect(page.locator("a.count[data-status=error]")).to_have_text("error 1")
        assert_no_personal_data(page)
        shot(page, "messages-en")

        page.select_option("#status", "error")
        page.click("#filter")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("X1")
        expect(rows.first).to_contain_text("is not known here")

        rows.first.locator("a.trace").click()
        expect(page.locator("#message-status")).to_have_text("error")
        expect(page.locator("#replayable")).to_have_text("It can be replayed.")
        shot(page, "message-error-en")
        page.click("#replay")

        expect(page.locator("#replayed")).to_have_text("Replayed: processed.")
        expect(page.locator("#message-status")).to_have_text("processed")
        expect(page.locator("#error-store")).to_have_count(0)
        expect(page.locator("#planned tr.notification[data-kind=cancellation_notice]")).to_have_count(1)
        expect(page.locator("#withdrew tr.notification[data-status=cancelled]").first).to_be_visible()
        assert_no_personal_data(page)
        shot(page, "message-replayed-en")


def test_a_bookings_trace_shows_the_confirmation_it_planned_and_links_to_why_and_the_patient(browser, tmp_path):  # noqa: F811
    with running_adapter(settings_for(tmp_path)) as adapter:
        assert send(adapter, siu("S12", "B1", "FL1"), siu("S12", "BAD1", "FL2", mrn=None)) == ["AA", "AA"]
        assert settled(adapter, "B1")["status"] == "processed" and settled(adapter, "BAD1")["status"] == "error"

        page = log_in(browser, adapter, "officer", lang="it")
        page.goto("/ui/messages?control_id=B1")
        expect(page.locator("#messages tr.message")).to_have_count(1)
        page.locator("#messages a.trace").click()
        expect(page.locator("#caused h2")).to_have_text("Notifiche pianificate")
        confirmation = page.locator("#planned tr.notification[data-kind=booking_confirmation]")
        expect(confirmation).to_have_count(1)
        assert_no_personal_data(page)
        shot(page, "message-booking-it")

        confirmation.locator("a.why").click()
        expect(page.locator("#why")).to_contain_text("booking_confirmation")
        page.go_back()
        confirmation.locator("a[href^='/ui/patients/']").click()
        expect(page.locator("#patient-id")).to_be_visible()

        page.goto("/ui/messages?status=error")  # an officer reads the error store, and may not replay
        expect(page.locator("#messages tr.message")).to_have_count(1)
        page.locator("#messages a.trace").click()
        expect(page.locator("#error-reason")).to_contain_text("PID")
        expect(page.locator("#replay")).to_have_count(0)
