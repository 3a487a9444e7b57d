"""Fake providers started once per session on 127.0.0.1; each test gets fresh channels."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from channels.fakes import FakeSmtp, FakeTelegram, FakeTwilio, FakeWhatsApp

SLOW_S = 0.6  # how long a "timeout" fault keeps the client waiting
CLIENT_TIMEOUT_S = 0.25


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def fake_twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio(invalid_numbers={"+393330000000"}, slow_s=SLOW_S) as fake:
        yield fake


@pytest.fixture(scope="session")
def fake_whatsapp() -> Iterator[FakeWhatsApp]:
    with FakeWhatsApp(invalid_numbers={"393330000000"}, slow_s=SLOW_S,
                      approved_templates={"appointment_reminder"}) as fake:
        yield fake


@pytest.fixture(scope="session")
def fake_telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram(blocked_chats={"666"}, slow_s=SLOW_S) as fake:
        yield fake


@pytest.fixture(scope="session")
def fake_smtp() -> Iterator[FakeSmtp]:
    with FakeSmtp(rejected={"nobody@clinic.example"}, slow_s=SLOW_S) as fake:
        yield fake
