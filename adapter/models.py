"""The core tables: patients, contacts, appointments, inbound messages,
notifications, the sandbox outbox and API tokens (see DESIGN.md "What is stored").

Personal fields are stored only as ciphertext (``*_enc``, sealed by
``compliance.crypto.Vault``) and looked up by blind index (``*_index``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from adapter.db import Base, UTCDateTime


class Patient(Base):
    __tablename__ = "patient"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    given_name_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    family_name_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    language: Mapped[str] = mapped_column(String(8), default="")
    merged_into: Mapped[str | None] = mapped_column(String(36), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PatientIdentifier(Base):
    """A blind index of one external identifier (MRN, fiscal code, FHIR id)."""

    __tablename__ = "patient_identifier"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), index=True)
    identifier_index: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="")


class Contact(Base):
    __tablename__ = "contact"
    __table_args__ = (UniqueConstraint("patient_id", "channel", "address_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(16))  # sms, whatsapp, telegram, email
    address_enc: Mapped[bytes] = mapped_column(LargeBinary)
    address_index: Mapped[str] = mapped_column(String(64), index=True)
    rank: Mapped[int] = mapped_column(Integer, default=100)
    use: Mapped[str] = mapped_column(String(16), default="")
    active: Mapped[bool] = mapped_column(default=True)  # false once the hospital drops it
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    suspended_reason: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Appointment(Base):
    __tablename__ = "appointment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(200), unique=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), index=True)
    start: Mapped[datetime] = mapped_column(UTCDateTime)
    # False: the hospital gave the day only (``start`` is its 00:00); messages name the day.
    time_known: Mapped[bool] = mapped_column(default=True, server_default=true())
    status: Mapped[str] = mapped_column(String(24))
    source: Mapped[str] = mapped_column(String(16))
    sender: Mapped[str] = mapped_column(String(200), default="")
    location: Mapped[str] = mapped_column(String(200), default="")
    # The service booked, ``system|code`` (adapter.events.Appointment.service_code); "" = not said.
    service_code: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # When the HL7 event that last set it happened (EVN/MSH-7): an older message changes
    # nothing (adapter.appointments). None when set by another source, or before it was kept.
    event_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Invoice(Base):
    """An invoice the patient is to pay, as the billing system last stated it: payment
    reminders are planned from ``issued_at`` and, when sent, read the amount here (so a
    new total replaces the one a pending reminder would have said). ``status`` is
    ``issued`` while due, else why not (``balanced``, ``cancelled``, ...). Amount,
    currency, number, notice code and issuer are sealed together in ``details_enc``."""

    __tablename__ = "invoice"
    # The retention purge's: only invoices no longer due.
    __table_args__ = (Index("ix_invoice_settled", "updated_at", sqlite_where=text("status != 'issued'"),
                            postgresql_where=text("status != 'issued'")),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(200), unique=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(24))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    details_enc: Mapped[bytes] = mapped_column(LargeBinary)
    source: Mapped[str] = mapped_column(String(16))
    sender: Mapped[str] = mapped_column(String(200), default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class InboundMessage(Base):
    """Every message as received. The unique constraint, not the code, makes a
    retransmission (same sender and control id) be processed once."""

    __tablename__ = "inbound_message"
    __table_args__ = (
        UniqueConstraint("source", "sender", "control_id", name="uq_inbound_message_identity"),
        Index("ix_inbound_message_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # hl7, fhir, subscription
    sender: Mapped[str] = mapped_column(String(200))
    control_id: Mapped[str] = mapped_column(String(200))
    message_type: Mapped[str] = mapped_column(String(40), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))  # stored, processed, error, ignored
    error: Mapped[str | None] = mapped_column(Text)
    # HL7 table 0357 code of ``error`` (an HL7 message's), for the ACK's ERR-3
    error_code: Mapped[str | None] = mapped_column(String(8))
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the erasure of a patient it concerned (GDPR art. 17) deleted its raw bytes;
    # the row stays, so a retransmission is still recognised.
    raw_erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class InboundRaw(Base):
    """An HL7 message's bytes as received, sealed; deleted after retention. A table of
    their own: marking a message processed, or counting a retransmission, rewrites its
    ``inbound_message`` row, and SQLite rewrites a row whole, a 10 MB report with it."""

    __tablename__ = "inbound_raw"

    message_id: Mapped[int] = mapped_column(ForeignKey("inbound_message.id", ondelete="CASCADE"), primary_key=True)
    raw_enc: Mapped[bytes] = mapped_column(LargeBinary)


class Notification(Base):
    """One message to one patient. Status moves one way: scheduled → claimed →
    sent → delivered → read; failed, suppressed and cancelled are ends."""

    __tablename__ = "notification"
    __table_args__ = (
        Index("ix_notification_due", "status", "scheduled_for"),
        Index("ix_notification_subject", "subject_ref", "status"),
        # The retention purge's: only notifications still holding their body.
        Index("ix_notification_body_kept", "sent_at", sqlite_where=text("body_enc IS NOT NULL"),
              postgresql_where=text("body_enc IS NOT NULL")),
        # A message's trace (adapter.message_trace): what it caused, what it withdrew.
        Index("ix_notification_message", "message_id", sqlite_where=text("message_id IS NOT NULL"),
              postgresql_where=text("message_id IS NOT NULL")),
        Index("ix_notification_withdrawn_by", "withdrawn_by", sqlite_where=text("withdrawn_by IS NOT NULL"),
              postgresql_where=text("withdrawn_by IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    rule_id: Mapped[str] = mapped_column(String(80))
    subject_ref: Mapped[str] = mapped_column(String(200), default="")
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    urgent: Mapped[bool] = mapped_column(default=False)
    channel: Mapped[str | None] = mapped_column(String(16))
    tried_channels: Mapped[list[str]] = mapped_column(JSON, default=list)
    template_id: Mapped[str | None] = mapped_column(String(120))
    template_version: Mapped[str | None] = mapped_column(String(16))
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(String(200))  # why suppressed/cancelled/failed
    provider_message_id: Mapped[str | None] = mapped_column(String(120), index=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)  # queued, or queued again (a resend)
    segments: Mapped[int | None] = mapped_column(Integer)
    cost: Mapped[float | None] = mapped_column()
    body_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # purged after retention
    decision: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the why-record
    # The inbound message whose event planned it (``inbound_message.id``), and the one whose
    # event cancelled it while it waited; None when no stored message did (a patient's
    # reply, an erasure) or before these were kept. No foreign key: the message row is
    # never deleted, and a notification's insert should not look it up.
    message_id: Mapped[int | None] = mapped_column(Integer)
    withdrawn_by: Mapped[int | None] = mapped_column(Integer)


class OutboxMessage(Base):
    """What the sandbox channel has "sent"."""

    __tablename__ = "outbox_message"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(36), index=True)
    to_enc: Mapped[bytes] = mapped_column(LargeBinary)
    body_enc: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)  # the retention purge's


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


NotificationStatus = Literal["scheduled", "claimed", "sent", "delivered", "read", "failed", "suppressed", "cancelled"]
NOTIFICATION_STATUSES: tuple[str, ...] = get_args(NotificationStatus)
PENDING = ("scheduled", "claimed")


class ApplicationAck(Base):
    """Enhanced acknowledgement mode: the application ACK owed to a sender after
    processing (MSH-16), sent as its own message to the sender's listener, with
    retries (an outbox: created with the processing result, in its transaction)."""

    __tablename__ = "application_ack"
    __table_args__ = (Index("ix_application_ack_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inbound_message_id: Mapped[int] = mapped_column(ForeignKey("inbound_message.id", ondelete="CASCADE"), unique=True)
    status: Mapped[str] = mapped_column(String(16))  # pending, done, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
