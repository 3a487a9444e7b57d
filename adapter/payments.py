"""What a payment reminder needs beyond the rules: which Invoice identifier is the
pagoPA notice code, and the link to the page where the patient pays
(``config/payments.yaml``, validated at start-up)."""

from __future__ import annotations

from pathlib import Path
from string import Formatter

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapter.config_files import fill_link, foreign_placeholder, load_yaml_config
from fhir.settings import PAGOPA_NOTICE_SYSTEM

# What a payment link may carry: the invoice's own references, never a name or fiscal code.
LINK_PLACEHOLDERS = frozenset({"invoice_number", "notice_code"})


def _check_link(template: str) -> str:
    """A link template names only :data:`LINK_PLACEHOLDERS`, each as ``{name}``.

    >>> _check_link("https://pay.example.org/{patient_name}")
    Traceback (most recent call last):
    ValueError: {patient_name} is not a payment link placeholder; use {invoice_number} or {notice_code}
    """
    if (name := foreign_placeholder(template, LINK_PLACEHOLDERS)) is not None:
        raise ValueError(f"{{{name}}} is not a payment link placeholder; use {{invoice_number}} or {{notice_code}}")
    return template


class PaymentLinks(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str = ""
    by_issuer: dict[str, str] = Field(default_factory=dict)

    @field_validator("default")
    @classmethod
    def _default(cls, value: str) -> str:
        return _check_link(value)

    @field_validator("by_issuer")
    @classmethod
    def _by_issuer(cls, value: dict[str, str]) -> dict[str, str]:
        for template in value.values():
            _check_link(template)
        return value


class PaymentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    notice_code_systems: tuple[str, ...] = (PAGOPA_NOTICE_SYSTEM,)
    payment_link: PaymentLinks = PaymentLinks()

    def link(self, *, issuer: str, invoice_number: str, notice_code: str) -> str:
        """The payment link for an invoice of ``issuer`` (its Invoice.issuer reference; the
        default link for any other), or "" when none is configured or the one configured
        needs a value the invoice lacks (no notice code): the message then says how else
        to pay. Values are URL-quoted.

        >>> PaymentConfig(payment_link=PaymentLinks(default="https://p.example.org/a/{notice_code}")).link(
        ...     issuer="", invoice_number="2030/1", notice_code="301000000000012345")
        'https://p.example.org/a/301000000000012345'
        """
        template = self.payment_link.by_issuer.get(issuer, self.payment_link.default)
        values = {"invoice_number": invoice_number, "notice_code": notice_code}
        needed = {name for _, name, _, _ in Formatter().parse(template) if name}
        if not template or any(not values[name] for name in needed):
            return ""
        return fill_link(template, **values)


def load_payments(path: Path) -> PaymentConfig:
    """``config/payments.yaml``; a missing file is the defaults (no payment link), a bad
    one raises ConfigError naming the file and the field."""
    return load_yaml_config(path, PaymentConfig, "payment settings", missing=PaymentConfig())
