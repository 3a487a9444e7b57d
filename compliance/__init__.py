"""Consent, encryption of personal data, the audit log and data-subject rights.

The core calls this package; nobody else touches keys or the audit table.

- :mod:`compliance.crypto` — ``Vault`` (envelope encryption, blind indexes, shredding,
  rotation), ``LocalMasterKey``, ``VaultCodec``
- :mod:`compliance.audit` — ``AuditLog`` (append, signed tree heads, proofs, verify, export)
- :mod:`compliance.consent` (pure) and :mod:`compliance.consent_store` (the registry)
- :mod:`compliance.purposes` — ``config/purposes.yaml``: purposes, lawful bases, rules
- :mod:`compliance.report_rules` — Italian report-notice rules and the template lint
- :mod:`compliance.records` — record of processing (art. 30), retention cut-offs
- :mod:`compliance.merkle` — RFC 6962 trees (pure)
"""

from compliance.audit import AuditDraft, AuditLog, AuditRecord, ConsistencyProof, InclusionProof, TreeHead
from compliance.audit_verify import Problem, VerifyReport
from compliance.consent import ConsentDecision, Statement, evaluate
from compliance.consent_store import apply_consent_event, decide, record_consent, records_for, withdraw
from compliance.crypto import LocalMasterKey, MasterKeyProvider, Vault, VaultCodec, master_key_from_settings
from compliance.errors import (
    AuditError,
    AuditIntegrityError,
    ComplianceError,
    ConfigError,
    CryptoError,
    KeyDestroyed,
    PersonalDataInAudit,
    TamperedCiphertext,
    UnknownKey,
)
from compliance.purposes import CompliancePolicy, LawfulBasis, load_policy
from compliance.pseudonyms import patient_subject
from compliance.report_rules import lint_templates, link_expires_at, report_notice_allowed
from compliance.records import record_of_processing, retention_cutoffs
from compliance.signing import AuditSigner

__all__ = [
    "AuditDraft", "AuditError", "AuditIntegrityError", "AuditLog", "AuditRecord", "AuditSigner", "ComplianceError",
    "CompliancePolicy", "ConfigError", "ConsentDecision", "ConsistencyProof", "CryptoError",
    "InclusionProof", "KeyDestroyed", "LawfulBasis", "LocalMasterKey", "MasterKeyProvider",
    "PersonalDataInAudit", "Problem", "Statement", "TamperedCiphertext", "TreeHead", "UnknownKey",
    "Vault", "VaultCodec", "VerifyReport", "apply_consent_event", "decide", "evaluate",
    "lint_templates", "link_expires_at", "load_policy", "master_key_from_settings", "patient_subject",
    "record_consent", "record_of_processing", "records_for", "report_notice_allowed",
    "retention_cutoffs", "withdraw",
]
