"""config/services.yaml: validated at start-up naming the file and field; a rule sending
instructions lists services that have them; form links carry no personal data."""

from __future__ import annotations

import doctest
import shutil
from pathlib import Path

import pytest

import adapter.service_catalogue
from adapter.bootstrap import build
from adapter.errors import ConfigError
from adapter.migrate import upgrade
from adapter.rules import load_rules
from adapter.service_catalogue import load_services
from tests.harness import config_refusal, settings_for


def test_the_docstring_examples_are_true():
    assert doctest.testmod(adapter.service_catalogue).failed == 0


def test_the_shipped_services_cover_every_service_the_pre_visit_rule_names():
    services = load_services(Path("config/services.yaml"))
    services.check_rules(load_rules(Path("config/rules.yaml")), Path("config/rules.yaml"), Path("config/services.yaml"))
    assert services.find("L|ECO-ADD").label == "Ecografia addome completo"
    assert services.find("urn:cup|rm-ginocchio").prefix == "RM-"
    assert services.find("L|CARD01") is None and services.find("") is None


ENTRY = "services:\n  - code: X\n    instructions: {it: Porti i referti., en: Bring your reports.}\n"


@pytest.mark.parametrize("body, expected", [
    ("services:\n  - code: X\n    instructions: {it: Porti i referti.}\n",
     "services.0.instructions: Value error, give the instructions in en too"),
    ("services:\n  - code: X\n    instructions: {it: a, en: b, de: c}\n", "languages without templates: de"),
    ("services:\n  - {code: X, prefix: Y, instructions: {it: a, en: b}}\n", "give exactly one of code or prefix"),
    (ENTRY + "    form_url: http://forms.example.org/q\n", "services.0.form_url: Value error, the form link must be an https"),
    (ENTRY + "    form_url: https://forms.example.org/q?cf={fiscal_code}\n",
     "may carry only {appointment_id} and {language}, not {fiscal_code}"),
    (ENTRY + "    form_url: https://forms.example.org/q?a={appointment_id!r}\n", "not {appointment_id}"),
    (ENTRY + "    form_url: https://forms.example.org/q?a={\n", "stray brace"),
    (ENTRY + "    instruction: typo\n", "services.0.instruction: Extra inputs are not permitted"),
    ("services: [\n", "cannot read services"),
])
def test_a_bad_services_file_is_refused_naming_the_file_and_field(tmp_path, body, expected):
    assert expected in config_refusal(load_services, tmp_path / "services.yaml", body)


def config_with(tmp_path, *, rules: str | None = None, services: str | None = None):
    config = tmp_path / "config"
    shutil.copytree("config", config)
    if rules is not None:
        (config / "rules.yaml").write_text(rules)
    if services is not None:
        (config / "services.yaml").write_text(services)
    settings = settings_for(tmp_path, config_dir=config)
    upgrade(settings.database_url)
    return settings


PRE_VISIT = """rules:
  - id: pre-visit-instructions
    when: appointment.booked
    kind: pre_visit_instructions
    before_start: 3d
"""


@pytest.mark.parametrize("rule, expected", [
    ("", "rules.yaml: rule pre-visit-instructions: services: list the services of services.yaml"),
    ("    services: [{code: ECO-ADD}, {code: TAC-01}]\n",
     "rules.yaml: rule pre-visit-instructions: services: {'code': 'TAC-01'} has no instructions in"),
])
def test_start_up_refuses_a_pre_visit_rule_whose_services_have_no_instructions(tmp_path, rule, expected):
    with pytest.raises(ConfigError) as caught:
        build(config_with(tmp_path, rules=PRE_VISIT + rule))
    assert expected in str(caught.value)


def test_start_up_refuses_a_bad_services_file_naming_it(tmp_path):
    settings = config_with(tmp_path, services="services:\n  - code: ECO-ADD\n    instructions: {it: a}\n")
    with pytest.raises(ConfigError) as caught:
        build(settings)
    assert str(settings.config_dir / "services.yaml") in str(caught.value) and "instructions" in str(caught.value)
