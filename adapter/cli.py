"""The command line (INTERFACES.md): ``python -m adapter <command>``."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select

from adapter.cli_compliance import audit_app, gdpr_app, keys_app
from adapter.db import LARGEST_INTEGER
from adapter.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", add_completion=False, help="The adapter: hospital events to patients' phones.")
hl7_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="HL7 v2: send, error store, replay, application ACKs.")
tokens_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="API tokens.")
app.add_typer(hl7_app, name="hl7")
app.add_typer(tokens_app, name="tokens")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(gdpr_app, name="gdpr")


def _register_subcommands() -> None:
    from adapter.cli_fhir import fhir_app
    from adapter.cli_hospital import acks_app, writebacks_app

    app.add_typer(fhir_app, name="fhir")
    hl7_app.add_typer(acks_app, name="acks")
    app.add_typer(writebacks_app, name="writebacks")


_register_subcommands()
console = Console()
err = Console(stderr=True)


def refuse_to_start(problems: list[str]) -> typer.Exit:
    """Print one ``configuration error:`` line per problem, unwrapped, and give the
    exit (status 2) to raise."""
    for line in problems:
        err.print(f"[red]configuration error:[/red] {escape(line)}", soft_wrap=True)
    return typer.Exit(2)


@contextmanager
def database_errors() -> Iterator[None]:
    """A database that cannot be used as it is (unreachable, never migrated, a schema
    older or newer than this code) stops the command: one ``database error:`` line
    saying what to do, exit status 2."""
    from adapter.errors import DatabaseUnusable

    try:
        yield
    except DatabaseUnusable as exc:
        err.print(f"[red]database error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc


def _container(settings: Settings | None = None):
    """Everything a command needs, on a database at this code's schema (checked first,
    creating nothing: commands other than migrate, serve, worker and tokens create
    never make a database)."""
    from adapter.bootstrap import build
    from adapter.errors import ConfigError
    from adapter.migrate import require_current_schema
    from compliance.errors import ConfigError as ComplianceConfigError  # keys, purposes.yaml

    settings = settings or get_settings()
    with database_errors():
        require_current_schema(settings.database_url)
    try:
        return build(settings)
    except (ConfigError, ComplianceConfigError) as exc:  # one problem a line
        raise refuse_to_start(str(exc).splitlines()) from exc


def _migrate(settings: Settings) -> None:
    from adapter.migrate import upgrade

    with database_errors():
        upgrade(settings.database_url)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    settings = get_settings()
    _migrate(settings)
    console.print("database is up to date")


def admin_token_file(settings: Settings) -> Path:
    return settings.var_dir / "admin-token"


@app.command()
def serve(
    http_port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="HTTP port (default ADAPTER_HTTP_PORT; 0: any free)")] = None,
    mllp_port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="MLLP port (default ADAPTER_MLLP_PORT; 0: any free)")] = None,
    workers: Annotated[
        Optional[str],
        typer.Option(help="embedded: send from this process; celery: leave it to workers (default when ADAPTER_BROKER_URL is set)"),
    ] = None,
) -> None:
    """Serve HTTP and MLLP, with the in-process worker and the configured channels."""
    from adapter.auth import create_first_admin_token
    from compliance.crypto import write_secret_file
    from adapter.db import transaction
    from adapter.logging_setup import configure
    from adapter.runtime import freeze_start_up_objects, mllp_tls_problems, serve as run

    settings = get_settings()
    workers = workers or ("celery" if settings.broker_url else "embedded")
    if workers not in ("embedded", "celery"):
        err.print(f"[red]--workers {workers}[/red]: choose embedded or celery")
        raise typer.Exit(2)
    if problems := mllp_tls_problems(settings):
        raise refuse_to_start(problems)
    configure(settings.log_level, json_logs=settings.log_json)
    _migrate(settings)
    container = _container(settings)
    with transaction(container.sessions) as session:
        token = create_first_admin_token(session, now=container.clock.now())
    if token is not None:  # written once stored: a file never holds a token the database lacks
        path = admin_token_file(settings)
        write_secret_file(path, (token + "\n").encode())
        console.print(f"first start: admin token (shown once, also in {path}):\n  {token}")
    freeze_start_up_objects()
    asyncio.run(
        run(
            container,
            http_port=http_port or settings.http_port,
            mllp_port=mllp_port or settings.mllp_port,
            embedded_worker=workers == "embedded",
        )
    )


@app.command()
def worker(
    concurrency: Annotated[Optional[int], typer.Option(min=1, max=256, help="pool processes (default ADAPTER_WORKER_CONCURRENCY)")] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork or solo")] = "prefork",
) -> None:
    """A Celery worker (production mode, ADAPTER_BROKER_URL set): sends due
    notifications, processes stored inbound messages, and sends hospitals their
    write-backs and application ACKs. Run as many as needed."""
    settings = get_settings()
    if not settings.broker_url:
        err.print(
            "[red]ADAPTER_BROKER_URL is not set[/red]: a worker needs a broker "
            "(amqp://user:pass@host:5672// or redis://host:6379/0). Without one, "
            "`python -m adapter serve` sends from its own process."
        )
        raise typer.Exit(2)
    if pool not in ("prefork", "solo"):
        err.print(f"[red]--pool {pool}[/red]: choose prefork or solo")
        raise typer.Exit(2)
    from celery import signals

    from adapter.celery_app import ClaimLoop, make_celery
    from adapter.errors import ConfigError
    from adapter.logging_setup import configure

    configure(settings.log_level, json_logs=settings.log_json)
    try:
        celery = make_celery(settings)
    except ConfigError as exc:
        raise refuse_to_start(str(exc).splitlines()) from exc
    _migrate(settings)  # as serve does: a worker started first on a new database finds it ready
    claim_loop = ClaimLoop(celery, _container(settings))
    from adapter.runtime import freeze_start_up_objects

    freeze_start_up_objects()  # before the pool forks: fewer pages copied, shorter collections
    signals.setup_logging.connect(lambda **_: None, weak=False)  # keep our JSON logs
    signals.worker_ready.connect(lambda **_: claim_loop.start(), weak=False)
    signals.worker_shutdown.connect(lambda **_: claim_loop.stop(), weak=False)
    celery.worker_main([
        "worker",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--pool={pool}",
        f"--queues={settings.celery_queue}",
        f"--hostname=adapter-{os.getpid()}@%h",
        f"--loglevel={settings.log_level}",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ])


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option(help="ehr, officer or admin")],
    name: Annotated[str, typer.Option(help="who or what holds it")] = "",
) -> None:
    """Print a new API token (stored hashed; shown only now)."""
    from adapter.auth import ROLES, create_token
    from adapter.db import make_engine, make_sessionmaker, transaction
    from adapter.models import ApiToken  # noqa: F401

    if role not in ROLES:
        err.print(f"[red]unknown role {role!r}[/red]: choose one of {', '.join(ROLES)}")
        raise typer.Exit(2)
    settings = get_settings()
    _migrate(settings)
    sessions = make_sessionmaker(make_engine(settings.database_url))
    from adapter.clock import SystemClock

    with transaction(sessions) as session:
        token = create_token(session, role=role, name=name or role, now=SystemClock().now())  # type: ignore[arg-type]
    print(token)


@app.command()
def outbox(limit: Annotated[int, typer.Option(min=1, max=10_000, help="how many, newest first")] = 50) -> None:
    """What the sandbox channel has "sent"."""
    from adapter.db import transaction
    from adapter.models import OutboxMessage

    container = _container()
    table = Table("id", "at (UTC)", "to", "message")
    with transaction(container.sessions) as session:
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit))
        for row in rows:
            table.add_row(
                str(row.id),
                row.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                container.vault.decrypt(session, row.to_enc).decode(),
                container.vault.decrypt(session, row.body_enc).decode(),
            )
    console.print(table)


def print_table(table: Table, out: Console | None = None) -> None:
    """A table on the terminal, wrapped to its width (a long value folds, never cut
    short with an ellipsis); piped or redirected, at its natural width, one row a
    line, so that ``grep`` and ``less -S`` see whole rows."""
    out = out or console
    for column in table.columns:
        column.overflow = "fold"
    if out.is_terminal:
        out.print(table)
    else:
        natural = out.measure(table, options=out.options.update_width(10_000)).maximum
        Console(file=out.file, width=max(out.width, natural), no_color=out.no_color).print(table)


Facility = Annotated[Optional[str], typer.Option(
    help="only this sender: its MSH-4 (OSP_SLUCA) or as listed (CUP^OSP_SLUCA)")]
Since = Annotated[Optional[str], typer.Option(
    metavar="WHEN", help="only received since: 30m, 2h, 7d back, or a date or time (2026-11-28, "
                         "2026-11-28T10:00:00+01:00; UTC unless an offset is given)")]
MessageType = Annotated[Optional[str], typer.Option("--type", help="only this type (SIU) or type and trigger (SIU^S12)")]
Reason = Annotated[Optional[str], typer.Option(help="only those whose reason contains this text, any case")]


def _error_filter(container, facility: str | None, since: str | None, message_type: str | None,  # noqa: ANN001
                  reason: str | None):  # noqa: ANN202 - adapter.error_store.ErrorFilter, imported late
    from adapter.error_store import ErrorFilter, since_moment

    moment = None
    if since is not None:
        try:
            moment = since_moment(since, container.clock.now())
        except ValueError as exc:
            err.print(f"[red]--since {escape(since)}[/red]: {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
    return ErrorFilter(facility=facility or None, since=moment, message_type=message_type or None, reason=reason or None)


@hl7_app.command("errors")
def hl7_errors(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="how many to show")] = 100,
    newest: Annotated[bool, typer.Option("--newest", help="the most recent first (default: oldest first)")] = False,
    facility: Facility = None,
    since: Since = None,
    message_type: MessageType = None,
    reason: Reason = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line (id, source, received_at, sender, "
                                                         "control_id, type, status, reason, replayable), for scripts")] = False,
) -> None:
    """Messages that could not be processed, with the reason; says how many there are in
    all, and which can no longer be replayed (raw message deleted after retention, or
    erased with a patient it concerned). Never shows message content."""
    from adapter.db import read_transaction
    from adapter.error_store import find_errors

    container = _container()
    matching = _error_filter(container, facility, since, message_type, reason)
    with read_transaction(container.sessions) as session:
        total, entries = find_errors(session, matching, limit=limit, newest=newest)
    order = "most recent" if newest else "oldest"
    more = (f"{len(entries)} of {total} shown, the {order} first: --limit N shows more"
            + ("" if newest else ", --newest the most recent first"))
    if as_json:
        for entry in entries:
            print(json.dumps(entry.as_json(), ensure_ascii=False))
        if total > len(entries):
            err.print(more, soft_wrap=True)
        return
    narrowed = matching != type(matching)()
    if not total:
        console.print("no message in the error store matches" if narrowed else "the error store is empty")
        return
    table = Table("id", "received (UTC)", "sender", "control id", "type", "status", "reason", "replay")
    for entry in entries:
        table.add_row(str(entry.id), entry.received_at.strftime("%Y-%m-%d %H:%M:%S"), entry.sender, entry.control_id,
                      entry.message_type, entry.status, entry.reason,
                      f"no: {entry.not_replayable}" if entry.not_replayable else "yes")
    print_table(table)
    console.print(more if total > len(entries) else f"{total} in the error store"
                  + (" match these filters" if narrowed else ""), soft_wrap=True)


@hl7_app.command("trace")
def hl7_trace(
    control_id: Annotated[str, typer.Argument(help="MSH-10 (or a FHIR version's Type/id/_history/N)")],
    sender: Facility = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line per message, as "
                                                         "GET /api/messages/{id} answers")] = False,
) -> None:
    """What became of a message: its status, the notifications it planned and those it
    withdrew (a reschedule's moved reminders, a cancellation's), each with its status and
    channel, the application ACK owed for it (enhanced mode) and, in the error store, why
    and whether it can be replayed. Several senders may use the same control id: each
    message is shown. Exit 1 when none matches. Never shows message content."""
    from adapter.db import read_transaction
    from adapter.message_trace import messages_with_control_id, trace

    container = _container()
    with read_transaction(container.sessions) as session:
        traces = [trace(session, message_id) for message_id in messages_with_control_id(session, control_id, sender)]
    if not traces:
        err.print(f"no inbound message has control id {escape(control_id)}"
                  + (f" from {escape(sender)}" if sender else ""), soft_wrap=True)
        raise typer.Exit(1)
    for found in traces:
        assert found is not None  # read in the same transaction as its id
        if as_json:
            print(json.dumps(found.as_json(), ensure_ascii=False))
        else:
            _print_trace(found)


def _print_trace(found) -> None:  # noqa: ANN001 - adapter.message_trace.MessageTrace, imported late
    message = found.message
    console.print(f"message {message['id']}: {message['source']} {escape(message['type'])} from "
                  f"{escape(message['sender'])}, control id {escape(message['control_id'])}, received "
                  f"{message['received_at'][:19].replace('T', ' ')} UTC: {message['status']}"
                  + (f" (received {message['duplicates'] + 1} times)" if message["duplicates"] else ""), soft_wrap=True)
    if found.error_store is not None:
        replay = found.error_store.not_replayable
        console.print(f"  error store: {escape(found.error_store.reason)}; "
                      + (f"not replayable: {replay}" if replay else f"replayable: hl7 replay {message['id']}"),
                      soft_wrap=True)
    if (ack := found.application_ack) is not None:
        console.print(f"  application ACK: {ack.status}, {ack.attempts} attempt{'s' if ack.attempts != 1 else ''}"
                      + (f", last error: {escape(ack.last_error)}" if ack.last_error else ""), soft_wrap=True)
    if not found.caused and not found.withdrew:
        console.print("  no notification planned or withdrawn")
        return
    table = Table("notification", "this message", "kind", "status", "channel", "scheduled (UTC)", "patient", "reason")
    for what, notices in (("planned", found.caused), ("withdrew", found.withdrew)):
        for notice in notices:
            table.add_row(str(notice.id), what, notice.kind, notice.status, notice.channel or "",
                          notice.scheduled_for.strftime("%Y-%m-%d %H:%M:%S"), notice.patient, notice.reason or "")
    print_table(table)


@hl7_app.command("replay")
def hl7_replay(
    ids: Annotated[Optional[list[int]], typer.Argument(min=1, max=LARGEST_INTEGER, show_default=False,
                                                       help="message ids, as `hl7 errors` lists them")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every message in the error store, or those the filters match")] = False,
    facility: Facility = None,
    since: Since = None,
    message_type: MessageType = None,
    reason: Reason = None,
) -> None:
    """Process error-store messages (HL7 messages and FHIR versions) again, after a fix:
    those named, or with --all those `hl7 errors` lists with the same filters. Ends with
    how many were processed and why the others were not; exit 1 unless all were. A
    message not in the error store (processed since, or a duplicate) is not replayed: it
    says so, and its patient is not notified twice."""
    from adapter.cli_compliance import CLI_ACTOR
    from adapter.db import read_transaction
    from adapter.error_store import replay, replay_summary

    filters = {"--facility": facility, "--since": since, "--type": message_type, "--reason": reason}
    if bool(ids) == all_:
        err.print("give message ids (as `hl7 errors` lists them) or --all, not both" if ids
                  else "give message ids (as `hl7 errors` lists them), or --all for the whole error store", soft_wrap=True)
        raise typer.Exit(2)
    if not all_ and any(value is not None for value in filters.values()):
        err.print(f"{', '.join(name for name, value in filters.items() if value is not None)}: narrows --all, "
                  "not message ids", soft_wrap=True)
        raise typer.Exit(2)
    container = _container()
    if all_:
        matching = _error_filter(container, facility, since, message_type, reason)
        with read_transaction(container.sessions) as session:
            ids = list(session.scalars(matching.select_ids()))
        if not ids:
            console.print("no message in the error store matches: nothing to replay")
            return
    assert ids is not None
    outcomes = replay(container, ids, actor=CLI_ACTOR)
    for message_id, outcome in outcomes.items():
        console.print(f"{message_id}: {escape(outcome)}", soft_wrap=True)
    for line in replay_summary(outcomes):
        console.print(escape(line), soft_wrap=True)
    raise typer.Exit(0 if all(outcome == "processed" for outcome in outcomes.values()) else 1)


@hl7_app.command("send")
def hl7_send(
    paths: Annotated[list[Path], typer.Argument(help="files or directories of ER7 messages")],
    host: str = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="default ADAPTER_MLLP_PORT")] = None,
    connections: Annotated[int, typer.Option(min=1, max=64)] = 1,
    rate: Annotated[Optional[float], typer.Option(min=0.01, help="messages per second, all connections")] = None,
    tls: Annotated[bool, typer.Option(help="TLS, trusting the system's certificate authorities")] = False,
    tls_ca: Annotated[Optional[Path], typer.Option(help="TLS, trusting this CA (PEM) for the listener's certificate")] = None,
    tls_cert: Annotated[Optional[Path], typer.Option(help="mutual TLS: our client certificate (PEM)")] = None,
    tls_key: Annotated[Optional[Path], typer.Option(help="mutual TLS: its private key (PEM), if not in --tls-cert")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for each send and each ACK")] = 30.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="read the files and say how many messages of which types "
                                                            "they hold, without connecting")] = False,
) -> None:
    """Send messages over MLLP with a progress bar; exit 1 unless every message is
    accepted: AA, or CA in enhanced mode; one with MSH-15 NE counts as sent (no ACK
    expected), one with ER as accepted when no error ACK comes. Files may hold several
    messages: blank lines between them, FHS/BHS batches, MLLP frames as engines dump
    them; CR, LF or CRLF segment ends; a byte order mark. Exit 2, sending nothing, for a
    file named that holds no message or a listener that cannot be reached."""
    from adapter.hl7_send import send_files
    from hl7.mllp import client_ssl_context

    ssl_context = None
    if tls or tls_ca or tls_cert:
        try:
            ssl_context = client_ssl_context(tls_ca, tls_cert, tls_key)
        except (OSError, ssl.SSLError) as exc:
            err.print(f"[red]TLS files could not be read[/red]: {exc}")
            raise typer.Exit(2) from None
    code = send_files(paths, host=host, port=port or get_settings().mllp_port, connections=connections,
                      rate=rate, ssl_context=ssl_context, timeout=timeout, console=console, dry_run=dry_run)
    raise typer.Exit(code)


@app.command()
def demo(
    url: Annotated[str, typer.Option(help="the running adapter's HTTP base")] = "",
    mllp: Annotated[str, typer.Option(help="the running adapter's MLLP host:port")] = "",
    token: Annotated[str, typer.Option(envvar="ADAPTER_TOKEN", help="an admin token")] = "",
) -> None:
    """Feed the bundled sample feeds through a running adapter and show, per
    patient, what they receive and when."""
    from adapter.demo import run_demo

    settings = get_settings()
    token = token or (admin_token_file(settings).read_text().strip() if admin_token_file(settings).exists() else "")
    if not token:
        err.print("[red]no token[/red]: pass --token or set ADAPTER_TOKEN (make run prints one)")
        raise typer.Exit(2)
    raise typer.Exit(
        run_demo(
            base_url=url or f"http://127.0.0.1:{settings.http_port}",
            mllp=mllp or f"127.0.0.1:{settings.mllp_port}",
            token=token,
            tz=settings.timezone,
            console=console,
        )
    )


@app.command()
def openapi() -> None:
    """Print the OpenAPI document (what ``openapi/openapi.json`` must equal)."""
    from adapter.openapi_doc import openapi_document

    print(json.dumps(openapi_document(), indent=2, sort_keys=True))


def main() -> None:
    from pydantic import ValidationError

    from adapter.settings import describe

    try:
        app()
    except ValidationError as exc:
        if exc.title != "Settings":
            raise
        refuse_to_start(describe(exc))  # the environment or config/adapter.yaml
        raise SystemExit(2) from None
