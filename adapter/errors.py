"""Errors of the adapter core. Each edge translates them once: an ACK with ERR,
an OperationOutcome, an HTTP problem or a CLI message."""


class AdapterError(Exception):
    """Root of the core's errors."""


class ConfigError(AdapterError):
    """A configuration file or setting is missing or invalid; the message names file
    and field, one line per problem."""


class NotFound(AdapterError):
    """The thing asked for does not exist (or is not visible to the caller)."""


class Conflict(AdapterError):
    """The request contradicts what is stored."""
