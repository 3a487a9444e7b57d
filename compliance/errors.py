"""Errors of the compliance package: one root, children a caller can act on."""

from __future__ import annotations


class ComplianceError(Exception):
    """Root of every error raised by ``compliance``."""


class ConfigError(ComplianceError):
    """A compliance configuration file is invalid; the message names file and field."""


class CryptoError(ComplianceError):
    """Encryption or decryption failed."""


class KeyDestroyed(CryptoError):
    """The subject's data key was destroyed (crypto-shredding): the data is gone for good."""


class UnknownKey(CryptoError):
    """A blob or wrapped key names a key this process does not hold (``key_id``, when known)."""

    def __init__(self, message: str, *, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class TamperedCiphertext(CryptoError):
    """Authentication failed: the blob, its associated data or its key was altered."""


class AuditError(ComplianceError):
    """The audit log refused an operation."""


class PersonalDataInAudit(AuditError):
    """An audit entry would carry personal data in clear; use pseudonyms."""


class AuditIntegrityError(AuditError):
    """The stored log does not match what was signed; nothing new is signed over it."""
