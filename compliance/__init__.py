"""Consent, encryption of personal data, the audit log and data-subject rights."""
