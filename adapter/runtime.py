"""Running the adapter in one process: HTTP (uvicorn), MLLP, the inbound
processor and the in-process dispatcher, sharing one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Iterator

import uvicorn

from adapter.bootstrap import Container
from adapter.dispatch import run_forever
from adapter.housekeeping import run_housekeeping_forever
from adapter.metrics import MLLP_LISTENER, watch_gc
from adapter.settings import Settings
from adapter.storage_full import is_storage_full
from adapter.web import create_app
from adapter.webhooks import run_way_back_forever
from hl7.mllp import MLLPServer, ServerTLS, expiry_warning

log = logging.getLogger(__name__)


def give_way(container: Container, after: float = 0.0) -> None:
    """Background work waits here before each transaction: HL7 messages waiting
    for their ACK and FHIR requests in flight go first (for a moment at most,
    longer after a long piece of work: ``after``, see :meth:`Waiting.wait_quiet`)."""
    container.intake.writer.waiting.wait_quiet(after=after)
    container.fhir.in_flight.wait_quiet(after=after)


def others_waiting(container: Container) -> bool:
    """An HL7 message waits for its ACK, or a FHIR request for its answer."""
    return not (container.intake.writer.waiting.idle.is_set() and container.fhir.in_flight.idle.is_set())


def quiet_seconds(container: Container) -> float:
    """How long no HL7 message and no FHIR request has arrived or waited."""
    return min(container.intake.writer.waiting.quiet_seconds(), container.fhir.in_flight.quiet_seconds())


def process_stored(container: Container) -> int:
    """One round: stored HL7 messages, then stored FHIR versions, oldest first;
    requests waiting for their answer go first."""
    quiet_s = lambda: quiet_seconds(container)  # noqa: E731
    done = container.intake.process_pending(quiet_s=quiet_s)
    return done + container.fhir.process_pending(
        wait_quiet=lambda took: give_way(container, took), give_way=lambda: others_waiting(container),
        quiet_s=quiet_s)


def freeze_start_up_objects() -> None:
    """Collect once, then leave everything made so far (modules, models, schemas,
    the container: long-lived anyway) out of later garbage collections. A full
    collection of a started `serve` scanned all of it and stopped every thread for
    80-100 ms, an ACK's whole p99.9; frozen, it takes 7-9 ms. Also times every
    collection (``adapter_gc_pause_seconds``). For the process that serves, not for
    a test process that starts many."""
    watch_gc()
    gc.collect()
    gc.freeze()


# How long sending waits for a burst of inbound messages to be mapped first: a
# burst is mapped sooner (with SQLite both share one writer), and a feed that never
# pauses still lets sending through.
SENDING_DEFERS_TO_MAPPING_S = 2.0


async def process_inbound_forever(
    container: Container, wake: asyncio.Event, stop: asyncio.Event, drained: threading.Event | None = None
) -> None:
    """Map stored messages and FHIR versions to events, oldest first; woken by
    each stored message or FHIR write, and once a second anyway (catches what a
    crash left ``stored``). ``drained`` is set while nothing waits to be mapped."""
    drained = drained or threading.Event()
    while not stop.is_set():
        try:
            await asyncio.to_thread(process_stored, container)
        except Exception as exc:
            if not is_storage_full(exc):  # a full disk is logged once, when writes are first refused
                log.exception("inbound processing round failed; retrying")
        drained.set()
        try:
            await asyncio.wait_for(wake.wait(), timeout=1.0)
        except TimeoutError:
            pass
        if wake.is_set():
            drained.clear()
        wake.clear()


def before_sending(container: Container, drained: threading.Event) -> None:
    """Sending gives way to ACKs and FHIR answers, then to a burst being mapped
    (for ``SENDING_DEFERS_TO_MAPPING_S`` at most)."""
    give_way(container)
    drained.wait(SENDING_DEFERS_TO_MAPPING_S)


class _HttpServer(uvicorn.Server):
    """uvicorn's server without its own signal handling: :func:`serve` handles
    SIGINT and SIGTERM. uvicorn raises the signal again once HTTP has stopped,
    which ends the process before the MLLP listener, the intake and the helper
    processes are stopped."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def mllp_tls_problems(settings: Settings) -> list[str]:
    """What stops the MLLP listener's TLS from working as configured, one line per
    problem, naming the setting (never a key's content). A client CA or key without
    a certificate would otherwise leave the listener in plain text, unnoticed."""
    cert, key, client_ca = settings.mllp_tls_cert, settings.mllp_tls_key, settings.mllp_tls_client_ca
    if not cert:
        return [f"{name} is set but ADAPTER_MLLP_TLS_CERT is not: the MLLP listener would not use TLS"
                for name, value in (("ADAPTER_MLLP_TLS_KEY", key), ("ADAPTER_MLLP_TLS_CLIENT_CA", client_ca)) if value]
    problems = [f"{name}: no readable file {value}" for name, value in
                (("ADAPTER_MLLP_TLS_CERT", cert), ("ADAPTER_MLLP_TLS_KEY", key), ("ADAPTER_MLLP_TLS_CLIENT_CA", client_ca))
                if value and not os.access(value, os.R_OK)]
    if problems:
        return problems
    try:
        ServerTLS(cert, key or None, client_ca or None)
    except (ssl.SSLError, ValueError) as exc:
        return [f"ADAPTER_MLLP_TLS_CERT, ADAPTER_MLLP_TLS_KEY, ADAPTER_MLLP_TLS_CLIENT_CA: not PEM files of a "
                f"certificate, its private key and a CA ({exc.__class__.__name__}: {exc.args[-1] if exc.args else ''})"]
    return []


async def serve(
    container: Container,
    *,
    http_port: int,
    mllp_port: int,
    embedded_worker: bool = True,
    shutdown: asyncio.Event | None = None,
    on_ready: Callable[[int, int], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM or until ``shutdown`` is set; ``on_ready`` gets
    the bound HTTP and MLLP ports (port 0 picks free ones)."""
    settings = container.settings
    # Mapping and sending run in threads beside the event loop: hand the GIL back to
    # the loop every millisecond (default 5 ms), so an ACK does not wait behind them.
    sys.setswitchinterval(0.001)
    stop = asyncio.Event()
    wake = asyncio.Event()
    container.intake.on_stored = wake.set
    loop = asyncio.get_running_loop()
    container.fhir.on_stored = lambda: loop.call_soon_threadsafe(wake.set)  # from the threadpool
    container.dispatcher.others_waiting = lambda: others_waiting(container)
    container.dispatcher.wait_turn = lambda took: give_way(container, took)
    drained = threading.Event()
    tasks = [asyncio.create_task(process_inbound_forever(container, wake, stop, drained))]
    if embedded_worker:
        tasks.append(
            asyncio.create_task(
                run_forever(
                    container.dispatcher,
                    interval=settings.worker_poll_interval_s,
                    stop=stop,
                    give_way=lambda: before_sending(container, drained),
                )
            )
        )
        tasks.append(asyncio.create_task(run_way_back_forever(container, stop=stop, interval=settings.worker_poll_interval_s)))
    # With Celery workers too: every deployment has a serve, and these jobs (signing the
    # audit log's tree heads, the retention purge, adopting a rotated master key) must run.
    tasks.append(asyncio.create_task(run_housekeeping_forever(container, stop=stop)))
    tls = None
    if settings.mllp_tls_cert:
        tls = ServerTLS(settings.mllp_tls_cert, settings.mllp_tls_key or None, settings.mllp_tls_client_ca or None)
        if warning := expiry_warning(tls.not_after, container.clock.now()):
            log.warning(warning)
    MLLP_LISTENER.tls = tls
    mllp = MLLPServer(
        container.intake.handle,
        host=settings.mllp_host,
        port=mllp_port,
        max_message_bytes=settings.mllp_max_message_bytes,
        idle_timeout=settings.mllp_idle_timeout_s,
        ssl_context=tls.context if tls else None,
        max_connections=settings.mllp_max_connections,
        max_connections_per_address=settings.mllp_max_connections_per_address,
    )
    await mllp.start()
    MLLP_LISTENER.server = mllp
    app = create_app(container)
    # log_config=None: uvicorn keeps to the handlers logging_setup.configure installed
    # (JSON, exceptions without their text), instead of its own plain-text ones.
    config = uvicorn.Config(
        app, host=settings.http_host, port=http_port, log_level="warning", access_log=False, lifespan="off",
        log_config=None,
    )
    server = _HttpServer(config)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (systemd, docker stop) and Ctrl-C stop HTTP, then run the graceful
        # stop below; a second Ctrl-C stops without waiting for open HTTP requests.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.handle_exit, signum, None)

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        print(f"adapter: HTTP on http://{settings.http_host}:{bound}  MLLP on {settings.mllp_host}:{mllp.port}", flush=True)
        if on_ready:
            on_ready(bound, mllp.port)
        if shutdown is not None:
            await shutdown.wait()
            server.should_exit = True

    tasks.append(asyncio.create_task(announce()))
    try:
        await server.serve()
    finally:
        await mllp.stop(grace=5.0)
        await container.intake.writer.stop()
        await asyncio.to_thread(container.fhir.service.validator.close)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(process_stored, container)
