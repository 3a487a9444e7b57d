"""Italian rules for report-ready notices, and the template lint that enforces minimisation.

Sources: Garante per la protezione dei dati personali, "Linee guida in tema di referti
on-line" (19 Nov 2009, doc. web 1679033); DPCM 8 August 2013 (online delivery of reports).
- online delivery is optional and needs the patient's specific consent (the ``report_notice``
  purpose, explicit consent in ``config/purposes.yaml``);
- HIV and genetic test results are excluded from online delivery: no notice at all;
- a report stays online 45 days at most, so a notice's link expires with that window;
- a notice never reveals the kind of exam, the result or a credential: templates of
  non-clinical kinds may not reference such fields (:func:`lint_templates`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from compliance.consent import ConsentDecision
from compliance.purposes import ReportRules, TemplateLint

REPORT_KINDS = frozenset({"report_ready"})
EXCLUDED_REASON = "excluded from online delivery (report rules, config/purposes.yaml)"


@dataclass(frozen=True)
class ReportNoticeDecision:
    allowed: bool
    reason: str
    excluded_code: str | None = None


def excluded_code(codes: Iterable[str], rules: ReportRules) -> tuple[str, str] | None:
    """The first code the rules exclude from online delivery, with why (``hiv``, ``genetic``)."""
    for raw in codes:
        for rule in rules.excluded:
            if rule.matches(raw):
                return raw, rule.reason
    return None


def report_notice_allowed(codes: Iterable[str], consent: ConsentDecision, rules: ReportRules) -> ReportNoticeDecision:
    """Whether a report-ready notice may be sent. Exclusion comes first: an excluded result
    produces no notice whatever the consent. The reason never names the exam, nor which
    category excluded it: it is kept with the notification and in the audit log, and "HIV"
    beside a patient's pseudonym would say what the notice was kept from saying."""
    hit = excluded_code(codes, rules)
    if hit is not None:
        return ReportNoticeDecision(False, EXCLUDED_REASON, hit[0])
    if not consent.allowed:
        return ReportNoticeDecision(False, f"no consent to online delivery: {consent.reason}")
    return ReportNoticeDecision(True, f"online delivery consented: {consent.reason}")


def link_expires_at(available_from: datetime, rules: ReportRules) -> datetime:
    """End of the availability window (45 days at most): a notice link is dead after it."""
    return available_from + timedelta(days=rules.availability_days)


def link_valid(available_from: datetime, now: datetime, rules: ReportRules) -> bool:
    return available_from <= now < link_expires_at(available_from, rules)


@dataclass(frozen=True)
class TemplateProblem:
    template: str
    field: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.template}:{self.line}" if self.line else self.template
        return f"{where}: {self.message} ({self.field})"


def lint_templates(
    templates: Mapping[str, str], kinds: Mapping[str, str], lint: TemplateLint
) -> list[TemplateProblem]:
    """Problems in ``templates`` (name → Jinja2 source); ``kinds`` maps each name to its
    message kind. Every variable and attribute path a template reads (``report.exam_name``,
    ``patient["diagnosis"]``) is split into words; a clinical word in a template of a
    non-clinical kind, or a credential word in a report notice, is a problem."""
    env = SandboxedEnvironment()
    clinical = {w.lower() for w in lint.clinical_words}
    credentials = {w.lower() for w in lint.credential_words}
    problems: list[TemplateProblem] = []
    for name, source in sorted(templates.items()):
        kind = kinds.get(name, "")
        try:
            tree = env.parse(source)
        except TemplateSyntaxError as exc:
            problems.append(TemplateProblem(name, "", f"does not parse: {exc.message}", exc.lineno))
            continue
        for path, line in _field_paths(tree):
            if path in lint.allowed_fields:
                continue
            words = set(re.split(r"[._\-\s]+", path.lower()))
            if kind not in lint.clinical_kinds and words & clinical:
                problems.append(TemplateProblem(name, path, f"a {kind or 'non-clinical'} template may not "
                                                            "reference a clinical field", line))
            elif kind in REPORT_KINDS and words & credentials:
                problems.append(TemplateProblem(name, path, "a report notice may not carry a credential", line))
    return problems


def _field_paths(tree: nodes.Template) -> list[tuple[str, int]]:
    """Dotted paths read by the template: ``a``, ``a.b``, ``a.b.c`` for ``{{ a.b.c }}``,
    including subscripts with constant keys and loop variables' own names."""
    found: dict[str, int] = {}
    for node in tree.find_all((nodes.Name, nodes.Getattr, nodes.Getitem)):
        path = _path(node)
        if path:
            found.setdefault(path, node.lineno)
    return sorted(found.items())


def _path(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        base = _path(node.node)
        return f"{base}.{node.attr}" if base else node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        base = _path(node.node)
        return f"{base}.{node.arg.value}" if base else node.arg.value
    return None
