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


class UnknownAppointment(AdapterError):
    """An event that names its appointment and not its patient (an HL7 SIU without PID) is
    about an appointment not stored here: never booked through the adapter, or booked before
    it was installed. Nothing says whose it is; once its booking has arrived it can be
    applied (replayed). ``ref``: the appointment's, which holds no personal data."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"appointment {ref} is not known here and the event does not name its patient")
        self.ref = ref


class DatabaseUnusable(AdapterError):
    """The database cannot be used as it is: it cannot be reached, refuses our
    credentials, has no adapter schema, or a schema older or newer than this code. The
    message says which and what to do, in one line, never with the password."""
