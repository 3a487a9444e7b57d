"""config/payments.yaml: the pagoPA notice-code system and the payment link (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.errors import ConfigError
from adapter.payments import PaymentConfig, PaymentLinks, load_payments


def test_the_shipped_file_links_to_the_pagopa_notice():
    config = load_payments(Path("config/payments.yaml"))
    assert config.link(issuer="", invoice_number="2030/1", notice_code="301000000000012345") == (
        "https://pagamenti.example.org/avviso/301000000000012345")


def test_a_facility_has_its_own_link_and_values_are_url_quoted():
    config = PaymentConfig(payment_link=PaymentLinks(
        default="https://pay.example.org/{notice_code}",
        by_issuer={"Organization/nord": "https://nord.example.org/pay?n={invoice_number}"}))
    assert config.link(issuer="Organization/nord", invoice_number="2030/1 A", notice_code="") == (
        "https://nord.example.org/pay?n=2030%2F1%20A")
    assert config.link(issuer="Organization/other", invoice_number="7", notice_code="") == ""  # no notice code


def test_a_link_that_would_carry_anything_but_the_invoice_references_is_refused_naming_the_field(tmp_path):
    path = tmp_path / "payments.yaml"
    path.write_text('payment_link:\n  by_issuer:\n    Organization/x: "https://p.example.org/{fiscal_code}"\n')
    with pytest.raises(ConfigError, match=r"payments.yaml: invalid payment settings: payment_link.by_issuer.*fiscal_code"):
        load_payments(path)


def test_without_the_file_there_is_no_link():
    assert PaymentConfig().link(issuer="", invoice_number="1", notice_code="2") == ""


@pytest.mark.parametrize("template", ["https://p.example.org/{notice_code!r}", "https://p.example.org/{notice_code:>30}",
                                      "https://p.example.org/{}", "https://p.example.org/{notice_code"])
def test_a_placeholder_with_a_conversion_a_format_or_no_name_is_refused(template):
    with pytest.raises(ValueError):
        PaymentLinks(default=template)


@pytest.mark.parametrize("module", ["adapter.payments", "adapter.rules", "adapter.templates", "adapter.config_files"])
def test_the_docstring_examples_hold(module):
    import doctest
    import importlib

    assert doctest.testmod(importlib.import_module(module)).failed == 0
