"""The channels' error tree.

Sending never raises for a provider's answer: :meth:`Channel.send` returns a
:class:`~channels.base.SendResult`. Exceptions are for webhooks and configuration, and the
core translates them once, at the edge:

- :class:`SignatureError` → HTTP 403, nothing stored.
- :class:`WebhookPayloadError` → HTTP 400 (signed, but not something we understand).
- :class:`ChannelConfigError` → refuse to start.
- :class:`LinkTokenError` → the Telegram deep-link payload is malformed.

Messages never carry personal data (numbers, names, message text, tokens).
"""

from __future__ import annotations

import re
from collections.abc import Mapping


class ChannelError(Exception):
    """Root of every error raised by ``channels``."""


class SignatureError(ChannelError):
    """A webhook's signature, secret token or verify token is missing or wrong (HTTP 403)."""


class WebhookPayloadError(ChannelError):
    """A correctly signed webhook whose body cannot be understood (HTTP 400)."""


class ChannelConfigError(ChannelError):
    """A channel cannot be built from the settings given. ``problems`` maps each setting
    at fault (``twilio_account_sid``) to what is wrong with it, never its value."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__("; ".join(f"setting {name}: {what}" for name, what in self.problems.items()))


def check_settings(values: Mapping[str, str], shapes: Mapping[str, tuple[str, str]] | None = None) -> None:
    """Raise :class:`ChannelConfigError` naming every setting in ``values`` that is empty
    or, given a shape in ``shapes`` (a regular expression and what it describes), not
    of that shape: all of them at once, so one start shows every fix to make.

    >>> check_settings({"twilio_from": "", "twilio_account_sid": "12345"},
    ...                {"twilio_account_sid": ("AC[0-9a-f]{32}", "a Twilio account SID")})
    Traceback (most recent call last):
    ...
    channels.errors.ChannelConfigError: setting twilio_from: required; setting twilio_account_sid: not a Twilio account SID
    """
    problems = {}
    for name, value in values.items():
        shape = (shapes or {}).get(name)
        if not value:
            problems[name] = "required"
        elif shape is not None and not re.fullmatch(shape[0], value):
            problems[name] = f"not {shape[1]}"
    if problems:
        raise ChannelConfigError(problems)


class LinkTokenError(ChannelError):
    """A Telegram deep-link token is not of the allowed shape."""
