"""The tables of the way back: provider callbacks as received, patients' replies,
wrong-number incidents and the write-back outbox to the hospital.

Personal data (phone numbers in callbacks, reply text) is stored only sealed by the
vault (``*_enc``); everything else is pseudonymous (patient ids, provider ids).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from adapter.db import Base, UTCDateTime


class WebhookEvent(Base):
    """One provider callback, stored before it is processed. The unique key makes a
    provider's retry of the same callback a no-op. ``status``: stored, processed,
    unmatched (a status for a message id not known yet: tried again for a while), error."""

    __tablename__ = "webhook_event"
    __table_args__ = (
        UniqueConstraint("provider", "dedupe_key", name="uq_webhook_event_dedupe"),
        Index("ix_webhook_event_status_id", "status", "id"),
        # The retention purge's: only callbacks still holding the request as received.
        Index("ix_webhook_event_request_kept", "received_at", sqlite_where=text("request_enc IS NOT NULL"),
              postgresql_where=text("request_enc IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))  # status, inbound
    dedupe_key: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(200))
    request_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # purged after retention
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEventPatient(Base):
    """A patient a provider callback concerned (the sender of a reply, the addressee of
    a message whose status it reports), recorded when it is processed: erasure (GDPR
    art. 17) finds by it the callbacks as received that hold their number or words."""

    __tablename__ = "webhook_event_patient"

    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_event.id", ondelete="CASCADE"), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(36), primary_key=True, index=True)


class PatientReply(Base):
    """A patient's reply and what we made of it. ``status`` open is the operator queue;
    ``patient_id`` is empty when the sender matches no contact."""

    __tablename__ = "patient_reply"
    __table_args__ = (
        UniqueConstraint("provider", "provider_message_id", name="uq_patient_reply_provider_id"),
        Index("ix_patient_reply_status_id", "status", "id"),
        # The retention purge's: only replies still holding what the patient wrote.
        Index("ix_patient_reply_text_kept", "received_at", sqlite_where=text("text_enc IS NOT NULL"),
              postgresql_where=text("text_enc IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str] = mapped_column(String(120))
    channel: Mapped[str] = mapped_column(String(16))
    patient_id: Mapped[str | None] = mapped_column(String(36), index=True)
    notification_id: Mapped[int | None] = mapped_column(Integer)
    subject_ref: Mapped[str] = mapped_column(String(200), default="")
    intent: Mapped[str] = mapped_column(String(24))
    action: Mapped[str] = mapped_column(String(24))
    status: Mapped[str] = mapped_column(String(16))  # open, done
    text_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    handled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Incident(Base):
    """A possible personal-data breach (a message read by the wrong person): the
    data-protection officer has until ``deadline_at`` to notify (GDPR art. 33, 72 hours)."""

    __tablename__ = "incident"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))  # wrong_number
    patient_id: Mapped[str | None] = mapped_column(String(36), index=True)
    notification_id: Mapped[int | None] = mapped_column(Integer)
    reply_id: Mapped[int | None] = mapped_column(ForeignKey("patient_reply.id"))
    channel: Mapped[str] = mapped_column(String(16))
    contacts_suspended: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))  # open, closed
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Writeback(Base):
    """One confirmation or cancellation to send back to the hospital (outbox pattern:
    created in the transaction that records the reply). ``target`` is fhir or hl7;
    ``status`` pending, done or failed (retries exhausted)."""

    __tablename__ = "writeback"
    __table_args__ = (
        UniqueConstraint("reply_id", "target", name="uq_writeback_reply_target"),
        Index("ix_writeback_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reply_id: Mapped[int] = mapped_column(ForeignKey("patient_reply.id"))
    appointment_ref: Mapped[str] = mapped_column(String(200))
    patient_id: Mapped[str] = mapped_column(String(36), index=True)
    action: Mapped[str] = mapped_column(String(16))  # confirm, cancel
    target: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)  # queued, or queued again (a resend)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
