import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from jinja2.exceptions import SecurityError

from adapter.errors import ConfigError
from adapter.templates import TemplateBook

ROME = ZoneInfo("Europe/Rome")
BOOK = TemplateBook(Path("config/templates"), default_language="it", tz=ROME)
CONTEXT = {
    "patient": {"first_name": "Nicolò"},
    "clinic": {"name": "Poliambulatorio San Luca", "phone": "+39 02 1234 5678"},
    "appointment": {"start": datetime(2026, 12, 1, 8, 30, tzinfo=UTC)},
    "visit": {"instructions": "Si presenti a digiuno da 8 ore.", "form_link": ""},  # as the dispatcher gives it
    "invoice": {"amount": Decimal("35"), "currency": "EUR", "number": "2026/000123"},
    "payment": {"link": ""},
}


def test_italian_reminder_writes_the_date_as_people_do_in_the_clinic_time_zone():
    rendered = BOOK.render("reminder", "it", CONTEXT)
    assert "martedì 1 dicembre alle 09:30" in rendered.body
    assert "Nicolò" in rendered.body and "Risponda 1 per confermare, 2 per annullare" in rendered.body
    assert rendered.template_id == "it/reminder" and len(rendered.template_version) == 12


def test_english_reminder_for_an_english_speaking_patient():
    rendered = BOOK.render("reminder", "en-GB", CONTEXT)
    assert "Tuesday 1 December at 09:30" in rendered.body and "Reply 1 to confirm" in rendered.body


@pytest.mark.parametrize("kind", sorted(k for k in BOOK.kinds("it") if "first_name" in BOOK.sources[f"it/{k}"]))
def test_a_patient_whose_name_the_hospital_did_not_send_is_greeted_without_a_blank(kind):
    nameless = {**CONTEXT, "patient": {"first_name": ""}}
    assert BOOK.render(kind, "it", nameless).body.startswith("Gentile paziente,")
    assert BOOK.render(kind, "en", nameless).body.startswith("Dear patient,")


def test_unknown_language_falls_back_to_the_clinic_default():
    assert BOOK.render("reminder", "de", CONTEXT).template_id == "it/reminder"


def test_every_rule_kind_has_a_template_in_both_languages():
    assert BOOK.kinds("it") == BOOK.kinds("en")
    BOOK.require_kinds({"reminder", "booking_confirmation", "follow_up"})
    with pytest.raises(ConfigError):
        BOOK.require_kinds({"recall_campaign_that_does_not_exist"})


def test_templates_run_in_a_sandbox(tmp_path):
    (tmp_path / "it").mkdir()
    (tmp_path / "it" / "evil.txt.j2").write_text("{{ patient.__class__.__mro__ }}")
    book = TemplateBook(tmp_path, default_language="it", tz=ROME)
    with pytest.raises(SecurityError):
        book.render("evil", "it", {"patient": CONTEXT["patient"]})


def test_every_kind_has_an_e_mail_subject_line_in_both_languages_and_the_version_covers_it():
    assert {tid.split("/")[1] for tid in BOOK.subject_sources} == BOOK.kinds("it") == BOOK.kinds("en")
    rendered = BOOK.render("reminder", "en", CONTEXT)
    assert rendered.subject == "Poliambulatorio San Luca: appointment reminder"
    text, subject = BOOK.sources["en/reminder"], BOOK.subject_sources["en/reminder"]
    assert rendered.template_version == hashlib.sha256(f"{text}\0{subject}".encode()).hexdigest()[:12]


def test_a_subject_line_naming_a_clinical_field_is_refused_at_start_up(tmp_path):
    import shutil

    from tests.harness import migrated_container, settings_for

    config = tmp_path / "config"
    shutil.copytree("config", config)
    (config / "templates" / "it" / "reminder.subject.j2").write_text("Promemoria: {{ appointment.diagnosis }}")
    with pytest.raises(ConfigError, match="reminder.subject"):
        migrated_container(settings_for(tmp_path, config_dir=config))


def test_pre_visit_instructions_say_the_instructions_and_the_form_link_in_italian_and_english():
    with_form = {**CONTEXT, "visit": {"instructions": "Porti i referti precedenti.",
                                      "form_link": "https://moduli.example.org/rm?id=FL1&lang=it"}}
    it = BOOK.render("pre_visit_instructions", "it", with_form).body
    assert it == ("Gentile Nicolò, per l'appuntamento presso Poliambulatorio San Luca martedì 1 dicembre alle 09:30: "
                  "Porti i referti precedenti. Questionario da compilare prima: "
                  "https://moduli.example.org/rm?id=FL1&lang=it Info: +39 02 1234 5678")
    en = BOOK.render("pre_visit_instructions", "en", {**CONTEXT, "visit": {"instructions": "Bring your reports.",
                                                                          "form_link": ""}}).body
    assert en == ("Dear Nicolò, for your appointment at Poliambulatorio San Luca on Tuesday 1 December at 09:30: "
                  "Bring your reports. Info: +39 02 1234 5678")


def test_a_recall_invites_to_book_the_check_up_by_phone_naming_no_service():
    assert BOOK.render("recall", "it", CONTEXT).body == (
        "Gentile Nicolò, è il momento del controllo periodico presso Poliambulatorio San Luca. "
        "Per prenotarlo ci chiami al +39 02 1234 5678.")
    assert BOOK.render("recall", "en", CONTEXT).body == (
        "Dear Nicolò, it is time for your regular check-up at Poliambulatorio San Luca. "
        "To book it, call us on +39 02 1234 5678.")


@pytest.mark.parametrize("language, amount, pay", [
    ("it", "35,00 €", "Può pagare qui: https://pay.example.org/a/301000000000012345"),
    ("en", "€35.00", "You can pay here: https://pay.example.org/a/301000000000012345"),
])
def test_a_payment_reminder_writes_the_amount_as_people_do_with_number_and_link(language, amount, pay):
    context = {**CONTEXT, "payment": {"link": "https://pay.example.org/a/301000000000012345"}}
    rendered = BOOK.render("payment_reminder", language, context)
    assert amount in rendered.body and "2026/000123" in rendered.body and pay in rendered.body
    assert rendered.template_id == f"{language}/payment_reminder"


def test_a_payment_reminder_without_a_link_says_where_to_pay_instead():
    body = BOOK.render("payment_reminder", "it", CONTEXT).body
    assert "https://" not in body and "accettazione" in body
