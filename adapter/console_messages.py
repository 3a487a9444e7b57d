"""The console's inbound messages, for integration engineers and operators: the message
store as ``GET /api/messages`` lists it (same filters, same query), one message's trace
as ``GET /api/messages/{id}`` gives it, and, for an admin, the Replay that
``hl7 replay ID`` does. No message content and no personal data on these pages:
messages by id, sender, control id, type and status, patients by their internal id."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from adapter.api_types import Offset, RowIdPath
from adapter.auth import Principal
from adapter.bootstrap import Container
from adapter.console import PAGE_SIZE, actor_of, console_form, console_user, page
from adapter.db import read_transaction
from adapter.error_store import outcome_code, replay, since_moment
from adapter.message_trace import MessageFilter, find_messages, status_counts, trace

STATUSES = ("stored", "processed", "duplicate", "error", "rejected", "ignored")
Text = Annotated[str, Query(max_length=200)]
ReplayOutcome = Literal["processed", "still_failing", "not_replayed"]


def messages_router(container: Container) -> APIRouter:
    router = APIRouter(prefix="/ui/messages", tags=["console"], include_in_schema=False)
    officer = console_user(container, "officer")
    admin_form = console_form(container, "admin")  # replaying acts on patients' messages, as the CLI's operator does

    @router.get("", response_class=HTMLResponse)
    def messages(request: Request, status: Text = "", sender: Text = "", control_id: Text = "", type: Text = "",  # noqa: A002
                 source: Text = "", since: Text = "", offset: Offset = 0, *,
                 user: Principal = Depends(officer)) -> HTMLResponse:
        """The inbound message store, newest first, narrowed as the API narrows it."""
        filters = {"status": status.strip(), "sender": sender.strip(), "control_id": control_id.strip(),
                   "type": type.strip(), "source": source.strip(), "since": since.strip()}
        error = ""
        try:
            moment = since_moment(filters["since"], container.clock.now()) if filters["since"] else None
        except ValueError as exc:
            moment, error = None, f"since: {exc}"
        matching = MessageFilter(
            source=filters["source"] if filters["source"] in ("hl7", "fhir") else None,
            status=filters["status"] if filters["status"] in STATUSES else None,
            control_id=filters["control_id"] or None, sender=filters["sender"] or None,
            message_type=filters["type"] or None, since=moment)
        with read_transaction(container.sessions) as db:
            total, items = find_messages(db, matching, limit=PAGE_SIZE, offset=offset)
            counts = status_counts(db, matching)
        return page(request, "messages.html", user, status_code=422 if error else 200, error=error,
                    filters=filters, items=items, total=total, counts=counts, statuses=STATUSES, offset=offset,
                    page_size=PAGE_SIZE, query=urlencode({k: v for k, v in filters.items() if v}))

    @router.get("/{message_id}", response_class=HTMLResponse)
    def message(request: Request, message_id: RowIdPath, replayed: ReplayOutcome | None = None, *,
                user: Principal = Depends(officer)) -> HTMLResponse:
        """What one message caused and withdrew, its application ACK and error-store state."""
        with read_transaction(container.sessions) as db:
            found = trace(db, message_id)
        if found is None:
            raise HTTPException(404, f"no inbound message with id {message_id}")
        return page(request, "message.html", user, m=found.message, trace=found, replayed=replayed)

    @router.post("/{message_id}/replay")
    def replay_message(message_id: RowIdPath, *, user: Principal = Depends(admin_form)) -> Response:
        """``hl7 replay ID``: process the message again, then show its trace."""
        said = outcome_code(replay(container, [message_id], actor=actor_of(user))[message_id])
        if said == "no_such_message":  # gone since the page was shown: its trace page says so
            said = "not_replayed"
        return RedirectResponse(f"/ui/messages/{message_id}?replayed={said}", status_code=303)

    return router
