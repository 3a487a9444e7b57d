"""Start-up checks of the message templates, beyond compiling them:

- no template asks the patient to reply with a word the carrier itself treats as
  an opt-out (Twilio: STOP, UNSUBSCRIBE, END, QUIT, STOPALL, REVOKE, OPTOUT, CANCEL)
  to mean anything else — "reply CANCEL to cancel" would unsubscribe them;
- every template, rendered with long realistic values, fits in the configured
  number of SMS parts (each part is paid for); a character that forces UCS-2 is named.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from adapter.errors import ConfigError
from adapter.service_catalogue import INSTRUCTION_KINDS, ServiceCatalogue
from adapter.templates import LANGUAGES, TemplateBook
from channels.optout import check_reply_instructions
from channels.sms import TemplateFitProblem, check_template_fits

# Longest-case values: the render that costs the most parts.
SAMPLE_CONTEXT = {
    "patient": {"first_name": "Massimiliano"},
    "clinic": {"name": "Poliambulatorio Specialistico San Luca", "phone": "+39 02 1234 5678"},
    "appointment": {"start": datetime(2026, 9, 30, 16, 45, tzinfo=UTC), "location": "Ambulatorio 12"},
    "report": {"available_until": "15/11/2026"},
    "link": "https://portale.example.org/r/Abcdefghij0123456789",
    "invoice": {"amount": Decimal("12345.67"), "currency": "EUR", "number": "FT-2026/000123"},
    "payment": {"link": "https://pagamenti.example.org/avviso/301000000000012345"},
}


def check_reply_words(templates: TemplateBook) -> None:
    """Refuse (ConfigError) a template whose reply instruction a carrier would act on."""
    problems = [
        f"{template_id}: {problem}"
        for template_id, source in sorted(templates.sources.items())
        for problem in check_reply_instructions(source)
        if problem.severity == "error"
    ]
    if problems:
        raise ConfigError(f"{templates.root}: " + "; ".join(problems))


def sms_fit_problems(templates: TemplateBook, max_segments: int,
                     services: ServiceCatalogue | None = None) -> list[TemplateFitProblem]:
    """Templates that render to more SMS parts than allowed (reported at start-up); those
    that say pre-visit instructions, with each entry of ``services`` (and its form link)."""
    visits = [(f" with {info.label or info.code or info.prefix}",
               {language: {"instructions": info.instructions.get(language, ""),
                           "form_link": info.form_link("FL9876543210", language)} for language in LANGUAGES})
              for info in (services or ServiceCatalogue()).services]
    rendered = {}
    for template_id in sorted(templates.sources):
        language, kind = template_id.split("/", 1)
        samples = visits if kind in INSTRUCTION_KINDS and visits else [("", {})]
        for suffix, visit in samples:
            context = {**SAMPLE_CONTEXT, "visit": visit.get(language) or {"instructions": "", "form_link": ""}}
            try:
                rendered[template_id + suffix] = templates.render(kind, language, context).body
            except Exception:  # noqa: BLE001 - a template needing other values is checked when used
                continue
    return check_template_fits(rendered, max_segments)
