"""``python -m adapter fhir ...``: the upstream side of the FHIR front door."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

fhir_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="FHIR: subscribe to a hospital's server, or poll it.")
console = Console()
err = Console(stderr=True)


Token = Annotated[Optional[str], typer.Option(envvar="ADAPTER_UPSTREAM_TOKEN", help="bearer token for the server")]
SmartTokenUrl = Annotated[Optional[str], typer.Option(help="SMART Backend Services: the server's token endpoint")]
SmartClient = Annotated[Optional[str], typer.Option(help="SMART Backend Services: our client id")]
SmartKey = Annotated[Optional[Path], typer.Option(help="SMART Backend Services: our private key (PEM)")]
SmartAlg = Annotated[str, typer.Option(help="RS384 or ES384")]
Types = Annotated[str, typer.Option(help="resource types, comma-separated: Appointment, DiagnosticReport, Invoice")]
DEFAULT_TYPES = "Appointment,DiagnosticReport"


def _auth(token: str | None, token_url: str | None = None, client_id: str | None = None,
          key: Path | None = None, algorithm: str = "RS384"):
    """Bearer token, or SMART Backend Services (client credentials with a signed JWT)."""
    if token_url or client_id or key:
        if not (token_url and client_id and key):
            raise typer.BadParameter("SMART Backend Services needs --smart-token-url, --smart-client-id and --smart-key")
        from fhir.client import SmartBackendAuth

        return SmartBackendAuth(token_url=token_url, client_id=client_id, private_key_pem=key.read_bytes(),
                                algorithm=algorithm)
    if not token:
        return None
    from fhir.client import BearerToken

    return BearerToken(token)


def _types(text: str) -> tuple[str, ...]:
    """``--types``: each a type the server pushes or is pulled for (a billing system: ``Invoice``)."""
    from fhir.client import DEFAULT_TOPICS

    types = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [kind for kind in types if kind not in DEFAULT_TOPICS]
    if not types or unknown:
        raise typer.BadParameter(f"--types takes {', '.join(DEFAULT_TOPICS)}; got {text!r}")
    return types


@contextmanager
def upstream_errors() -> Iterator[None]:
    """The hospital server refused or could not be reached: say so, exit 1."""
    from fhir.errors import UpstreamError

    try:
        yield
    except UpstreamError as exc:
        err.print(f"[red]upstream FHIR server:[/red] {exc}")
        raise typer.Exit(1) from exc


@fhir_app.command("subscribe")
def subscribe(
    server: Annotated[str, typer.Option(help="the hospital FHIR server's base URL")],
    endpoint: Annotated[str, typer.Option(help="our $subscription-hook as the server can reach it")] = "",
    token: Token = None,
    smart_token_url: SmartTokenUrl = None,
    smart_client_id: SmartClient = None,
    smart_key: SmartKey = None,
    smart_alg: SmartAlg = "RS384",
    hook_token: Annotated[Optional[str], typer.Option(envvar="ADAPTER_HOOK_TOKEN", help="an ehr token the server sends us")] = None,
    content: Annotated[str, typer.Option(help="id-only or full-resource")] = "id-only",
    heartbeat: Annotated[int, typer.Option(min=1, max=86_400, help="heartbeat period, seconds")] = 300,
    types: Types = DEFAULT_TYPES,
) -> None:
    """Create backport Subscriptions on SERVER, one per type (Appointment and DiagnosticReport;
    --types Invoice for a billing system)."""
    from adapter.cli import _container
    from adapter.fhir_wiring import fhir_service
    from fhir.upstream import subscribe as create

    container = _container()
    endpoint = endpoint or f"{container.settings.public_base_url}/fhir/R4/$subscription-hook"
    headers = {"Authorization": f"Bearer {hook_token}"} if hook_token else None
    with upstream_errors():
        created = asyncio.run(
            create(server, endpoint=endpoint, sessions=container.sessions, service=fhir_service(container),
                   auth=_auth(token, smart_token_url, smart_client_id, smart_key, smart_alg), content=content,
                   heartbeat_period_s=heartbeat, endpoint_headers=headers, resource_types=_types(types))
        )
    for item in created:
        console.print(f"{item.resource_type}: {item.url} ({item.status})")


@fhir_app.command("poll")
def poll(
    server: Annotated[str, typer.Option(help="the hospital FHIR server's base URL")],
    token: Token = None,
    smart_token_url: SmartTokenUrl = None,
    smart_client_id: SmartClient = None,
    smart_key: SmartKey = None,
    smart_alg: SmartAlg = "RS384",
    every: Annotated[float, typer.Option(help="seconds between rounds; 0 = one round")] = 0.0,
    types: Types = DEFAULT_TYPES,
) -> None:
    """For servers without Subscriptions: _lastUpdated searches with paging, and each type's _history for deletions."""
    from adapter.cli import _container
    from adapter.fhir_wiring import fhir_service
    from fhir.upstream import poll_once

    container = _container()
    service = fhir_service(container)
    auth = _auth(token, smart_token_url, smart_client_id, smart_key, smart_alg)
    while True:
        with upstream_errors():
            result = asyncio.run(poll_once(server, sessions=container.sessions, service=service, auth=auth,
                                         resource_types=_types(types)))
        console.print(f"stored {result.stored}, unchanged {result.unchanged}, deleted {result.deleted}, "
                      f"rejected {len(result.rejected)}"
                      + (" (stopped early; will retry)" if result.failed else ""))
        if every <= 0:
            raise typer.Exit(1 if result.failed or result.rejected else 0)
        time.sleep(every)
