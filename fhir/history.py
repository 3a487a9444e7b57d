"""History Bundle entries that record a deletion (FHIR R4 http.html#history): a
Subscription notification's, or a ``_history`` interaction's when polling. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.errors import invalid
from fhir.mapping import parse_instant


@dataclass(frozen=True)
class Deletion:
    """A resource the source server deleted, with the version its deletion made
    there when known (to order it against the resource's other versions)."""

    resource_type: str
    resource_id: str
    source_version: str | None = None
    source_updated: datetime | None = None

    @classmethod
    def of(cls, reference: str, source_version: str | None = None,
           source_updated: datetime | None = None) -> Deletion:
        """``[base/]Type/id[/_history/N]``: N is the deletion's version, unless given.

        >>> Deletion.of("https://ehr/fhir/Appointment/a1/_history/4")
        Deletion(resource_type='Appointment', resource_id='a1', source_version='4', source_updated=None)
        """
        path, _, version = reference.partition("/_history/")
        kind, rid = path.rstrip("/").split("/")[-2:]
        return cls(kind, rid, source_version or version or None, source_updated)


def deletion_in(entry: dict[str, Any]) -> Deletion | None:
    """What a history entry deleted (``request.method`` DELETE, or a ``response.status``
    of 410, and no resource), else None; its version from ``response.etag``, else from
    a ``request.url`` naming it. Raises :class:`fhir.errors.FhirError` (400)
    for a deletion that names no ``Type/id``.

    >>> deletion_in({"request": {"method": "DELETE", "url": "Appointment/a1"},
    ...              "response": {"status": "204", "etag": 'W/"3"'}})
    Deletion(resource_type='Appointment', resource_id='a1', source_version='3', source_updated=None)
    >>> deletion_in({"fullUrl": "https://ehr/fhir/Appointment/a1", "response": {"status": "204"},
    ...              "request": {"method": "DELETE", "url": "Appointment/a1/_history/3"}}).source_version
    '3'
    """
    request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
    response = entry.get("response") if isinstance(entry.get("response"), dict) else {}
    if isinstance(entry.get("resource"), dict) or not (
            str(request.get("method", "")).upper() == "DELETE"
            or str(response.get("status", "")).startswith("410")):
        return None
    reference = str(entry.get("fullUrl") or request.get("url") or "").split("?")[0]
    if reference.strip("/").count("/") < 1:
        raise invalid(f"A deleted entry names no Type/id: {reference!r}", "Bundle.entry.fullUrl")
    etag = str(response.get("etag") or "").removeprefix("W/").strip('"') or str(
        request.get("url") or "").partition("/_history/")[2]
    return Deletion.of(reference, etag or None, parse_instant(response.get("lastModified")))
