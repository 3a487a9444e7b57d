"""Wiring the FHIR front door to the core: one FhirService for the REST facade,
Subscriptions and polling alike. What it stores goes through the vault; what it
means goes through the pipeline, in the same transaction."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from adapter.bootstrap import Container
from adapter.events import AnyEvent
from fhir.routes import build_router
from fhir.service import FhirService
from fhir.settings import FhirSettings


class SessionVaultCodec:
    """The vault as the FHIR store's record codec, sealing inside the caller's
    session: a first key for a new patient is created in the same transaction
    (SQLite allows one writer at a time)."""

    def __init__(self, container: Container) -> None:
        self.container = container

    def encrypt(self, plaintext: bytes, *, subject: str, session: Session) -> bytes:
        return self.container.vault.encrypt(session, subject, plaintext)

    def decrypt(self, blob: bytes, *, session: Session) -> bytes:
        return self.container.vault.decrypt(session, blob)


def fhir_settings(container: Container) -> FhirSettings:
    settings = container.settings
    return FhirSettings(
        max_body_bytes=settings.max_body_bytes,
        # Identifiers are looked up by an HMAC whose key comes from the vault.
        identifier_index_key=bytes.fromhex(container.vault.blind_index("fhir-identifier-key", "fhir")),
    )


def publisher(container: Container):
    def publish(session: Session, events: list[AnyEvent]) -> None:
        container.pipeline.handle(session, events, now=container.clock.now())

    return publish


def fhir_service(container: Container) -> FhirService:
    return FhirService(
        publish=publisher(container),
        codec=SessionVaultCodec(container),
        clock=container.clock.now,
        settings=fhir_settings(container),
    )


def fhir_router(container: Container) -> APIRouter:
    return build_router(
        sessions=container.sessions,
        publish=publisher(container),
        codec=SessionVaultCodec(container),
        clock=container.clock.now,
        settings=fhir_settings(container),
    )
