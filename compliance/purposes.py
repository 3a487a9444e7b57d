"""The compliance policy as data: purposes and lawful bases, which message kind serves which
purpose, report rules, template lint words, retention and the record of processing.
Loaded from ``config/purposes.yaml`` and validated at start-up; errors name file and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from compliance.errors import ConfigError

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "config" / "purposes.yaml"

LawfulBasisCode = Literal["care", "contract", "legal_obligation", "consent"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Purpose(_Strict):
    description: str = ""
    lawful_basis: LawfulBasisCode
    articles: str
    explicit_consent: bool

    @model_validator(mode="after")
    def _consent_basis_needs_consent(self) -> Purpose:
        if self.lawful_basis == "consent" and not self.explicit_consent:
            raise ValueError("a purpose resting on consent must set explicit_consent: true")
        return self


class LawfulBasis(_Strict):
    """What :func:`compliance.consent.evaluate` needs to know about a purpose."""

    purpose: str
    code: LawfulBasisCode
    articles: str
    explicit_consent: bool

    def describe(self) -> str:
        return f"{self.code} ({self.articles})"


class CodeMatch(_Strict):
    """Which codes an entry of a code list covers: ``code`` exactly (of any system, or with
    ``system`` only that system's; a code sent without a system matches either), or every
    code that starts with ``prefix`` (local catalogues, any case).

    >>> CodeMatch(system="http://loinc.org", code="7917-8").matches("http://loinc.org|7917-8")
    True
    >>> CodeMatch(prefix="GEN-").matches("L|gen-01"), CodeMatch(code="A1", system="L").matches("X|A1")
    (True, False)
    """

    code: str = ""
    system: str = ""
    prefix: str = ""

    @model_validator(mode="after")
    def _code_or_prefix(self) -> CodeMatch:
        if bool(self.code) == bool(self.prefix):
            raise ValueError("give exactly one of code or prefix")
        return self

    def matches(self, raw: str) -> bool:
        """Whether it covers ``raw``, a code as ``system|code`` or the code alone."""
        system, _, code = raw.rpartition("|")
        if self.prefix:
            return code.upper().startswith(self.prefix.upper())
        return code == self.code and (not system or not self.system or system == self.system)


class ExcludedCode(CodeMatch):
    reason: Literal["hiv", "genetic", "other"]
    label: str = ""


class ReportRules(_Strict):
    availability_days: int = Field(45, gt=0, le=45)
    excluded: list[ExcludedCode] = []


class TemplateLint(_Strict):
    clinical_words: list[str]
    credential_words: list[str] = []
    allowed_fields: list[str] = []
    clinical_kinds: list[str] = []


class Retention(_Strict):
    inbound_raw_days: int = Field(gt=0)
    sent_body_days: int = Field(gt=0)
    notification_days: int = Field(gt=0)
    settled_invoice_days: int = Field(default=90, gt=0)  # an invoice no longer due, kept for questions
    consent_years: int = Field(gt=0)
    audit_years: int = Field(gt=0)


class Processing(_Strict):
    controller: str
    dpo_contact: str
    data_subjects: list[str]
    data_categories: list[dict[str, str]]
    special_categories: str
    recipients: dict[str, str]
    transfers: str
    security_measures: list[str]


class CompliancePolicy(_Strict):
    purposes: dict[str, Purpose]
    kinds: dict[str, str]
    report_rules: ReportRules
    template_lint: TemplateLint
    retention: Retention
    processing: Processing
    # Each purpose's basis, made once (the policy is frozen): every consent decision asks
    # for one, and making the model cost more than the decision's other steps.
    _bases: dict[str, LawfulBasis] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: object, /) -> None:
        self._bases = {
            name: LawfulBasis(purpose=name, code=p.lawful_basis, articles=p.articles, explicit_consent=p.explicit_consent)
            for name, p in self.purposes.items()
        }

    @model_validator(mode="after")
    def _kinds_name_known_purposes(self) -> CompliancePolicy:
        for kind, purpose in self.kinds.items():
            if purpose not in self.purposes:
                raise ValueError(f"kinds.{kind}: unknown purpose {purpose!r}")
        return self

    def basis(self, purpose: str) -> LawfulBasis:
        found = self._bases.get(purpose)
        if found is None:
            raise ConfigError(f"unknown purpose {purpose!r}")
        return found

    def purpose_of(self, kind: str) -> str:
        try:
            return self.kinds[kind]
        except KeyError:
            raise ConfigError(f"message kind {kind!r} has no purpose in purposes.yaml") from None

    def basis_for_kind(self, kind: str) -> LawfulBasis:
        return self.basis(self.purpose_of(kind))

    def check_kinds(self, kinds: set[str] | list[str]) -> None:
        """Start-up check: every kind the trigger rules use has a purpose."""
        missing = sorted(set(kinds) - set(self.kinds))
        if missing:
            raise ConfigError(f"purposes.yaml: kinds without a purpose: {', '.join(missing)}")


def load_policy(path: Path = DEFAULT_PATH) -> CompliancePolicy:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        return CompliancePolicy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc
