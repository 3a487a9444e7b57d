"""Transaction and batch Bundles (FHIR R4 §3.1.0.11 / §3.1.0.12).

A transaction is all-or-nothing: it runs in the caller's one database
transaction, so any failing entry (validation, precondition, the core refusing
the events) rolls back every entry. ``urn:uuid:`` fullUrls of created entries
are resolved to the ids the server assigns, in every ``reference`` of the Bundle.
A batch answers each entry on its own, each in its own savepoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
import re
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from sqlalchemy.orm import Session

from fhir import store
from fhir.errors import FhirError, Issue, invalid
from fhir.outcome import information, operation_outcome
from fhir.service import (
    DeleteResult,
    FhirService,
    StoredVersion,
    WriteResult,
    deletion_text,
    instant,
    new_id,
)
from fhir.validate import SUPPORTED_TYPES

# FHIR R4 §3.1.0.11.2: DELETE, POST, PUT/PATCH, GET; Patients first among writes so
# that an Appointment in the same Bundle resolves its patient.
_METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}
_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}
_T = TypeVar("_T")
_SEARCH = re.compile(r"^[A-Z][A-Za-z]+\?")  # a conditional reference: Type?criteria


@dataclass(frozen=True)
class Entry:
    index: int
    method: str
    url: str
    full_url: str
    resource: dict[str, Any] | None
    if_none_exist: str | None
    if_match: str | None

    @property
    def path(self) -> str:
        return f"Bundle.entry[{self.index}]"


def parse_bundle(data: dict[str, Any]) -> tuple[str, list[Entry]]:
    kind = data.get("type")
    if kind not in ("transaction", "batch"):
        raise invalid(f"POST / takes a transaction or batch Bundle, not {kind!r}", "Bundle.type",
                      code="not-supported" if kind else "required")
    raw_entries = data.get("entry") or []
    if not isinstance(raw_entries, list):
        raise invalid("Bundle.entry must be a list of entries", "Bundle.entry", code="structure")
    entries = []
    for i, raw in enumerate(raw_entries):
        request = raw.get("request") if isinstance(raw, dict) else None
        if not isinstance(request or {}, dict) or not isinstance(raw, dict):
            raise invalid("An entry must be an object with a request object", f"Bundle.entry[{i}]",
                          code="structure")
        request = request or {}
        for field in ("url", "ifNoneExist", "ifMatch"):
            if request.get(field) is not None and not isinstance(request[field], str):
                raise invalid(f"request.{field} must be a string", f"Bundle.entry[{i}].request.{field}",
                              code="structure")
        method = str(request.get("method", "")).upper()
        if method not in _METHOD_ORDER:
            raise invalid(f"Entry method {method or 'missing'!r} is not supported "
                          f"(DELETE, POST, PUT, GET)", f"Bundle.entry[{i}].request.method",
                          code="not-supported")
        if method in ("POST", "PUT") and not isinstance(raw.get("resource"), dict):
            raise invalid("A POST or PUT entry needs a resource", f"Bundle.entry[{i}].resource",
                          code="required")
        entries.append(Entry(i, method, str(request.get("url", "")), str(raw.get("fullUrl", "")),
                             raw.get("resource") if method in ("POST", "PUT") else None,
                             request.get("ifNoneExist"),
                             request.get("ifMatch")))
    if kind == "transaction":
        _one_entry_per_resource(entries)
    return kind, entries


def _one_entry_per_resource(entries: list[Entry]) -> None:
    """A transaction may not touch one resource twice (R4 §3.1.0.11.2: the transaction
    SHALL fail): which write would win depends on processing order, and a patient could
    be told of an appointment that became another's within the same Bundle."""
    seen: dict[str, int] = {}
    for entry in entries:
        if entry.method not in ("PUT", "DELETE"):
            continue
        target = entry.url.split("?", 1)[0].strip("/")
        if "/" not in target:
            continue  # a conditional update (Type?criteria): resolved when applied
        if target in seen:
            raise invalid(f"{target} is the target of entries {seen[target]} and {entry.index}: a transaction "
                          "may touch a resource once", f"Bundle.entry[{entry.index}].request.url", code="business-rule")
        seen[target] = entry.index


def run_transaction(service: FhirService, session: Session, entries: list[Entry],
                    link: Callable[[StoredVersion], str], sender: str | None, *,
                    minimal: bool = False) -> dict[str, Any]:
    """``minimal`` (``Prefer: return=minimal``): written entries are answered
    without their resource (status, location, ETag only)."""
    ids = _assign_ids(entries)
    ordered = sorted(entries, key=_order)
    ids.update(_conditional_references(service, session, ordered, ids))
    # Everything that needs no database write first (validation, urn:uuid resolution),
    # so that the write transaction, SQLite's one writer, is short.
    checked = _prepare_all(service, [(entry, _resolve(entry.resource, ids)) for entry in ordered])
    refused = next((p for p in checked if isinstance(p, FhirError)), None)
    if refused is not None:
        raise refused
    prepared = [p for p in checked if isinstance(p, _Prepared)]
    with store.staged_inserts(session):
        moved = _conditional_creates(service, session, prepared, ids)
        prepared = [_conditional_update_target(service, session, p, ids, moved) for p in prepared]
        if moved:  # a urn:uuid names an existing resource: references follow it
            prepared = [replace(p, resource=_resolve(p.resource, moved)) for p in prepared]
        service.codec.new_subjects([store.subject_for(ids[p.entry.full_url].split("/", 1)[1])
                                    for p in prepared if _creates_patient(p, ids)], session=session)
        answers = {p.entry.index: _in_entry(p.entry, _apply, service, session, p, ids, link,
                                            sender, minimal)
                   for p in prepared}
    return {"resourceType": "Bundle", "type": "transaction-response",
            "entry": [answers[e.index] for e in entries]}


def run_batch(service: FhirService, session: Session, entries: list[Entry],
              link: Callable[[StoredVersion], str], sender: str | None, *,
              minimal: bool = False) -> dict[str, Any]:
    answers: dict[int, dict[str, Any]] = {}
    prepared: list[_Prepared] = []
    ordered = sorted(entries, key=_order)
    for entry, checked in zip(ordered, _prepare_all(service, [(e, e.resource) for e in ordered])):
        if isinstance(checked, FhirError):
            answers[entry.index] = _refused(checked)
        else:
            prepared.append(checked)
    for p in prepared:
        try:
            with session.begin_nested():
                answers[p.entry.index] = _in_entry(p.entry, _apply, service, session, p, {},
                                                   link, sender, minimal)
        except FhirError as error:
            answers[p.entry.index] = _refused(error)
    return {"resourceType": "Bundle", "type": "batch-response",
            "entry": [answers[e.index] for e in entries]}


def _conditional_creates(service: FhirService, session: Session, prepared: list[_Prepared],
                         ids: dict[str, str]) -> dict[str, str]:
    """For a POST with ``ifNoneExist`` whose fullUrl others refer to: when it matches
    a stored resource, its urn:uuid names that one (the id assigned in advance is not
    used). Returns assigned reference → matched reference. Several matches are left
    to the create, which answers 412."""
    moved: dict[str, str] = {}
    for p in prepared:
        entry = p.entry
        if entry.method == "POST" and entry.if_none_exist and entry.full_url in ids:
            matches = _in_entry(entry, service.conditional_matches, session, p.kind,
                                entry.if_none_exist, "If-None-Exist")
            if len(matches) == 1:
                moved[ids[entry.full_url]] = ids[entry.full_url] = f"{p.kind}/{matches[0]}"
    return moved


def _conditional_update_target(service: FhirService, session: Session, prepared: _Prepared,
                               ids: dict[str, str], moved: dict[str, str]) -> _Prepared:
    """A conditional update (``PUT Type?identifier=...``) made an update of the resource it
    writes: the one match, else the id assigned to it in advance. When a match is not
    the assigned id, its fullUrl and criteria name the match (recorded in ``moved``)."""
    entry = prepared.entry
    if entry.method != "PUT" or len(prepared.path) != 1 or prepared.resource is None:
        return prepared
    assigned = ids.get(_key(entry), "").split("/", 1)[-1] or None
    target = _in_entry(entry, lambda: service.conditional_target(session, prepared.resource, prepared.query,
                                                                 new=assigned))
    if assigned and target != assigned:
        moved[ids[_key(entry)]] = ids[_key(entry)] = f"{prepared.kind}/{target}"
    return replace(prepared, path=[prepared.kind, target], query="")


def _conditional_references(service: FhirService, session: Session, entries: list[Entry],
                            ids: dict[str, str]) -> dict[str, str]:
    """R4 §3.1.0.11.2: in a transaction, a reference may be a search (``Patient?identifier=
    system|value``) naming the one resource it matches: one the Bundle creates or updates
    under those criteria, else one stored. None or several fail the transaction (404,
    412). Returns each such reference → ``Type/id``."""
    found: dict[str, str] = {}
    for entry in entries:
        for path, reference in _search_references(entry.resource):
            if reference in found or reference in ids:
                continue
            kind, _, query = reference.partition("?")
            criteria = _criteria(kind, query)
            if criteria in ids:
                found[reference] = ids[criteria]
                continue
            where = f"{entry.path}.resource{path}"
            if kind not in SUPPORTED_TYPES:
                raise FhirError(400, Issue("not-supported", f"The conditional reference {reference!r} searches "
                                           f"a type not stored here", where))
            try:
                matches = service.conditional_matches(session, kind, query, "A conditional reference")
            except FhirError as exc:
                raise FhirError(exc.status, [Issue(i.code, i.diagnostics, where) for i in exc.issues]) from None
            if len(matches) != 1:
                raise FhirError(404 if not matches else 412, Issue(
                    "not-found" if not matches else "multiple-matches",
                    f"The conditional reference {reference!r} matches {len(matches) or 'no'} {kind}", where))
            found[reference] = f"{kind}/{matches[0]}"
    return found


def _search_references(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Each ``reference`` in ``value`` that is a search (``Type?criteria``), with its FHIRPath.

    >>> _search_references({"subject": {"reference": "Patient?identifier=s|1"}, "basedOn": [{"reference": "X/2"}]})
    [('.subject.reference', 'Patient?identifier=s|1')]
    """
    out: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and _SEARCH.match(item):
                out.append((f"{path}.{key}", item))
            elif isinstance(item, (dict, list)):
                out.extend(_search_references(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.extend(_search_references(item, f"{path}[{i}]"))
    return out


def _criteria(kind: str, query: str) -> str:
    """A conditional operation's criteria in one spelling, to find the entry they name."""
    return f"{kind}?{unquote(query.lstrip('?'))}"


def _key(entry: Entry) -> str:
    """What names the resource an entry writes in ``ids``: its fullUrl, else (a
    conditional update) its criteria."""
    if entry.full_url:
        return entry.full_url
    parts = urlsplit(entry.url)
    return _criteria(parts.path.strip("/"), parts.query)


def _creates_patient(prepared: _Prepared, ids: dict[str, str]) -> bool:
    """A POST of a Patient under an id assigned here: a subject nobody has used."""
    entry = prepared.entry
    return (entry.method == "POST" and not entry.if_none_exist and entry.full_url in ids
            and prepared.kind == "Patient")


def _in_entry(entry: Entry, step: Callable[..., _T], *args: Any) -> _T:
    """``step(*args)``, its errors pointing at the entry."""
    try:
        return step(*args)
    except FhirError as exc:
        raise exc.within_entry(entry.path, _type_of(entry)) from None


def _refused(error: FhirError) -> dict[str, Any]:
    return {"response": {"status": str(error.status), "outcome": operation_outcome(error.issues)}}


def _order(entry: Entry) -> tuple[int, int, int]:
    """Deletions first (R4 §3.1.0.11.2); then Patients' writes (POST before PUT), so that
    what names them finds them stored; then the others' by method, a GET last. No resource
    is touched twice (:func:`_one_entry_per_resource`), so no write depends on another's order."""
    patient = _type_of(entry) == "Patient" and entry.method in ("POST", "PUT")
    rank = 0 if entry.method == "DELETE" else 1 if patient else 2
    return (rank, _METHOD_ORDER[entry.method], entry.index)


def _type_of(entry: Entry) -> str:
    if entry.resource and isinstance(entry.resource.get("resourceType"), str):
        return entry.resource["resourceType"]
    return urlsplit(entry.url).path.strip("/").split("/")[0]


def _assign_ids(entries: list[Entry]) -> dict[str, str]:
    """fullUrl (``urn:uuid:...``) → ``Type/id`` for entries that create or update, in
    their order; a conditional update's criteria too (``Type?criteria``, which a
    conditional reference may repeat), with the id it writes if nothing matches."""
    ids: dict[str, str] = {}
    for entry in entries:
        if not entry.resource:
            continue
        kind = _type_of(entry)
        if _conditional_update(entry):
            assigned = f"{kind}/{entry.resource.get('id') or new_id()}"
            parts = urlsplit(entry.url)
            ids[_criteria(parts.path.strip("/"), parts.query)] = assigned
            if entry.full_url:
                ids[entry.full_url] = assigned
        elif not entry.full_url:
            continue
        elif entry.method == "POST":
            ids[entry.full_url] = f"{kind}/{new_id()}"
        elif entry.method == "PUT":
            target = urlsplit(entry.url).path.strip("/").split("/")
            if len(target) == 2:
                ids[entry.full_url] = f"{target[0]}/{target[1]}"
    return ids


def _conditional_update(entry: Entry) -> bool:
    """``PUT Type?criteria``."""
    parts = urlsplit(entry.url)
    return entry.method == "PUT" and bool(parts.query) and "/" not in parts.path.strip("/")


def _resolve(value: Any, ids: dict[str, str]) -> Any:
    """Every ``reference`` naming a key of ``ids`` (a fullUrl, ``urn:uuid:...``)
    made its ``Type/id``, in place: ``value`` is the request's own JSON, decoded
    for this request alone. Returns ``value``.

    >>> _resolve({"subject": {"reference": "urn:uuid:1"}, "basedOn": [{"reference": "X/2"}]},
    ...          {"urn:uuid:1": "Patient/p1"})
    {'subject': {'reference': 'Patient/p1'}, 'basedOn': [{'reference': 'X/2'}]}
    """
    if not ids:
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                if item in ids:
                    value[key] = ids[item]
            elif isinstance(item, (dict, list)):
                _resolve(item, ids)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)):
                _resolve(item, ids)
    return value


@dataclass(frozen=True)
class _Prepared:
    """An entry checked and validated, ready for the database."""

    entry: Entry
    kind: str
    path: list[str]  # the url's path segments: [type], [type, id], [type, id, _history, vid]
    query: str
    resource: dict[str, Any] | None  # validated (None for a GET or a DELETE)


def _prepare_all(service: FhirService, pairs: list[tuple[Entry, dict[str, Any] | None]]
                 ) -> list[_Prepared | FhirError]:
    """Each entry (with its resource, references resolved) checked and
    validated, or the error that refuses it, pointing into the entry. The
    resources are validated together (in helper processes for a large Bundle,
    :mod:`fhir.validation_pool`); the checks before and after validation are
    those of :func:`_target` and :func:`_check_write`, in that order per entry."""
    out: list[_Prepared | FhirError] = []
    for entry, resource in pairs:
        try:
            out.append(_in_entry(entry, _target, entry, resource))
        except FhirError as error:
            out.append(error)
    writes = [(i, p) for i, p in enumerate(out) if isinstance(p, _Prepared) and p.resource]
    found = service.validator.validate([p.resource for _, p in writes if p.resource])
    for (i, prepared), error in zip(writes, found):
        try:
            _in_entry(prepared.entry, _check_write, prepared, error)
        except FhirError as refused:
            out[i] = refused
    return out


def _target(entry: Entry, resource: dict[str, Any] | None) -> _Prepared:
    """The entry's url and resource type checked; the resource not yet validated."""
    parts = urlsplit(entry.url)
    path = [unquote(p) for p in parts.path.strip("/").split("/") if p]
    if not path or path[0] not in SUPPORTED_TYPES:
        raise FhirError(400, Issue("not-supported", f"Entry url {entry.url!r} is not a "
                                   f"supported resource type", f"{entry.path}.request.url"))
    kind = path[0]
    if entry.method == "GET":
        if len(path) not in (2, 4) or (len(path) == 4 and path[2] != "_history"):
            raise FhirError(400, Issue("not-supported", "GET entries support read and vread",
                                       f"{entry.path}.request.url"))
        return _Prepared(entry, kind, path, parts.query, None)
    if entry.method == "DELETE":
        if len(path) != 2 or parts.query:
            raise FhirError(400, Issue("not-supported", "A DELETE entry's url is Type/id "
                                       "(conditional delete is not supported)", f"{entry.path}.request.url"))
        return _Prepared(entry, kind, path, "", None)
    assert resource is not None
    if resource.get("resourceType") != kind:
        raise invalid(f"The entry's resource is a {resource.get('resourceType')}, its url a "
                      f"{kind}", f"{entry.path}.request.url")
    return _Prepared(entry, kind, path, parts.query, resource)


def _check_write(prepared: _Prepared, invalid_resource: FhirError | None) -> None:
    """A POST or PUT entry's validation (``invalid_resource``: what refused its
    resource), then its url against the resource."""
    if invalid_resource is not None:
        raise invalid_resource
    entry, path, parsed, query = prepared.entry, prepared.path, prepared.resource, prepared.query
    assert parsed is not None
    kind = path[0]
    if entry.method == "POST" and len(path) != 1:
        raise invalid("A POST entry's url is the resource type", f"{entry.path}.request.url")
    if entry.method == "PUT":
        if len(path) == 2 and parsed.get("id") not in (None, path[1]):
            raise invalid(f"The resource id {parsed.get('id')!r} differs from the url's "
                          f"{path[1]!r}", f"{kind}.id")
        if len(path) != 2 and not query:
            raise invalid("A PUT entry's url is Type/id or Type?identifier=...",
                          f"{entry.path}.request.url")


def _apply(service: FhirService, session: Session, prepared: _Prepared, ids: dict[str, str],
           link: Callable[[StoredVersion], str], sender: str | None, minimal: bool
           ) -> dict[str, Any]:
    entry, kind, path, parsed = prepared.entry, prepared.kind, prepared.path, prepared.resource
    if entry.method == "DELETE":
        return _deleted(service.delete(session, kind, path[1], sender=sender, if_match=entry.if_match),
                        minimal)
    if parsed is None:  # GET
        found = (service.read(session, kind, path[1]) if len(path) == 2
                 else service.vread(session, kind, path[1], path[3]))
        return _answer(found, 200, link)
    if entry.method == "POST":
        if entry.full_url in ids and not entry.if_none_exist:
            parsed = {**parsed, "id": ids[entry.full_url].split("/", 1)[1]}
            result = service.write(session, parsed, sender=sender, fresh=True)
        else:
            result = service.create(session, parsed, sender=sender,
                                    if_none_exist=entry.if_none_exist,
                                    resource_id=ids[entry.full_url].split("/", 1)[1]
                                    if entry.full_url in ids else None)
    elif len(path) == 2:
        result = service.write(session, {**parsed, "id": path[1]}, sender=sender,
                               if_match=entry.if_match)
    else:
        result = service.conditional_update(session, parsed, prepared.query, sender=sender)
    answer = _answer(result.stored, result.status, link, result)
    if minimal:
        del answer["resource"]
    return answer


def _deleted(result: DeleteResult, minimal: bool) -> dict[str, Any]:
    """A DELETE entry's response (R4 §3.1.0.7): 200 with an OperationOutcome saying
    what happened, or 204 without (``minimal``); the ETag of the deletion version."""
    response: dict[str, Any] = {"status": _STATUS_TEXT[204 if minimal else 200]}
    if result.stored and result.stored.deleted:
        response["etag"] = result.stored.etag
    if not minimal:
        response["outcome"] = information(deletion_text(result))
    return {"response": response}


def _answer(stored: StoredVersion, status: int, link: Callable[[StoredVersion], str],
            result: WriteResult | None = None) -> dict[str, Any]:
    return {
        "fullUrl": link(stored).split("/_history/")[0],
        "resource": stored.resource,
        "response": {
            "status": _STATUS_TEXT.get(status, str(status)),
            "location": link(stored),
            "etag": stored.etag,
            "lastModified": instant(stored.last_updated),
        },
    }
