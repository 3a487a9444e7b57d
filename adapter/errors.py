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


class DatabaseUnusable(AdapterError):
    """The database cannot be used as it is: it cannot be reached, refuses our
    credentials, has no adapter schema, or a schema older or newer than this code. The
    message says which and what to do, in one line, never with the password."""
