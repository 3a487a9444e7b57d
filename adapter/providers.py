"""Building the live channels named by ``ADAPTER_CHANNELS``, in order of preference.
The sandbox channel records into the outbox table (``python -m adapter outbox``)."""

from __future__ import annotations

import asyncio
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from adapter.clock import Clock
from adapter.db import transaction
from adapter.errors import ConfigError
from adapter.models import Notification, OutboxMessage
from adapter.settings import Settings
from channels.base import Channel, OutboundMessage
from channels.sandbox import SandboxChannel
from compliance.crypto import Vault
from sqlalchemy import select


def outbox_sink(sessions: sessionmaker[Session], vault: Vault, clock: Clock):
    """The sandbox's storage: one row per idempotency key, sealed for the patient."""

    def write(message: OutboundMessage) -> str:
        now: datetime = clock.now()
        with transaction(sessions) as session:
            existing = session.scalar(select(OutboxMessage).where(OutboxMessage.idempotency_key == message.idempotency_key))
            if existing is not None:
                return f"sandbox-{existing.id}"
            patient_id = session.scalar(
                select(Notification.patient_id).where(Notification.idempotency_key == message.idempotency_key)
            )
            subject = f"patient:{patient_id}" if patient_id else "system"
            row = OutboxMessage(
                idempotency_key=message.idempotency_key,
                patient_id=patient_id,
                to_enc=vault.encrypt_str(session, subject, message.to),
                body_enc=vault.encrypt_str(session, subject, message.body),
                created_at=now,
            )
            session.add(row)
            session.flush()
            return f"sandbox-{row.id}"

    async def record(message: OutboundMessage) -> str:
        try:
            return await asyncio.to_thread(write, message)
        except IntegrityError:  # a concurrent retry stored it first
            return await asyncio.to_thread(write, message)

    return record


def build_channels(settings: Settings, *, sessions: sessionmaker[Session], vault: Vault, clock: Clock) -> dict[str, Channel]:
    built: dict[str, Channel] = {}
    for name in settings.channels:
        if name == "sandbox":
            built[name] = SandboxChannel.from_settings(settings, record=outbox_sink(sessions, vault, clock))
        elif name == "sms":
            from channels.twilio import TwilioChannel

            built[name] = TwilioChannel.from_settings(settings)
        elif name == "whatsapp":
            from channels.whatsapp import WhatsAppChannel

            built[name] = WhatsAppChannel.from_settings(settings)
        elif name == "telegram":
            from channels.telegram import TelegramChannel

            built[name] = TelegramChannel.from_settings(settings)
        elif name == "email":
            from channels.email import EmailChannel

            built[name] = EmailChannel.from_settings(settings)
        else:
            raise ConfigError(f"ADAPTER_CHANNELS: unknown channel {name!r} (sandbox, sms, whatsapp, telegram, email)")
    return built
