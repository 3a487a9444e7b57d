import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", [
    "channels.sms", "channels.errors", "channels._signing", "channels._http", "channels.whatsapp",
    "channels.telegram", "channels.optout", "channels.email", "adapter.replies",
])
def test_the_examples_in_the_docstrings_hold(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
