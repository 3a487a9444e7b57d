"""The tables of how patients want to be reached: Telegram deep-link tokens and the
channel a patient chose in answer to a contact check.

Neither holds personal data in clear: a link row keeps the SHA-256 digest of its one-time
token (the token itself exists only in the deep link handed to the patient), and a
preference is a channel name.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from adapter.db import Base, UTCDateTime


class TelegramLink(Base):
    """One deep-link token minted for a patient. Usable once (``used_at`` set by a
    conditional UPDATE) and only before ``expires_at``."""

    __tablename__ = "telegram_link"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ContactPreference(Base):
    """The channel a patient explicitly asked to be reached by (a contact-check reply);
    the dispatcher tries it first. ``source`` says where the choice came from
    (``reply/<id>``)."""

    __tablename__ = "contact_preference"

    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
