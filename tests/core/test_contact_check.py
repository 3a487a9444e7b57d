"""Issue 6 items 1 and 7 over real sockets: a patient links their Telegram chat by deep
link, and answers a contact check whose choice the dispatcher then honours."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from adapter.clock import FrozenClock
from adapter.contact_models import ContactPreference, TelegramLink
from adapter.db import transaction
from adapter.models import Contact
from adapter.replies import Question, classify_reply
from channels.fakes import FakeSmtp, FakeTelegram, FakeTwilio, start_fake
from channels.optout import check_reply_instructions
from channels.telegram import LINK_TOKEN_PATTERN
from compliance.models import AuditEntry
from tests.core.test_end_to_end import appointment, notifications, patient, wait_for
from tests.harness import RunningAdapter, running_adapter, settings_for

FHIR = {"Content-Type": "application/fhir+json"}
PUBLIC = "https://adapter.example.org"
PHONE = "+393331234567"
EMAIL = "paziente@example.org"
BOT = "SanLucaBot"
CHAT = 777000111


def book(adapter: RunningAdapter, aid: str, pid: str = "p1", *, email: bool = False) -> None:
    ehr = adapter.client("ehr")
    resource = patient(pid, PHONE)
    if email:
        resource["telecom"].append({"system": "email", "value": EMAIL})
    assert ehr.put(f"/fhir/R4/Patient/{pid}", json=resource, headers=FHIR).status_code in (200, 201)
    start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    assert ehr.put(f"/fhir/R4/Appointment/{aid}", json=appointment(aid, pid, start), headers=FHIR).status_code in (200, 201)
    adapter.fhir_processed()


def sent_confirmation(adapter: RunningAdapter, aid: str) -> dict:
    def done() -> list[dict]:
        return [i for i in notifications(adapter.client("officer"), kind="booking_confirmation")
                if i["subject"].endswith(aid) and i["status"] == "sent"]
    return wait_for(done)[0]


def telegram_contacts(adapter: RunningAdapter) -> list[Contact]:
    with transaction(adapter.container.sessions) as session:
        rows = list(session.scalars(select(Contact).where(Contact.channel == "telegram")))
        session.expunge_all()
        return rows


def audit_text(adapter: RunningAdapter) -> str:
    with transaction(adapter.container.sessions) as session:
        return " ".join(f"{e.action} {e.reason} {e.details}" for e in session.scalars(select(AuditEntry)))


@contextmanager
def telegram_adapter(tmp_path: Path, clock: FrozenClock | None = None) -> Iterator[tuple[RunningAdapter, FakeTelegram]]:
    fake = FakeTelegram()
    url, stop = start_fake(fake.app)
    settings = settings_for(tmp_path, channels=["telegram", "sandbox"], telegram_api_base=url,
                            telegram_bot_token=fake.bot_token, telegram_secret_token=fake.secret_token,
                            telegram_bot_name=BOT)
    try:
        with running_adapter(settings, clock) as adapter:
            fake.webhook_url = adapter.base_url + "/webhooks/telegram/inbound"
            yield adapter, fake
    finally:
        stop()


def issue_token(adapter: RunningAdapter, pid: str) -> str:
    response = adapter.client("officer").post(f"/api/patients/{pid}/telegram-link")
    assert response.status_code == 201, response.text
    link = response.json()["link"]
    assert link.startswith(f"https://t.me/{BOT}?start=")
    token = link.rsplit("=", 1)[1]
    assert LINK_TOKEN_PATTERN.fullmatch(token) and len(token) <= 64
    return token


def test_a_linked_telegram_chat_gets_the_next_booking_and_the_link_works_only_once(tmp_path):
    with telegram_adapter(tmp_path) as (adapter, fake):
        book(adapter, "a1")
        pid = sent_confirmation(adapter, "a1")["patient"]
        assert not fake.messages  # no chat linked yet: the sandbox took it

        token = issue_token(adapter, pid)
        answer = asyncio.run(fake.post_message(CHAT, f"/start {token}"))
        assert answer.status_code == 200 and answer.json()["status"] == "processed"
        [contact] = telegram_contacts(adapter)
        assert contact.patient_id == pid and str(CHAT).encode() not in contact.address_enc
        assert contact.address_index == adapter.container.vault.blind_index("telegram", str(CHAT))
        assert not fake.messages  # nothing is answered to the chat

        book(adapter, "a2")
        assert sent_confirmation(adapter, "a2")["channel"] == "telegram"
        [message] = wait_for(lambda: fake.messages)
        assert message.chat_id == str(CHAT) and "Nicolò" in message.text

        assert asyncio.run(fake.post_message(CHAT + 1, f"/start {token}")).status_code == 200
        assert [c.patient_id for c in telegram_contacts(adapter)] == [pid]
        assert adapter.client("officer").get("/api/replies").json()["items"] == []
        audited = audit_text(adapter)
        assert token not in audited
        assert "telegram link issued" in audited and "telegram chat linked" in audited
        assert "telegram link refused: token already used" in audited
        with transaction(adapter.container.sessions) as session:
            assert session.scalar(select(TelegramLink.digest)) != token


def test_an_expired_telegram_link_links_nothing(tmp_path):
    clock = FrozenClock(datetime.now(UTC))
    with telegram_adapter(tmp_path, clock) as (adapter, fake):
        book(adapter, "a1")
        pid = wait_for(lambda: notifications(adapter.client("officer"), kind="booking_confirmation"))[0]["patient"]
        token = issue_token(adapter, pid)
        clock.advance(timedelta(minutes=31))

        assert asyncio.run(fake.post_message(CHAT, f"/start {token}")).status_code == 200
        assert telegram_contacts(adapter) == []
        assert "telegram link refused: token expired" in audit_text(adapter)
        assert adapter.client("officer").post("/api/patients/nobody/telegram-link").status_code == 404


@pytest.mark.parametrize("language", ["it", "en"])
def test_the_contact_check_asks_for_words_no_carrier_acts_on_and_each_names_a_channel(language):
    from adapter.settings import CONFIG_DIR

    text = (CONFIG_DIR / "templates" / language / "contact_check.txt.j2").read_text(encoding="utf-8")
    assert check_reply_instructions(text) == []
    asked = re.search(r"(?:Risponda|Reply) ([A-Za-z, ]+?)\.", text).group(1)
    words = re.findall(r"[A-Z]{2,}", asked)
    assert sorted(words) == ["EMAIL", "SMS", "TELEGRAM", "WHATSAPP"]
    chosen = {classify_reply(w, language, expecting=Question.CONTACT_PREFERENCE).channel for w in words}
    assert chosen == {"sms", "whatsapp", "email", "telegram"}


def test_a_contact_check_answered_email_sends_the_next_notification_by_email(tmp_path, monkeypatch):
    twilio = FakeTwilio()
    twilio_url, stop_twilio = start_fake(twilio.app)
    with FakeSmtp() as smtp:
        cert = tmp_path / "smtp-ca.pem"
        cert.write_bytes(smtp.certificate.cert_pem)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the e-mail channel trusts the fake server
        settings = settings_for(
            tmp_path, channels=["sms", "email"], public_base_url=PUBLIC,
            twilio_api_base=twilio_url, twilio_account_sid=twilio.account_sid,
            twilio_auth_token=twilio.auth_token, twilio_from="+390200000000",
            smtp_host=smtp.host, smtp_port=smtp.port, smtp_from="clinica@example.org",
        )
        try:
            with running_adapter(settings) as adapter:
                officer = adapter.client("officer")
                book(adapter, "a1", email=True)
                assert sent_confirmation(adapter, "a1")["channel"] == "sms"
                pid = sent_confirmation(adapter, "a1")["patient"]

                created = officer.post(f"/api/patients/{pid}/contact-check")
                assert created.status_code == 201 and created.json()["kind"] == "contact_check"
                check = wait_for(lambda: [i for i in notifications(officer, kind="contact_check")
                                          if i["status"] == "sent"])[0]
                assert check["channel"] == "sms"
                asked = [m.body for m in twilio.messages.values() if "TELEGRAM" in m.body]
                assert len(asked) == 1 and "Risponda SMS, WHATSAPP, EMAIL o TELEGRAM" in asked[0]

                reply = twilio_reply(adapter, twilio, "EMAIL")
                assert reply.status_code == 200, reply.text
                [answer] = officer.get("/api/replies").json()["items"]
                assert answer["action"] == "contact_preference" and answer["notification"] == check["id"]
                with transaction(adapter.container.sessions) as session:
                    assert session.get(ContactPreference, pid).channel == "email"
                assert "preferred_channel" in audit_text(adapter)

                sms_before = len(twilio.messages)
                book(adapter, "a2", email=True)
                assert sent_confirmation(adapter, "a2")["channel"] == "email"
                [mail] = wait_for(lambda: smtp.messages)
                assert mail["To"] == EMAIL
                assert len(twilio.messages) == sms_before

                # The check is answered: "1" now means "confirm", not "sms".
                twilio_reply(adapter, twilio, "1")
                actions = [r["action"] for r in officer.get("/api/replies").json()["items"]]
                assert actions[0] != "contact_preference"
                assert officer.post("/api/patients/nobody/contact-check").status_code == 404
        finally:
            stop_twilio()


def twilio_reply(adapter: RunningAdapter, twilio: FakeTwilio, text: str) -> httpx.Response:
    path = "/webhooks/twilio/inbound"
    body, headers = twilio.signed_form(PUBLIC + path, {
        "MessageSid": "SM" + secrets.token_hex(16), "AccountSid": twilio.account_sid,
        "From": PHONE, "To": "+390200000000", "Body": text})
    return httpx.post(adapter.base_url + path, content=body, headers=headers)

