"""Tables of the FHIR front door, on the project's one ``Base``.

fhir_resource        every stored version; content encrypted through the RecordCodec.
                     A deletion (FHIR R4 §3.1.0.7) is a version of its own, ``deleted``,
                     whose content is only the resource's type, id and meta.
                     Unique (type, id, version_id): two writers never make the same
                     version; unique (type, id, source_version): the same version from
                     the source is processed once, guaranteed by the database.
fhir_identifier      blind index (HMAC) of the current version's identifiers, for
                     conditional create / update without storing identifiers in clear.
fhir_subscription    one row per Subscription on a source server: counters, last
                     notification, heartbeat period, for gap and silence detection.
fhir_poll_cursor     per source server and type, where the last ``_lastUpdated`` poll ended.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import false

from adapter.db import Base, UTCDateTime


class FhirResource(Base):
    __tablename__ = "fhir_resource"
    __table_args__ = (
        UniqueConstraint("resource_type", "resource_id", "version_id",
                         name="uq_fhir_resource_version"),
        UniqueConstraint("resource_type", "resource_id", "source_version",
                         name="uq_fhir_resource_source_version"),
        Index("ix_fhir_resource_patient", "patient_id"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(40))
    resource_id: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str | None] = mapped_column(String(32))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    # meta.versionId / meta.lastUpdated as the sender or source server gave them
    source_version: Mapped[str | None] = mapped_column(String(64))
    source_last_updated: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sender: Mapped[str] = mapped_column(String(500), default="")
    content: Mapped[bytes] = mapped_column(LargeBinary)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class FhirIdentifier(Base):
    __tablename__ = "fhir_identifier"

    resource_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class FhirSubscription(Base):
    __tablename__ = "fhir_subscription"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(String(500), unique=True)  # absolute Subscription URL
    server: Mapped[str] = mapped_column(String(500))  # the source server's base
    topic: Mapped[str] = mapped_column(String(500), default="")
    resource_type: Mapped[str] = mapped_column(String(40), default="")
    content: Mapped[str] = mapped_column(String(20), default="id-only")
    heartbeat_period_s: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="requested")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_notification_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_event_number: Mapped[int] = mapped_column(BigInteger, default=0)
    last_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    events_recovered: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")


class FhirPollCursor(Base):
    __tablename__ = "fhir_poll_cursor"

    server: Mapped[str] = mapped_column(String(500), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    last_updated: Mapped[datetime | None] = mapped_column(UTCDateTime())
    polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


TABLES = [
    FhirResource.__table__,
    FhirIdentifier.__table__,
    FhirSubscription.__table__,
    FhirPollCursor.__table__,
]
