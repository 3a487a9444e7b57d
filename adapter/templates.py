"""Message templates: Jinja2 in a sandbox, one file per kind and language under
``config/templates/<lang>/<kind>.txt.j2``, and beside it the e-mail subject line,
``<kind>.subject.j2``; dates written as people write them (Babel), in the clinic's
time zone."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime, format_time
from babel.numbers import format_currency
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from adapter.errors import ConfigError

LANGUAGES = ("it", "en")
# "martedì 1 dicembre alle 09:30" / "Tuesday 1 December at 09:30"
WHEN_PATTERN = {"it": "EEEE d MMMM 'alle' HH:mm", "en": "EEEE d MMMM 'at' HH:mm"}


@dataclass(frozen=True)
class Rendered:
    body: str
    template_id: str  # "<lang>/<kind>"
    template_version: str  # first 12 hex of the sha256 of its sources (text, then subject)
    subject: str | None = None  # the e-mail subject line; None when the kind has none


def when_text(moment: datetime, language: str, tz: ZoneInfo) -> str:
    local = moment.astimezone(tz)
    return format_datetime(local, WHEN_PATTERN.get(language, WHEN_PATTERN["en"]), locale=language)


def money_text(amount: Decimal, currency: str, language: str) -> str:
    """An amount as people write it (Babel, CLDR): ``35,00 €`` in Italian, ``€35.00`` in English.

    >>> money_text(Decimal("35"), "EUR", "it").replace("\xa0", " "), money_text(Decimal("35"), "EUR", "en")
    ('35,00 €', '€35.00')
    """
    return format_currency(amount, currency, locale=language)


class TemplateBook:
    """All templates, loaded and compiled once at start-up."""

    def __init__(self, root: Path, *, default_language: str, tz: ZoneInfo) -> None:
        self.root = root
        self.default_language = default_language
        self.tz = tz
        self._env = ImmutableSandboxedEnvironment(
            undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
        )
        self.sources = self._load(root, ".txt.j2")
        self.subject_sources = self._load(root, ".subject.j2")
        self._compiled = {tid: self._compile(root, tid, source, ".txt.j2") for tid, source in self.sources.items()}
        self._subjects = {tid: self._compile(root, tid, source, ".subject.j2")
                          for tid, source in self.subject_sources.items()}
        # Worked out once: each send asks for them. What was sent is both sources.
        self._versions = {
            tid: hashlib.sha256((source + "\0" + self.subject_sources.get(tid, "")).encode()).hexdigest()[:12]
            for tid, source in self.sources.items()}
        self._languages = {tid.split("/")[0] for tid in self.sources}
        if default_language not in self._languages:
            raise ConfigError(f"{root}: no templates for the default language {default_language!r}")

    @staticmethod
    def _load(root: Path, suffix: str) -> dict[str, str]:
        """``<lang>/<kind>`` → source, of the files under ``root`` ending in ``suffix``."""
        return {f"{path.parent.name}/{path.name.removesuffix(suffix)}": path.read_text(encoding="utf-8")
                for path in sorted(root.glob(f"*/*{suffix}"))}

    def _compile(self, root: Path, template_id: str, source: str, suffix: str) -> Any:
        try:
            return self._env.from_string(source)
        except TemplateError as exc:
            raise ConfigError(f"{root}/{template_id}{suffix}: template does not compile: {exc}") from exc

    def kinds(self, language: str) -> set[str]:
        return {tid.split("/")[1] for tid in self.sources if tid.startswith(f"{language}/")}

    def require_kinds(self, kinds: set[str]) -> None:
        """Start-up check: every kind the rules can produce has a template in
        the default language."""
        missing = kinds - self.kinds(self.default_language)
        if missing:
            raise ConfigError(
                f"{self.root}/{self.default_language}: missing templates for {sorted(missing)}"
            )

    def pick_language(self, language: str) -> str:
        primary = (language or "").split("-")[0].lower()
        return primary if primary in LANGUAGES and primary in self._languages else self.default_language

    def render(self, kind: str, language: str, context: dict[str, Any]) -> Rendered:
        lang = self.pick_language(language)
        template_id = f"{lang}/{kind}"
        if template_id not in self._compiled:
            template_id = f"{self.default_language}/{kind}"
            lang = self.default_language
        template = self._compiled.get(template_id)
        if template is None:
            raise ConfigError(f"no template for kind {kind!r}")
        values = localise(context, lang, self.tz)
        body = " ".join(template.render(**values).split())
        subject = self._subjects.get(template_id)
        return Rendered(body=body, template_id=template_id, template_version=self._versions[template_id],
                        subject=" ".join(subject.render(**values).split()) if subject is not None else None)


def localise(context: dict[str, Any], language: str, tz: ZoneInfo) -> dict[str, Any]:
    """Add the human forms of the appointment time and of an invoice's amount to the context."""
    out = dict(context)
    invoice = out.get("invoice")
    if invoice and isinstance(invoice.get("amount"), Decimal):
        out["invoice"] = {**invoice, "amount": money_text(invoice["amount"], invoice["currency"], language)}
    appointment = dict(out.get("appointment") or {})
    start = appointment.get("start")
    if isinstance(start, datetime):
        local = start.astimezone(tz)
        appointment["date"] = format_date(local, "EEEE d MMMM", locale=language)
        if appointment.get("time_known", True):
            appointment["when"] = when_text(start, language, tz)
            appointment["time"] = format_time(local, "HH:mm", locale=language)
        else:  # the hospital gave the day only: no time is made up
            appointment["when"], appointment["time"] = appointment["date"], ""
    out["appointment"] = appointment
    return out
