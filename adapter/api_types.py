"""Parameter types shared by the HTTP routes."""

from typing import Annotated

from fastapi import Path, Query

# Internal patient ids are UUIDs; the pattern keeps anything else (and anything
# that could smuggle text into an audit pseudonym) out with a 422.
PATIENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"

PatientIdPath = Annotated[str, Path(pattern=PATIENT_ID_PATTERN, description="internal patient id")]
PatientIdQuery = Annotated[str | None, Query(pattern=PATIENT_ID_PATTERN, description="internal patient id")]
