"""The one wiring place: engines, vault, audit, rules, templates, pipeline, intake,
channels and dispatcher are built here from the settings. The web app, the CLI,
the in-process worker and the Celery worker all call :func:`build`."""

from __future__ import annotations

import logging

from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from adapter.clock import Clock, SystemClock
from adapter.compliance_gate import ComplianceGate
from adapter.db import make_engine, make_sessionmaker
from adapter.dispatch import Clinic, Dispatcher
from adapter.errors import ConfigError
from adapter.fhir_intake import FhirIntake
from adapter.fhir_wiring import build_fhir_intake
from adapter.intake import HL7Intake
from adapter.key_rotation import find_master_key, master_key_watch, retired_master_keys
from adapter.payments import load_payments
from adapter.pipeline import Pipeline
from adapter.quiet_hours import SendingWindow
from adapter.rules import RuleSet, load_rules
from adapter.service_catalogue import ServiceCatalogue, load_services
from adapter.settings import Settings
from adapter.template_checks import check_reply_words, sms_fit_problems
from adapter.templates import TemplateBook
from channels.base import Channel
from compliance.audit import AuditLog
from compliance.signing import AuditSigner
from compliance.crypto import Vault, master_key_from_settings
from hl7.facilities import FacilityConfig, load_facilities


log = logging.getLogger(__name__)


@dataclass
class Container:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    clock: Clock
    vault: Vault
    audit: AuditLog
    gate: ComplianceGate
    rules: RuleSet
    templates: TemplateBook
    services: ServiceCatalogue
    pipeline: Pipeline
    facilities: FacilityConfig
    intake: HL7Intake
    fhir: FhirIntake
    channels: dict[str, Channel]
    dispatcher: Dispatcher

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.settings.timezone)


def build(settings: Settings, *, clock: Clock | None = None, channels: dict[str, Channel] | None = None) -> Container:
    """Build everything from ``settings``; configuration errors surface here, at
    start-up, naming the file and field."""
    clock = clock or SystemClock()
    tz = ZoneInfo(settings.timezone)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    vault = Vault.open(sessions, master_key(settings), previous=retired_master_keys(settings),
                       find_master=lambda key_id: find_master_key(settings, key_id),
                       current_master=master_key_watch(settings))
    audit = AuditLog(sessions, audit_signer(settings))
    rules = load_rules(settings.config_dir / "rules.yaml")
    services = load_services(settings.config_dir / "services.yaml")
    services.check_rules(rules, settings.config_dir / "rules.yaml", settings.config_dir / "services.yaml")
    templates = TemplateBook(settings.config_dir / "templates", default_language=settings.default_language, tz=tz)
    templates.require_kinds({rule.kind for rule in rules.rules})
    check_reply_words(templates)
    for problem in sms_fit_problems(templates, settings.sms_max_segments, services):
        log.warning("template too long for SMS: %s", problem)
    facilities = load_facilities(settings.config_dir / "facilities.yaml")
    payments = load_payments(settings.config_dir / "payments.yaml")
    window = SendingWindow(
        tz, settings.sending_window_start, settings.sending_window_end, holidays=not settings.send_on_holidays,
        local_holidays=facilities.local_holidays(),
    )
    gate = ComplianceGate.from_config(vault=vault, audit=audit, config_dir=settings.config_dir, templates=templates)
    pipeline = Pipeline(rules=rules, gate=gate, tz=tz, window=window)
    intake = HL7Intake(sessions=sessions, vault=vault, pipeline=pipeline, facilities=facilities, clock=clock)
    fhir = build_fhir_intake(settings, sessions=sessions, vault=vault, pipeline=pipeline, clock=clock,
                             notice_code_systems=payments.notice_code_systems)
    if channels is None:
        from adapter.providers import build_channels

        channels = build_channels(settings, sessions=sessions, vault=vault, clock=clock)
    dispatcher = Dispatcher(
        sessions=sessions,
        gate=gate,
        templates=templates,
        channels=channels,
        preference=settings.channels,
        clock=clock,
        clinic=Clinic(settings.clinic_name, settings.clinic_phone),
        rules=rules,
        services=services,
        batch_size=settings.claim_batch_size,
        lease=timedelta(seconds=settings.claim_lease_s),
        window=window,
        rate_limits=settings.channel_rate_limits,
        payments=payments,
    )
    return Container(
        settings=settings, engine=engine, sessions=sessions, clock=clock, vault=vault, audit=audit,
        gate=gate, rules=rules, templates=templates, services=services, pipeline=pipeline, facilities=facilities,
        intake=intake, fhir=fhir, channels=channels, dispatcher=dispatcher,
    )


def audit_signer(settings: Settings) -> AuditSigner:
    """The audit log's signing key from ADAPTER_AUDIT_SIGNING_KEY_FILE, else a file under
    var/ created on first start (local and test only). Production never makes one: every
    process signs tree heads, on whichever host, and ``audit verify`` trusts its own key
    only, so two hosts with keys of their own each found the other's heads 'bad
    signature'. The key is made once and the same file given to every host."""
    path = settings.audit_signing_key_file
    if settings.environment == "production" and (path is None or not path.is_file()):
        raise ConfigError(
            "production needs ADAPTER_AUDIT_SIGNING_KEY_FILE naming an existing Ed25519 key, the same file on "
            "every host (create it once: openssl genpkey -algorithm ed25519 -out audit-signing.key)"
            + (f"; {path} does not exist" if path else ""))
    return AuditSigner.from_file(path or settings.var_dir / "audit-signing.key")


def master_key(settings: Settings):
    """The master key from ADAPTER_MASTER_KEY, else ADAPTER_MASTER_KEY_FILE, else a
    file under var/ created on first start (local and test only)."""
    secret = settings.master_key.get_secret_value() if settings.master_key else None
    path = settings.master_key_file
    if not secret and path is None:
        if settings.environment == "production":
            raise ConfigError("production needs ADAPTER_MASTER_KEY or ADAPTER_MASTER_KEY_FILE")
        path = settings.var_dir / "master.key"
    return master_key_from_settings(secret, path)
