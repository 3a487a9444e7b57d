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


class ChannelError(Exception):
    """Root of every error raised by ``channels``."""


class SignatureError(ChannelError):
    """A webhook's signature, secret token or verify token is missing or wrong (HTTP 403)."""


class WebhookPayloadError(ChannelError):
    """A correctly signed webhook whose body cannot be understood (HTTP 400)."""


class ChannelConfigError(ChannelError):
    """A channel cannot be built from the settings given; the message names the setting."""


class LinkTokenError(ChannelError):
    """A Telegram deep-link token is not of the allowed shape."""
