"""What we owe hospitals, for operators: ``hl7 acks`` (application ACKs, enhanced
mode) and ``writebacks`` (patients' confirmations and cancellations), each with
``resend ID...`` for what was given up after ``ADAPTER_HOSPITAL_RETRY_HOURS``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from adapter.db import LARGEST_INTEGER

console = Console()

acks_app = typer.Typer(invoke_without_command=True, rich_markup_mode="markdown", help="Application ACKs owed to senders (enhanced mode).")
writebacks_app = typer.Typer(invoke_without_command=True, rich_markup_mode="markdown",
                             help="Patients' confirmations and cancellations written back to hospitals.")

Failed = Annotated[bool, typer.Option("--failed", help="only those given up")]
All = Annotated[bool, typer.Option("--all", help="delivered ones too")]
Limit = Annotated[int, typer.Option(min=1, max=10_000, help="how many, oldest first")]
Ids = Annotated[list[int], typer.Argument(min=1, max=LARGEST_INTEGER, help="ids, as the listing shows them")]


def _statuses(failed: bool, all_: bool) -> tuple[str, ...]:
    if failed:
        return ("failed",)
    return ("pending", "failed", "done") if all_ else ("pending", "failed")


def _when(moment) -> str:  # noqa: ANN001 - a datetime or None
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


@acks_app.callback()
def acks(ctx: typer.Context, failed: Failed = False, all_: All = False, limit: Limit = 100) -> None:
    """Application ACKs not delivered yet (pending, or failed: given up), with the last error."""
    if ctx.invoked_subcommand is not None:
        return
    from adapter.cli import _container, print_table
    from adapter.db import read_transaction
    from adapter.models import ApplicationAck, InboundMessage

    container = _container()
    table = Table("id", "message id", "sender", "control id", "status", "attempts", "queued (UTC)",
                  "next attempt (UTC)", "last error")
    with read_transaction(container.sessions) as session:
        rows = session.execute(
            select(ApplicationAck, InboundMessage.sender, InboundMessage.control_id)
            .join(InboundMessage, InboundMessage.id == ApplicationAck.inbound_message_id)
            .where(ApplicationAck.status.in_(_statuses(failed, all_)))
            .order_by(ApplicationAck.id).limit(limit)
        ).all()
        for ack, sender, control_id in rows:
            table.add_row(str(ack.id), str(ack.inbound_message_id), sender, control_id, ack.status, str(ack.attempts),
                          _when(ack.created_at), _when(ack.next_attempt_at) if ack.status == "pending" else "",
                          ack.last_error or "")
    if rows:
        print_table(table)
    else:
        console.print("no application ACKs to show")


@acks_app.command("resend")
def acks_resend(ids: Ids) -> None:
    """Queue application ACKs again (given up, or delivered but lost at the hospital):
    sent at once, then retried as new ones are."""
    from adapter.models import ApplicationAck

    _resend(ApplicationAck, ids)


@writebacks_app.callback()
def writebacks(ctx: typer.Context, failed: Failed = False, all_: All = False, limit: Limit = 100) -> None:
    """Write-backs not delivered yet (pending, or failed: given up), with the last error."""
    if ctx.invoked_subcommand is not None:
        return
    from adapter.cli import _container, print_table
    from adapter.db import read_transaction
    from adapter.reply_models import Writeback

    container = _container()
    table = Table("id", "appointment", "action", "target", "status", "attempts", "queued (UTC)",
                  "next attempt (UTC)", "last error")
    with read_transaction(container.sessions) as session:
        rows = list(session.scalars(
            select(Writeback).where(Writeback.status.in_(_statuses(failed, all_))).order_by(Writeback.id).limit(limit)
        ))
        for row in rows:
            table.add_row(str(row.id), row.appointment_ref, row.action, row.target, row.status, str(row.attempts),
                          _when(row.created_at), _when(row.next_attempt_at) if row.status == "pending" else "",
                          row.last_error or "")
    if rows:
        print_table(table)
    else:
        console.print("no write-backs to show")


@writebacks_app.command("resend")
def writebacks_resend(ids: Ids) -> None:
    """Queue write-backs again (given up, or delivered but lost at the hospital): sent
    at once, then retried as new ones are."""
    from adapter.reply_models import Writeback

    _resend(Writeback, ids)


def _resend(outbox: type, ids: list[int]) -> None:
    from adapter.cli import _container
    from adapter.db import transaction
    from adapter.writeback import resend

    container = _container()
    with transaction(container.sessions) as session:
        outcome = resend(session, outbox, ids, now=container.clock.now())
    for row_id, what in outcome.items():
        console.print(f"{row_id}: {what}")
    raise typer.Exit(0 if all(what == "queued again" for what in outcome.values()) else 1)
