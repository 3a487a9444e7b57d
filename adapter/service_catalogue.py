"""What the clinic tells patients before a visit, per service: ``config/services.yaml``.

Each entry names services as the code lists of ``config/purposes.yaml`` do (``code``, with
``system`` or not, or ``prefix``) and gives their non-clinical pre-visit instructions in
every language the templates speak, and optionally the link to a questionnaire to fill in
before the visit. The link may carry only placeholders of :data:`FORM_PLACEHOLDERS`: no
name, phone, fiscal code or date travels in a URL (it is logged by every proxy on its way).
Pure: loading and validating the file, finding a service's entry, writing the link.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator

from adapter.config_files import fill_link, foreign_placeholder, load_yaml_config
from adapter.errors import ConfigError
from adapter.rules import RuleSet
from adapter.templates import LANGUAGES
from compliance.purposes import CodeMatch

# Kinds whose messages say a service's instructions: their rules list services that have them.
INSTRUCTION_KINDS = frozenset({"pre_visit_instructions"})
# What a form link may carry: the appointment's id at the hospital (FHIR Appointment.id, HL7
# SCH-2/SCH-1 id, as received) and the language of the message ("it", "en").
FORM_PLACEHOLDERS = frozenset({"appointment_id", "language"})


class ServiceInfo(CodeMatch):
    label: str = ""  # the clinic's own name for the entry; never sent
    instructions: dict[str, str]
    form_url: str = ""

    @field_validator("instructions")
    @classmethod
    def _every_language(cls, value: dict[str, str]) -> dict[str, str]:
        missing = [language for language in LANGUAGES if not (value.get(language) or "").strip()]
        if missing:
            raise ValueError(f"give the instructions in {', '.join(missing)} too")
        unknown = sorted(set(value) - set(LANGUAGES))
        if unknown:
            raise ValueError(f"languages without templates: {', '.join(unknown)} (use {', '.join(LANGUAGES)})")
        return {language: " ".join(text.split()) for language, text in value.items()}

    @field_validator("form_url")
    @classmethod
    def _safe_link(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.netloc:
            raise ValueError("the form link must be an https:// URL")
        if (name := foreign_placeholder(value, FORM_PLACEHOLDERS)) is not None:
            raise ValueError(f"the form link may carry only {{appointment_id}} and {{language}}, not {{{name}}}")
        return value

    def form_link(self, appointment_id: str, language: str) -> str:
        """The questionnaire's link for one appointment, "" when the service has none.

        >>> info = ServiceInfo(code="X", instructions={"it": "a", "en": "b"},
        ...                    form_url="https://forms.example.org/q?a={appointment_id}&l={language}")
        >>> info.form_link("FL 1/2", "it")
        'https://forms.example.org/q?a=FL%201%2F2&l=it'
        """
        if not self.form_url:
            return ""
        return fill_link(self.form_url, appointment_id=appointment_id, language=language)


class ServiceCatalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    services: tuple[ServiceInfo, ...] = ()

    def find(self, service_code: str) -> ServiceInfo | None:
        """The first entry that covers ``service_code``, or None."""
        return next((info for info in self.services if service_code and info.matches(service_code)), None)

    def check_rules(self, rules: RuleSet, rules_path: Path, path: Path) -> None:
        """Start-up check: a rule of an instruction kind lists its services, each one as
        an entry of this file writes it (the same code, system or prefix), so that every
        appointment it covers has instructions."""
        entries = {(info.code, info.system, info.prefix) for info in self.services}
        for rule in rules.rules:
            if rule.kind not in INSTRUCTION_KINDS:
                continue
            if rule.services is None:
                raise ConfigError(f"{rules_path}: rule {rule.id}: services: list the services of {path.name} whose "
                                  "instructions it sends")
            for match in rule.services:
                if (match.code, match.system, match.prefix) not in entries:
                    named = match.model_dump(exclude_defaults=True)
                    raise ConfigError(f"{rules_path}: rule {rule.id}: services: {named} has no instructions in {path}")


def hospital_appointment_id(ref: str, source: str, sender: str) -> str:
    """The appointment's id as its hospital knows it, from the adapter's ``ref``.

    >>> hospital_appointment_id("Appointment/a1#Patient/p2", "fhir", "")
    'a1'
    >>> hospital_appointment_id("hl7:CUP^OSP_SLUCA:FL987654", "hl7", "CUP^OSP_SLUCA")
    'FL987654'
    """
    if source == "hl7":
        return ref.removeprefix(f"hl7:{sender}:")
    return ref.partition("#")[0].removeprefix("Appointment/")


def load_services(path: Path) -> ServiceCatalogue:
    """Load and validate ``config/services.yaml``; no file is an empty catalogue. A bad
    file raises ConfigError naming it and the field."""
    return load_yaml_config(path, ServiceCatalogue, "services", missing=ServiceCatalogue())
