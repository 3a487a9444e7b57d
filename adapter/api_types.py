"""Parameter types shared by the HTTP routes."""

from typing import Annotated, Literal

from fastapi import Path, Query

from adapter.db import LARGEST_INTEGER
from adapter.models import NotificationStatus

# Internal patient ids are UUIDs; the pattern keeps anything else (and anything
# that could smuggle text into an audit pseudonym) out with a 422.
PATIENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"

PatientIdPath = Annotated[str, Path(pattern=PATIENT_ID_PATTERN, description="internal patient id")]
PatientIdQuery = Annotated[str | None, Query(pattern=PATIENT_ID_PATTERN, description="internal patient id")]

# Counts and positions fit the database's integers: a larger number is a 422 in the
# caller's terms, not an overflow in the database driver (a 500).
Offset = Annotated[int, Query(ge=0, le=LARGEST_INTEGER, description="rows to skip")]
Limit = Annotated[int, Query(ge=1, le=1000, description="rows to return")]
RowIdPath = Annotated[int, Path(ge=1, le=LARGEST_INTEGER, description="row id")]

# Filters name values a row can have: a typo is a 422 listing them, not an empty page.
MessageSource = Annotated[Literal["hl7", "fhir"] | None, Query(description="where the message came from")]
MessageStatus = Annotated[
    Literal["stored", "processed", "duplicate", "error", "rejected", "ignored"] | None,
    Query(description="what became of it; duplicate: processed, then received again"),
]
NotificationStatusQuery = Annotated[NotificationStatus | None, Query(description="the notification's status")]
