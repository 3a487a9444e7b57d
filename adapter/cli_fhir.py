"""``python -m adapter fhir ...``: the upstream side of the FHIR front door."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Optional

import typer
from rich.console import Console

fhir_app = typer.Typer(no_args_is_help=True, help="FHIR: subscribe to a hospital's server, or poll it.")
console = Console()


def _auth(token: str | None):
    if not token:
        return None
    from fhir.client import BearerToken

    return BearerToken(token)


@fhir_app.command("subscribe")
def subscribe(
    server: Annotated[str, typer.Option(help="the hospital FHIR server's base URL")],
    endpoint: Annotated[str, typer.Option(help="our $subscription-hook as the server can reach it")] = "",
    token: Annotated[Optional[str], typer.Option(envvar="ADAPTER_UPSTREAM_TOKEN", help="bearer token for the server")] = None,
    hook_token: Annotated[Optional[str], typer.Option(envvar="ADAPTER_HOOK_TOKEN", help="an ehr token the server sends us")] = None,
    content: Annotated[str, typer.Option(help="id-only or full-resource")] = "id-only",
    heartbeat: Annotated[int, typer.Option(help="heartbeat period, seconds")] = 300,
) -> None:
    """Create backport Subscriptions for Appointment and DiagnosticReport on SERVER."""
    from adapter.cli import _container
    from adapter.fhir_wiring import fhir_service
    from fhir.upstream import subscribe as create

    container = _container()
    endpoint = endpoint or f"{container.settings.public_base_url}/fhir/R4/$subscription-hook"
    headers = {"Authorization": f"Bearer {hook_token}"} if hook_token else None
    created = asyncio.run(
        create(server, endpoint=endpoint, sessions=container.sessions, service=fhir_service(container),
               auth=_auth(token), content=content, heartbeat_period_s=heartbeat, endpoint_headers=headers)
    )
    for item in created:
        console.print(f"{item.resource_type}: {item.url} ({item.status})")


@fhir_app.command("poll")
def poll(
    server: Annotated[str, typer.Option(help="the hospital FHIR server's base URL")],
    token: Annotated[Optional[str], typer.Option(envvar="ADAPTER_UPSTREAM_TOKEN")] = None,
    every: Annotated[float, typer.Option(help="seconds between rounds; 0 = one round")] = 0.0,
) -> None:
    """For servers without Subscriptions: _lastUpdated searches with paging."""
    from adapter.cli import _container
    from adapter.fhir_wiring import fhir_service
    from fhir.upstream import poll_once

    container = _container()
    service = fhir_service(container)
    while True:
        result = asyncio.run(poll_once(server, sessions=container.sessions, service=service, auth=_auth(token)))
        console.print(f"stored {result.stored}, unchanged {result.unchanged}, rejected {len(result.rejected)}"
                      + (" (stopped early; will retry)" if result.failed else ""))
        if every <= 0:
            raise typer.Exit(1 if result.failed or result.rejected else 0)
        time.sleep(every)
