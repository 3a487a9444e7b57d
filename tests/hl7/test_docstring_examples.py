"""The ``>>>`` examples in the hl7 modules' docstrings are true."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    ["hl7.header", "hl7.message", "hl7.ack", "hl7.mllp", "hl7.datatypes", "hl7.facilities",
     "hl7.client", "hl7.batch"],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0
