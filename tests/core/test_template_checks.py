import logging
import shutil
from pathlib import Path

import pytest

from adapter.bootstrap import build
from adapter.errors import ConfigError
from adapter.migrate import upgrade
from adapter.service_catalogue import load_services
from adapter.template_checks import sms_fit_problems
from adapter.templates import TemplateBook
from tests.harness import settings_for


def with_template(tmp_path, name: str, text: str):
    config = tmp_path / "config"
    shutil.copytree("config", config)
    (config / "templates" / name).write_text(text, encoding="utf-8")
    settings = settings_for(tmp_path, config_dir=config)
    upgrade(settings.database_url)
    return settings


def test_a_template_asking_to_reply_with_a_carrier_opt_out_word_is_refused_at_start_up(tmp_path):
    settings = with_template(tmp_path, "en/reminder.txt.j2", "Dear {{ patient.first_name }}, reply CANCEL to cancel your visit.")
    with pytest.raises(ConfigError) as caught:
        build(settings)
    assert "en/reminder" in str(caught.value) and "CANCEL" in str(caught.value)


def test_a_template_too_long_for_the_configured_sms_parts_is_reported_with_the_offending_character(tmp_path, caplog):
    settings = with_template(
        tmp_path, "it/reminder.txt.j2",
        "Gentile {{ patient.first_name }}, l’appuntamento è {{ appointment.when }}. " + "Dettagli. " * 20,
    )
    book = TemplateBook(settings.config_dir / "templates", default_language="it", tz=__import__("zoneinfo").ZoneInfo("Europe/Rome"))
    problems = {p.sample: p for p in sms_fit_problems(book, 2)}
    assert "it/reminder" in problems
    assert problems["it/reminder"].offending == "’" and "U+2019" in str(problems["it/reminder"])
    with caplog.at_level(logging.WARNING):
        container = build(settings.model_copy(update={"sms_max_segments": 2}))
    assert any("it/reminder" in record.getMessage() and "U+2019" in record.getMessage() for record in caplog.records)
    container.engine.dispose()


def test_the_shipped_templates_fit_in_two_sms_parts_and_ask_for_digits():
    from pathlib import Path
    from zoneinfo import ZoneInfo

    book = TemplateBook(Path("config/templates"), default_language="it", tz=ZoneInfo("Europe/Rome"))
    assert sms_fit_problems(book, 2) == []
    assert sms_fit_problems(book, 2, load_services(Path("config/services.yaml"))) == []


def test_pre_visit_instructions_too_long_for_sms_are_reported_naming_the_service(tmp_path, caplog):
    settings = with_template(tmp_path, "it/reminder.txt.j2", (Path("config/templates/it/reminder.txt.j2")).read_text())
    services = settings.config_dir / "services.yaml"
    services.write_text(services.read_text().replace(
        "Arrivi 20 minuti prima, senza gioielli né oggetti metallici.",
        "Arrivi 20 minuti prima. " + "Porti con sé tutta la documentazione. " * 4), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        container = build(settings)
    assert any("it/pre_visit_instructions with Risonanze magnetiche: 3 SMS parts" in record.getMessage()
               for record in caplog.records)
    container.engine.dispose()
