"""The compliance officers' console in a real browser: Debian's Chromium driven by
Playwright, against a running adapter. Screenshots go to test-artifacts/ui/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.core.test_compliance_surfaces import PHONE, internal_id, rich_patient
from tests.core.test_end_to_end import FHIR, appointment, notifications, wait_for
from tests.harness import running_adapter, settings_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def adapter(tmp_path):
    """A patient whose consent denies the sandbox channel for care messages: the booking
    confirmation is suppressed, the reminders wait."""
    with running_adapter(settings_for(tmp_path)) as running:
        ehr, officer = running.client("ehr"), running.client("officer")
        ehr.put("/fhir/R4/Patient/p1", json=rich_patient("p1"), headers=FHIR).raise_for_status()
        running.fhir_processed()
        running.patient = internal_id(running, "p1")
        officer.post("/api/consents", json={"patient": running.patient, "purpose": "care_reminder",
                                            "channel": "sandbox", "decision": "deny"}).raise_for_status()
        start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        ehr.put("/fhir/R4/Appointment/a1", json=appointment("a1", "p1", start), headers=FHIR).raise_for_status()
        wait_for(lambda: [n for n in notifications(officer, patient=running.patient) if n["status"] == "suppressed"])
        yield running


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(browser: Browser, adapter, role: str, lang: str = "en") -> Page:
    page = browser.new_context(base_url=adapter.base_url, accept_downloads=True).new_page()
    page.goto(f"/ui/?lang={lang}")
    expect(page).to_have_url(f"{adapter.base_url}/ui/login?lang={lang}")
    page.fill("#token", adapter.tokens[role])
    page.click("#login")
    expect(page.locator("#who")).to_contain_text(role)
    return page


def test_an_officer_finds_a_patient_by_phone_and_sees_why_a_notice_was_suppressed(browser, adapter):
    page = log_in(browser, adapter, "officer")
    page.select_option("#by", "phone")
    page.fill("#q", PHONE)
    page.click("#search")

    expect(page.locator("#patient-id")).to_have_text(adapter.patient)
    suppressed = page.locator("tr.notification[data-status=suppressed]")
    expect(suppressed.first).to_contain_text("consent record")
    expect(page.locator("#consents tr.consent")).to_have_count(1)
    expect(page.locator("#erase")).to_have_count(0)  # erasure is for admins only
    shot(page, "patient-en")

    suppressed.first.locator("a.why").click()
    expect(page.locator("#why-status")).to_have_text("suppressed")
    record = page.locator("#why-consent").inner_text()
    assert record.isdigit()
    expect(page.locator("#decision")).to_contain_text('"consent_record": ' + record)
    shot(page, "why-en")


def test_the_console_speaks_italian_and_english(browser, adapter):
    page = log_in(browser, adapter, "officer", lang="it")
    page.goto(f"/ui/patients/{adapter.patient}")
    expect(page.locator("#notifications h2")).to_have_text("Notifiche")
    shot(page, "patient-it")
    page.click("#lang-en")
    expect(page.locator("#notifications h2")).to_have_text("Notifications")
    page.goto(f"/ui/patients/{adapter.patient}")  # the choice is remembered
    expect(page.locator("#consents h2")).to_have_text("Consent history")


def test_an_officer_records_consent_reads_the_verified_audit_trail_and_exports(browser, adapter):
    page = log_in(browser, adapter, "officer")
    page.goto(f"/ui/patients/{adapter.patient}")
    page.select_option("#purpose", "report_notice")
    page.select_option("#decision", "permit")
    page.click("#record-consent")
    expect(page.locator("#notice")).to_have_text("Consent recorded.")
    expect(page.locator("#consents tr.consent")).to_have_count(2)

    with page.expect_download() as download:
        page.click("#export-fhir")
    bundle = json.loads(Path(download.value.path()).read_text())
    assert bundle["resourceType"] == "Bundle"
    assert any(e["resource"]["resourceType"] == "Patient" for e in bundle["entry"])

    page.goto("/ui/audit")
    expect(page.locator("#verify-status")).to_have_text("Intact")
    expect(page.locator("#entries tr.entry").first).to_be_visible()
    expect(page.locator("#entries")).to_contain_text("exported")
    shot(page, "audit-en")


def test_an_admin_erases_a_patient_and_the_audit_trail_still_verifies(browser, adapter):
    page = log_in(browser, adapter, "admin")
    page.goto(f"/ui/patients/{adapter.patient}")
    expect(page.locator("#erase")).to_be_visible()
    shot(page, "erase-form-en")
    page.fill("#confirm", adapter.patient)
    page.click("#erase-button")

    expect(page.locator("#notice")).to_contain_text("erased")
    page.goto(f"/ui/patients?by=id&q={adapter.patient}")
    expect(page.locator("#error")).to_have_text("No patient found.")
    page.goto("/ui/audit")
    expect(page.locator("#verify-status")).to_have_text("Intact")
    expect(page.locator("#entries")).to_contain_text("erased")
    shot(page, "audit-after-erasure-en")


def test_a_wrong_token_is_refused_at_login(browser, adapter):
    page = browser.new_context(base_url=adapter.base_url).new_page()
    page.goto("/ui/login?lang=it")
    page.fill("#token", "adp_not-a-token")
    page.click("#login")
    expect(page.locator("#error")).to_have_text("Token non valido.")
    shot(page, "login-refused-it")
