from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from compliance.consent import ConsentDecision
from compliance.purposes import load_policy
from compliance.report_rules import link_expires_at, link_valid, lint_templates, report_notice_allowed

POLICY = load_policy()
RULES, LINT = POLICY.report_rules, POLICY.template_lint
YES = ConsentDecision(True, "permitted by consent record 3", 3, "consent")
NO = ConsentDecision(False, "no specific consent for report_notice on sms", None, "consent")
TEMPLATES = Path(__file__).resolve().parents[2] / "config" / "templates"


@pytest.mark.parametrize("codes", [["7917-8"], ["http://loinc.org|56888-1"], ["2345-7", "GEN-BRCA1"], ["hiv-002"]])
def test_hiv_and_genetic_results_never_produce_a_notice_even_with_consent(codes):
    decision = report_notice_allowed(codes, YES, RULES)
    assert not decision.allowed and decision.excluded_code in codes
    assert "excluded from online delivery" in decision.reason
    # kept with the notification and in the audit log: it must not say which category
    assert not {"hiv", "genetic", "gen-"} & set(decision.reason.lower().replace("(", " ").split())


def test_a_code_from_another_system_with_the_same_value_is_not_excluded():
    assert report_notice_allowed(["urn:oid:1.2.3|7917-8"], YES, RULES).allowed


def test_a_report_notice_needs_consent_to_online_delivery():
    assert report_notice_allowed(["2345-7"], YES, RULES).allowed
    refused = report_notice_allowed(["2345-7"], NO, RULES)
    assert not refused.allowed and "no consent" in refused.reason


def test_a_notice_link_expires_with_the_45_day_window():
    start = datetime(2025, 3, 1, tzinfo=UTC)
    assert link_expires_at(start, RULES) == start + timedelta(days=45)
    assert link_valid(start, start + timedelta(days=44, hours=23), RULES)
    assert not link_valid(start, start + timedelta(days=45), RULES)


def test_the_shipped_templates_pass_the_lint():
    templates = {f"{p.parent.name}/{p.name}": p.read_text() for p in TEMPLATES.glob("*/*.j2")}
    kinds = {name: name.split("/")[1].split(".")[0] for name in templates}
    assert templates
    assert lint_templates(templates, kinds, LINT) == []


def test_the_lint_names_the_template_and_every_clinical_field():
    templates = {
        "it/report_ready.txt.j2": "Gentile {{ patient.first_name }},\nesito: {{ report.result }} {{ exam_name }}",
        "en/reminder.txt.j2": "{% for t in tests %}{{ t }}{% endfor %} {{ appointment['diagnosis'] }}",
        "en/report_ready.txt.j2": "Your PIN is {{ access.pin }}",
        "en/follow_up.txt.j2": "{{ clinic.phone }} {{ appointment.when }}",
    }
    kinds = {"it/report_ready.txt.j2": "report_ready", "en/reminder.txt.j2": "reminder",
             "en/report_ready.txt.j2": "report_ready", "en/follow_up.txt.j2": "follow_up"}
    found = {(p.template, p.field) for p in lint_templates(templates, kinds, LINT)}
    assert found == {("it/report_ready.txt.j2", "report.result"), ("it/report_ready.txt.j2", "exam_name"),
                     ("en/reminder.txt.j2", "tests"), ("en/reminder.txt.j2", "appointment.diagnosis"),
                     ("en/report_ready.txt.j2", "access.pin")}
    first = next(p for p in lint_templates(templates, kinds, LINT) if p.field == "report.result")
    assert first.line == 2 and "it/report_ready.txt.j2:2" in str(first)


def test_a_template_that_does_not_parse_is_a_problem():
    problems = lint_templates({"x": "{{ patient.first_name "}, {"x": "reminder"}, LINT)
    assert problems and "does not parse" in problems[0].message
