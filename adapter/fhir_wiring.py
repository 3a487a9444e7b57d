"""Wiring the FHIR front door to the core: one FhirService for the REST facade,
Subscriptions and polling alike. What it stores goes through the vault; what it
means goes through the pipeline, after the answer (adapter/fhir_intake.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from sqlalchemy.orm import Session, sessionmaker

from adapter.clock import Clock
from adapter.events import AnyEvent
from adapter.fhir_intake import FhirIntake
from adapter.pipeline import Pipeline
from adapter.settings import Settings
from compliance.crypto import Vault
from compliance.models import DataKey
from fhir import store
from fhir.routes import build_router
from fhir.service import FhirService
from fhir.settings import FhirSettings
from fhir.validation_pool import ValidationPool, default_processes

if TYPE_CHECKING:
    from adapter.bootstrap import Container


class SessionVaultCodec:
    """The vault as the FHIR store's record codec, sealing inside the caller's
    session: a first key for a new patient is created in the same transaction
    (SQLite allows one writer at a time). The keys of patients a Bundle creates
    are staged with its other rows (:func:`fhir.store.stage`)."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def encrypt(self, plaintext: bytes, *, subject: str, session: Session) -> bytes:
        return self.vault.encrypt(session, subject, plaintext)

    def decrypt(self, blob: bytes, *, session: Session) -> bytes:
        return self.vault.decrypt(session, blob)

    def new_subjects(self, subjects: list[str], *, session: Session) -> None:
        store.stage(session, DataKey.__table__, self.vault.key_rows_for_new(session, subjects))


def fhir_settings(settings: Settings, vault: Vault, notice_code_systems: tuple[str, ...] | None = None) -> FhirSettings:
    return FhirSettings(
        max_body_bytes=settings.max_body_bytes,
        **({"notice_code_systems": notice_code_systems} if notice_code_systems is not None else {}),
        # Identifiers are looked up by an HMAC whose key comes from the vault.
        identifier_index_key=bytes.fromhex(vault.blind_index("fhir-identifier-key", "fhir")),
    )


def build_fhir_intake(settings: Settings, *, sessions: sessionmaker[Session], vault: Vault,
                      pipeline: Pipeline, clock: Clock,
                      notice_code_systems: tuple[str, ...] | None = None) -> FhirIntake:
    def publish(session: Session, events: list[AnyEvent]) -> None:
        pipeline.handle(session, events, now=clock.now())

    processes = settings.fhir_validation_processes
    service = FhirService(publish=publish, codec=SessionVaultCodec(vault), clock=clock.now,
                          settings=fhir_settings(settings, vault, notice_code_systems),
                          validator=ValidationPool(default_processes() if processes is None else processes))
    def publish_many(session: Session, batches: list[list[AnyEvent]]) -> list[Exception | None]:
        outcomes = pipeline.handle_many(session, batches, now=clock.now())
        return [outcome if isinstance(outcome, Exception) else None for outcome in outcomes]

    return FhirIntake(sessions=sessions, service=service, clock=clock, publish_many=publish_many,
                      inline=settings.fhir_processing == "inline")


def fhir_service(container: Container) -> FhirService:
    return container.fhir.service


def fhir_router(container: Container) -> APIRouter:
    return build_router(sessions=container.sessions, service=container.fhir.service)
