"""Building the live channels named by ``ADAPTER_CHANNELS``, in order of preference.
The sandbox channel records into the outbox table (``python -m adapter outbox``)."""

from __future__ import annotations

import asyncio
import weakref
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from adapter.clock import Clock
from adapter.db import insert_rows, transaction
from adapter.errors import ConfigError
from adapter.models import Notification, OutboxMessage
from adapter.settings import Settings, setting_line
from channels.base import Channel, OutboundMessage
from channels.errors import ChannelConfigError
from channels.sandbox import SandboxChannel
from compliance.crypto import Vault
from sqlalchemy import select


_OUTBOX = OutboxMessage.__table__


def outbox_sink(sessions: sessionmaker[Session], vault: Vault, clock: Clock):
    """The sandbox's storage: one row per idempotency key, sealed for the patient.

    Messages sent in the same moment are recorded in one transaction: a dispatcher
    round sends its notifications together, and one transaction each made every one
    wait for the write lock and pay a commit (a round of 50 took a second beside a
    burst being mapped). The first caller of a moment writes what is queued, again
    until nothing is; the others wait for their row. A batch that fails is written
    one message at a time, so one bad message fails alone."""
    queued: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[tuple[OutboundMessage, asyncio.Future[str]]]] = (
        weakref.WeakKeyDictionary())

    def write(messages: list[OutboundMessage]) -> list[str]:
        now: datetime = clock.now()
        keys = [m.idempotency_key for m in messages]
        with transaction(sessions) as session:
            stored = dict(session.execute(
                select(OutboxMessage.idempotency_key, OutboxMessage.id).where(OutboxMessage.idempotency_key.in_(keys))).all())
            patients = dict(session.execute(
                select(Notification.idempotency_key, Notification.patient_id).where(Notification.idempotency_key.in_(keys))).all())
            rows: dict[str, dict[str, Any]] = {}
            for message in messages:
                key = message.idempotency_key
                if key in stored or key in rows:
                    continue  # recorded before, or twice in this batch: one row
                patient_id = patients.get(key)
                subject = f"patient:{patient_id}" if patient_id else "system"
                rows[key] = {"idempotency_key": key, "patient_id": patient_id, "created_at": now,
                             "to_enc": vault.encrypt_str(session, subject, message.to),
                             "body_enc": vault.encrypt_str(session, subject, message.body)}
            # One multi-row insert (the ORM inserts rows one by one when it needs their ids).
            stored.update(insert_rows(session, _OUTBOX, list(rows.values()), returning=("idempotency_key", "id")))
        return [f"sandbox-{stored[key]}" for key in keys]

    def write_one(message: OutboundMessage) -> str:
        try:
            return write([message])[0]
        except IntegrityError:  # a concurrent retry stored it first
            return write([message])[0]

    def write_each(messages: list[OutboundMessage]) -> list[str | Exception]:
        out: list[str | Exception] = []
        for message in messages:
            try:
                out.append(write_one(message))
            except Exception as exc:  # noqa: BLE001 - this message's send is retried
                out.append(exc)
        return out

    async def flush(batch: list[tuple[OutboundMessage, asyncio.Future[str]]]) -> None:
        """Write ``batch`` and settle every future in it, whatever happens."""
        messages = [message for message, _ in batch]
        results: list[str | Exception]
        try:
            results = list(await asyncio.to_thread(write, messages))
        except Exception:  # noqa: BLE001 - written again one by one, each with its own outcome
            try:
                results = await asyncio.to_thread(write_each, messages)
            except Exception as exc:  # noqa: BLE001 - not even that: each send is retried
                results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def record(message: OutboundMessage) -> str:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        waiting = queued.get(loop)
        if waiting is not None:  # a write is in progress: the next one takes this too
            waiting.append((message, future))
            return await future
        queued[loop] = waiting = [(message, future)]
        batch: list[tuple[OutboundMessage, asyncio.Future[str]]] = []
        try:
            await asyncio.sleep(0)  # the rest of this moment's sends join
            while waiting:
                batch = waiting[:]
                del waiting[:]
                await flush(batch)
        finally:
            del queued[loop]
            for _, pending in batch + waiting:  # cancelled mid-write: their senders retry them
                if not pending.done():
                    pending.cancel()
        return await future

    return record


def build_channels(settings: Settings, *, sessions: sessionmaker[Session], vault: Vault, clock: Clock) -> dict[str, Channel]:
    """The channels of ``ADAPTER_CHANNELS``; :class:`ConfigError` with one line per
    problem, for every channel at once, naming the setting and never its value."""
    built: dict[str, Channel] = {}
    problems: list[str] = []
    for name in settings.channels:
        try:
            built[name] = _build_channel(name, settings, sessions=sessions, vault=vault, clock=clock)
        except ChannelConfigError as exc:
            problems += [setting_line(field, f"{what} for the {name} channel in ADAPTER_CHANNELS")
                         for field, what in exc.problems.items()]
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return built


def _build_channel(name: str, settings: Settings, *, sessions: sessionmaker[Session], vault: Vault,
                   clock: Clock) -> Channel:
    if name == "sandbox":
        return SandboxChannel.from_settings(settings, record=outbox_sink(sessions, vault, clock))
    if name == "sms":
        from channels.twilio import TwilioChannel

        return TwilioChannel.from_settings(settings)
    if name == "whatsapp":
        from channels.whatsapp import WhatsAppChannel

        return WhatsAppChannel.from_settings(settings)
    if name == "telegram":
        from channels.telegram import TelegramChannel

        return TelegramChannel.from_settings(settings)
    if name == "email":
        from channels.email import EmailChannel

        return EmailChannel.from_settings(settings)
    raise ConfigError(setting_line("channels", f"unknown channel {name!r} (sandbox, sms, whatsapp, telegram, email)"))
