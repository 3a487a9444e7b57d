"""Fixtures for the FHIR front door: a live uvicorn server on 127.0.0.1 with a
SQLite file database, an AES-GCM RecordCodec, a movable clock, and the events
the router published collected in a list."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from adapter.db import Base, make_engine, make_sessionmaker
from fhir.models import TABLES
from fhir.routes import build_router
from fhir.service import FhirService
from fhir.settings import FhirSettings
from fhir.validation_pool import ValidationPool

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "fhir"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def sample(name: str, **replace: str) -> dict[str, Any]:
    text = (SAMPLES / name).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    return json.loads(text)


class AesGcmCodec:
    """A RecordCodec for tests: AES-256-GCM, the subject bound as associated data."""

    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self.subjects: list[str] = []
        self.new: list[str] = []  # announced with new_subjects

    def encrypt(self, plaintext: bytes, *, subject: str, session: object = None) -> bytes:
        self.subjects.append(subject)
        nonce = os.urandom(12)
        label = subject.encode()
        return len(label).to_bytes(2, "big") + label + nonce + self._aead.encrypt(
            nonce, plaintext, label)

    def new_subjects(self, subjects: list[str], *, session: object = None) -> None:
        self.new.extend(subjects)

    def decrypt(self, blob: bytes, *, session: object = None) -> bytes:
        size = int.from_bytes(blob[:2], "big")
        label, rest = blob[2:2 + size], blob[2 + size:]
        return self._aead.decrypt(rest[:12], rest[12:], label)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 11, 20, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class SwappableApp:
    """One uvicorn server per test session; each test plugs in its own app."""

    def __init__(self) -> None:
        self.app: Any = FastAPI()

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)


@dataclass
class LiveServer:
    holder: SwappableApp
    url: str


def _serve(holder: SwappableApp) -> tuple[uvicorn.Server, threading.Thread, str]:
    config = uvicorn.Config(holder, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def live_servers() -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers: the adapter under test and a fake upstream FHIR server."""
    started = []
    servers = []
    for _ in range(2):
        holder = SwappableApp()
        server, thread, url = _serve(holder)
        started.append((server, thread))
        servers.append(LiveServer(holder, url))
    yield servers[0], servers[1]
    for server, thread in started:
        server.should_exit = True
        thread.join(timeout=5)


@dataclass
class Adapter:
    """The FHIR router mounted at /fhir/R4 on a live server."""

    base: str
    http: httpx.Client
    events: list[Any]
    clock: Clock
    codec: AesGcmCodec
    sessions: Any
    service: FhirService
    settings: FhirSettings
    fail_publish: list[Exception] = field(default_factory=list)

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return self.http.post(self.base + path, content=json.dumps(body),
                              headers={**FHIR_JSON, **headers})

    def put(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return self.http.put(self.base + path, content=json.dumps(body),
                             headers={**FHIR_JSON, **headers})

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(self.base + path, **kwargs)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


@pytest.fixture
def make_adapter(live_servers, tmp_path) -> Iterator[Callable[..., Adapter]]:
    clients = []

    def make(settings: FhirSettings | None = None) -> Adapter:
        engine = make_engine(f"sqlite:///{tmp_path / 'adapter.db'}")
        Base.metadata.create_all(engine, tables=TABLES)
        sessions = make_sessionmaker(engine)
        events: list[Any] = []
        fail: list[Exception] = []

        def publish(session: Session, new: list[Any]) -> None:
            """Like the core's: the events count only if the transaction commits."""
            assert session.in_transaction()
            if fail:
                raise fail[0]
            pending = session.info.setdefault("published", [])
            if not pending:
                sa_event.listen(session, "after_commit",
                                lambda s: events.extend(s.info.pop("published", [])), once=True)
                sa_event.listen(session, "after_rollback",
                                lambda s: s.info.pop("published", None), once=True)
            pending.extend(new)

        clock, codec = Clock(), AesGcmCodec()
        settings = settings or FhirSettings()
        service = FhirService(publish=publish, codec=codec, clock=clock, settings=settings)
        app = FastAPI()
        app.include_router(build_router(sessions=sessions, service=service), prefix="/fhir/R4")
        live_servers[0].holder.app = app
        http = httpx.Client(timeout=10)
        clients.append(http)
        return Adapter(live_servers[0].url + "/fhir/R4", http, events, clock, codec, sessions,
                       service, settings, fail)

    yield make
    for http in clients:
        http.close()


@pytest.fixture
def adapter(make_adapter) -> Adapter:
    return make_adapter()


@pytest.fixture
def upstream_server(live_servers) -> LiveServer:
    return live_servers[1]


def started(pool: ValidationPool) -> ValidationPool:
    """``pool`` with its helpers up."""
    pool.start()
    deadline = time.monotonic() + 30
    while not pool.ready():
        assert time.monotonic() < deadline, "the helpers did not start"
        time.sleep(0.05)
    return pool


@pytest.fixture(scope="module")
def helper_pool() -> Iterator[ValidationPool]:
    """One helper process, up, taking every list of resources (``min_resources=1``)."""
    pool = started(ValidationPool(1, min_resources=1))
    yield pool
    pool.close()
