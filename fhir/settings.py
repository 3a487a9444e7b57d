"""What the core can tune about the FHIR front door. The core builds one from
the adapter's ``Settings``; the defaults suit local development and tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

DEV_INDEX_KEY = b"adapter-local-development-fhir-identifier-index"
# Invoice.identifier.system of a pagoPA notice code (codice avviso) unless configured
# (config/payments.yaml notice_code_systems).
PAGOPA_NOTICE_SYSTEM = "https://adapter.example.org/fhir/NamingSystem/pagopa-notice-code"


@dataclass(frozen=True)
class FhirSettings:
    max_body_bytes: int = 5 * 1024 * 1024
    # Identifier systems that name the patient key, in order of preference
    # (e.g. the hospital MRN system). A Patient with none of them is keyed by
    # Identifier(system="fhir:Patient", value=<logical id>).
    patient_key_systems: tuple[str, ...] = ()
    # Origin.sender for REST pushes (the authenticated client is the core's business).
    sender: str = "fhir-rest"
    # Invoice.identifier systems whose value is a pagoPA notice code; any other
    # identifier is the invoice number.
    notice_code_systems: tuple[str, ...] = (PAGOPA_NOTICE_SYSTEM,)
    # Announce amended/corrected reports as a second ReportReady(amended=True).
    announce_amended_reports: bool = True
    # HMAC key for the identifier blind index (conditional create/update). The
    # core must pass a key derived from its master key outside local development.
    identifier_index_key: bytes = DEV_INDEX_KEY
    # Source servers we accept notifications from and fetch from (id-only,
    # $events, searches), besides those we created Subscriptions on.
    trusted_servers: tuple[str, ...] = ()
    upstream_auth: Mapping[str, httpx.Auth] = field(default_factory=dict)
    upstream_timeout_s: float = 10.0
    # A subscription without a heartbeat period is silent after this long;
    # one with a period after ``silence_factor`` periods.
    default_silence_s: float = 3600.0
    silence_factor: float = 2.0
