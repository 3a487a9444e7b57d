"""The CLI as operators use it: ``python -m adapter ...`` in a subprocess, against
a real database and real servers on 127.0.0.1."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from adapter.db import transaction
from adapter.migrate import upgrade
from channels.fakes import start_fake
from fhir.models import FhirSubscription
from tests.core.test_end_to_end import appointment, patient, siu
from tests.fhir.fake_upstream import FakeUpstream
from tests.harness import adapter_env_vars, running_adapter, settings_for

ROOT = Path(__file__).resolve().parents[2]


def cli(tmp_path: Path, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **adapter_env_vars(tmp_path), "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "adapter", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def cli_side_by_side(tmp_path: Path, *commands: list[str], timeout: float = 60,
                     env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands, each in its own process, run at the same time (each
    spends a second or two importing); their results in the order given."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: cli(tmp_path, *args, timeout=timeout, env=env), commands))


def migrated(tmp_path: Path) -> None:
    """The SQLite database of ``cli(tmp_path, ...)`` at the current schema, as
    ``python -m adapter migrate`` leaves it."""
    upgrade(f"sqlite:///{tmp_path / 'adapter.db'}")


def test_tokens_create_prints_a_token_that_is_stored_only_hashed(tmp_path):
    result, bad = cli_side_by_side(tmp_path, ["tokens", "create", "--role", "officer", "--name", "dpo"],
                                   ["tokens", "create", "--role", "superuser"])
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("adp_") and len(token) > 30
    assert token.encode() not in (tmp_path / "adapter.db").read_bytes()
    assert bad.returncode == 2 and "unknown role" in bad.stderr


def test_hl7_send_summarises_ack_codes_and_fails_unless_every_message_is_accepted(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        good = tmp_path / "good.hl7"
        start = datetime.now(UTC) + timedelta(days=2)
        good.write_bytes(siu("S12", "S1", start) + b"\n\n" + siu("S13", "S2", start + timedelta(hours=1)))
        result = cli(tmp_path, "hl7", "send", str(good), "--port", str(adapter.mllp_port), "--connections", "2")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "AA 2" in result.stdout
        bad = tmp_path / "dir"
        bad.mkdir()
        (bad / "a.hl7").write_bytes(siu("S12", "S3", start))
        (bad / "b.hl7").write_bytes(b"MSH|^~\\&|X|Y|Z|W|20260101||SIU^S12|\r")  # empty MSH-10
        result = cli(tmp_path, "hl7", "send", str(bad), "--port", str(adapter.mllp_port))
        assert result.returncode == 1
        assert "AA 1" in result.stdout and "AR 1" in result.stdout


def test_hl7_send_help_says_what_counts_as_accepted(tmp_path):
    result = cli(tmp_path, "hl7", "send", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "exit 1 unless every message is accepted: AA, or CA in enhanced mode" in text
    assert "MSH-15 NE counts as sent" in text


def test_outbox_shows_what_the_sandbox_sent(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr = adapter.client("ehr")
        ehr.put("/fhir/R4/Patient/p9", json=patient("p9"), headers={"Content-Type": "application/fhir+json"}).raise_for_status()
        start = datetime.now(UTC) + timedelta(days=3)
        ehr.put("/fhir/R4/Appointment/a9", json=appointment("a9", "p9", start), headers={"Content-Type": "application/fhir+json"}).raise_for_status()
        from tests.core.test_end_to_end import outbox_count, wait_for

        wait_for(lambda: outbox_count(adapter) == 1)
    result = cli(tmp_path, "outbox")
    assert result.returncode == 0, result.stderr
    assert "+393331234567" in result.stdout and "Gentile Nicolò" in result.stdout


def test_fhir_subscribe_creates_subscriptions_and_poll_pulls_changes(tmp_path):
    migrated(tmp_path)
    fake = FakeUpstream(url="")
    base, stop = start_fake(fake.app())
    fake.url = f"{base}/fhir"
    try:
        result = cli(tmp_path, "fhir", "subscribe", "--server", fake.url, "--endpoint", "http://127.0.0.1:9/hook")
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(fake.subscriptions) == 2
        from adapter.db import make_engine, make_sessionmaker

        engine = make_engine(f"sqlite:///{tmp_path / 'adapter.db'}")
        with transaction(make_sessionmaker(engine)) as session:
            kinds = sorted(row.resource_type for row in session.scalars(select(FhirSubscription)))
        engine.dispose()
        assert kinds == ["Appointment", "DiagnosticReport"]

        now = datetime.now(UTC)
        fake.put(patient("up1"), 1, now.isoformat())
        fake.put(appointment("upa1", "up1", now + timedelta(days=3)), 1, now.isoformat())
        polled = cli(tmp_path, "fhir", "poll", "--server", fake.url)
        assert polled.returncode == 0, polled.stdout + polled.stderr
        assert "stored 1" in polled.stdout
        again = cli(tmp_path, "fhir", "poll", "--server", fake.url)
        assert "stored 0" in again.stdout
    finally:
        stop()


def test_fhir_poll_authenticates_with_smart_backend_services(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    migrated(tmp_path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "client.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    fake = FakeUpstream(url="")
    fake.public_key = key.public_key()
    base, stop = start_fake(fake.app())
    fake.url = f"{base}/fhir"
    try:
        now = datetime.now(UTC)
        fake.put(appointment("sm1", "p1", now + timedelta(days=3)), 1, now.isoformat())
        refused = cli(tmp_path, "fhir", "poll", "--server", fake.url)
        assert refused.returncode == 1 and "answered 401" in refused.stderr and "Traceback" not in refused.stderr
        polled = cli(tmp_path, "fhir", "poll", "--server", fake.url, "--smart-token-url", f"{base}/token",
                     "--smart-client-id", "adapter", "--smart-key", str(pem))
        assert polled.returncode == 0, polled.stdout + polled.stderr
        assert "stored 1" in polled.stdout and fake.tokens_issued >= 1
    finally:
        stop()


def test_replay_and_errors_refuse_numbers_out_of_range_in_the_operator_s_terms(tmp_path):
    """An id beyond 64 bits was an OverflowError traceback from the database driver."""
    replay, listing, send, serve = cli_side_by_side(
        tmp_path, ["hl7", "replay", str(2**80)], ["hl7", "errors", "--limit", "0"],
        ["hl7", "send", "--port", "99999", str(tmp_path)], ["serve", "--mllp-port", "70000"])
    assert replay.returncode == 2 and "Invalid value for 'ids'" in replay.stderr
    assert listing.returncode == 2 and "Invalid value for '--limit'" in listing.stderr
    assert send.returncode == 2 and "Invalid value for '--port'" in send.stderr
    assert serve.returncode == 2 and "Invalid value for '--mllp-port'" in serve.stderr


def test_settings_out_of_range_stop_the_start_naming_the_variable_not_its_value(tmp_path):
    env_secret = "s3cr3t-token-value"
    settings = cli(tmp_path, "serve", env={"ADAPTER_MLLP_PORT": "99999", "ADAPTER_CLAIM_BATCH_SIZE": "0",
                                            "ADAPTER_SMTP_PORT": env_secret})
    assert settings.returncode == 2
    said = " ".join(settings.stderr.split())
    for variable in ("ADAPTER_MLLP_PORT", "ADAPTER_CLAIM_BATCH_SIZE", "ADAPTER_SMTP_PORT"):
        assert f"configuration error: {variable}" in said
    assert env_secret not in settings.stderr and "Traceback" not in settings.stderr



def test_a_redis_visibility_timeout_within_the_claim_lease_stops_serve_and_worker_naming_both(tmp_path):
    # Redis would hand a batch still being sent to a second worker: a patient messaged twice.
    for visibility, lease in (("4", "20"), ("120", "120")):
        env = {"ADAPTER_BROKER_URL": "redis://127.0.0.1:6379/0", "ADAPTER_CELERY_QUEUE": "adapter-refused",
               "ADAPTER_BROKER_VISIBILITY_TIMEOUT_S": visibility, "ADAPTER_CLAIM_LEASE_S": lease}
        commands = (["worker", "--pool", "solo"], ["serve", "--http-port", "0", "--mllp-port", "0"])
        for command, result in zip(commands, cli_side_by_side(tmp_path, *commands, env=env, timeout=30), strict=True):
            said = " ".join(result.stderr.split())
            assert result.returncode == 2, (command, result.stdout, result.stderr)
            assert (f"configuration error: ADAPTER_BROKER_VISIBILITY_TIMEOUT_S ({visibility} s) must be longer than "
                    f"ADAPTER_CLAIM_LEASE_S ({lease} s) with a Redis broker") in said, said
            assert "Traceback" not in result.stderr


def test_only_redis_needs_its_visibility_timeout_longer_than_the_claim_lease():
    from pydantic import ValidationError

    from adapter.settings import Settings

    with pytest.raises(ValidationError):
        Settings(broker_url="rediss://cache:6380/0", broker_visibility_timeout_s=60, claim_lease_s=60)
    Settings(broker_url="redis://cache:6379/0", broker_visibility_timeout_s=61, claim_lease_s=60)
    Settings(broker_url="redis://cache:6379/0")  # the defaults: 300 s against 120 s
    # RabbitMQ redelivers only when the worker's connection is gone, not on a timer.
    Settings(broker_url="amqp://guest:guest@rabbit:5672//", broker_visibility_timeout_s=4, claim_lease_s=20)


def test_channel_settings_missing_malformed_or_unknown_stop_serve_and_worker_one_line_each_no_secret(tmp_path):
    secret = "s3cr3t-not-a-bot-token"
    env = {"ADAPTER_CHANNELS": "sms,telegram,fax", "ADAPTER_TWILIO_ACCOUNT_SID": "", "ADAPTER_TWILIO_AUTH_TOKEN": "",
           "ADAPTER_TWILIO_FROM": "+15005550006", "ADAPTER_TELEGRAM_BOT_TOKEN": secret,
           "ADAPTER_TELEGRAM_SECRET_TOKEN": "webhook-secret", "ADAPTER_TELEGRAM_BOT_NAME": "clinic_bot",
           "ADAPTER_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//", "ADAPTER_CELERY_QUEUE": "adapter-refused"}
    migrated(tmp_path)  # as each unit's ExecStartPre leaves it: serve and worker start on it side by side
    commands = (["serve", "--http-port", "0", "--mllp-port", "0"], ["worker", "--pool", "solo"])
    for command, result in zip(commands, cli_side_by_side(tmp_path, *commands, env=env, timeout=30), strict=True):
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        said = [line for line in result.stderr.splitlines() if line.startswith("configuration error:")]
        assert said == [
            "configuration error: ADAPTER_TWILIO_ACCOUNT_SID (twilio_account_sid in config/adapter.yaml): "
            "required for the sms channel in ADAPTER_CHANNELS",
            "configuration error: ADAPTER_TWILIO_AUTH_TOKEN (twilio_auth_token in config/adapter.yaml): "
            "required for the sms channel in ADAPTER_CHANNELS",
            "configuration error: ADAPTER_TELEGRAM_BOT_TOKEN (telegram_bot_token in config/adapter.yaml): "
            "not a Telegram bot token (the bot's number, a colon, letters, digits, _ and -) "
            "for the telegram channel in ADAPTER_CHANNELS",
            "configuration error: ADAPTER_CHANNELS (channels in config/adapter.yaml): "
            "unknown channel 'fax' (sandbox, sms, whatsapp, telegram, email)",
        ], result.stderr
        assert "Traceback" not in result.stderr and secret not in result.stderr + result.stdout


def test_a_master_key_that_cannot_be_used_stops_every_command_with_exit_2_not_a_traceback(tmp_path):
    short = base64.b64encode(b"sixteen byte key").decode()
    migrated(tmp_path)  # else audit verify stops first at a database with no schema
    for key, what in (("not-base64!", "not valid base64"), (short, "must be 32 bytes")):
        commands = (["audit", "verify"], ["serve", "--http-port", "0", "--mllp-port", "0"])
        results = cli_side_by_side(tmp_path, *commands, env={"ADAPTER_MASTER_KEY": key})
        for command, result in zip(commands, results, strict=True):
            said = " ".join(result.stderr.split())
            assert result.returncode == 2, (command, result.stdout, result.stderr)
            assert f"configuration error: ADAPTER_MASTER_KEY: {what}" in said or (
                "configuration error:" in said and what in said), said
            assert "Traceback" not in result.stderr and key not in result.stderr + result.stdout

def test_a_master_key_that_is_not_the_database_s_stops_every_command_naming_both_key_ids(tmp_path):
    """A lost or swapped key file: the keys in the database are wrapped by another
    master, so nobody's data can be read. Before: UnknownKey's traceback."""
    first, other = (base64.b64encode(bytes([n]) * 32).decode() for n in (1, 2))
    migrated(tmp_path)
    assert cli(tmp_path, "hl7", "errors", env={"ADAPTER_MASTER_KEY": first}).returncode == 0
    commands = (["hl7", "errors"], ["serve", "--http-port", "0", "--mllp-port", "0"])
    for command, result in zip(commands, cli_side_by_side(tmp_path, *commands, env={"ADAPTER_MASTER_KEY": other}),
                               strict=True):
        said = " ".join(result.stderr.split())
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "configuration error: this database's keys are wrapped by master key" in said, said
        assert "Traceback" not in result.stderr and other not in said


def test_hl7_acks_lists_given_up_application_acks_and_resend_queues_them_again(tmp_path):
    from adapter.clock import FrozenClock
    from tests.core.test_app_acks import NOW, ack_rows, adapter_for, free_port, owe_application_acks, retry_while_down
    from tests.core.test_replies import MllpListener

    port, clock = free_port(), FrozenClock(NOW)
    container = adapter_for(tmp_path, port, clock, hospital_retry_hours=1)
    owe_application_acks(container, "LOST1", "LOST2")
    retry_while_down(container, clock, until=NOW + timedelta(hours=2))
    assert [row[0] for row in ack_rows(container)] == ["failed", "failed"]

    listing = cli(tmp_path, "hl7", "acks", "--failed", env={"COLUMNS": "80"})
    assert listing.returncode == 0, listing.stderr
    # Piped, one row a line and nothing cut short: at 80 columns it was "MLLP: Connect…"
    rows = [line for line in listing.stdout.splitlines() if "LOST" in line]
    assert len(rows) == 2 and all("MLLP: ConnectionRefusedError" in row for row in rows), listing.stdout
    resend = cli(tmp_path, "hl7", "acks", "resend", "1", "99")
    assert resend.returncode == 1  # not every id could be queued
    assert "1: queued again" in resend.stdout and "99: no such id" in resend.stdout
    assert ack_rows(container) == [("pending", 0, "MLLP: ConnectionRefusedError"), ack_rows(container)[1]]
    assert "LOST1" not in cli(tmp_path, "hl7", "acks", "--failed").stdout

    listener = MllpListener(port=port)
    try:
        retry_while_down(container, clock, until=clock.now() + timedelta(minutes=1))
        assert [row[0] for row in ack_rows(container)] == ["done", "failed"]
        [ack] = listener.received
        assert "MSA|AA|LOST1" in ack
    finally:
        listener.stop()


def test_writebacks_lists_a_given_up_cancellation_and_resend_delivers_it(tmp_path):
    from adapter.clock import FrozenClock
    from adapter.reply_models import Writeback
    from adapter.writeback import WritebackSender
    from tests.core.test_app_acks import NOW, adapter_for, free_port, retry_while_down
    from tests.core.test_replies import MllpListener
    from tests.core.test_writeback import cancelled_by_the_patient, writeback_rows

    port, clock = free_port(), FrozenClock(NOW)
    container = adapter_for(tmp_path, port, clock, hospital_retry_hours=1)
    cancelled_by_the_patient(container)
    sender = WritebackSender(container)
    retry_while_down(container, clock, until=NOW + timedelta(hours=2), sender=sender, outbox=Writeback)
    assert writeback_rows(container)[0][:2] == ("cancel", "failed")

    listing = cli(tmp_path, "writebacks", "--failed")
    assert listing.returncode == 0, listing.stderr
    assert "cancel" in listing.stdout and "ConnectionRefusedError" in listing.stdout
    resend = cli(tmp_path, "writebacks", "resend", "1")
    assert resend.returncode == 0 and "1: queued again" in resend.stdout

    listener = MllpListener(port=port)
    try:
        retry_while_down(container, clock, until=clock.now() + timedelta(minutes=1), sender=sender, outbox=Writeback)
        assert writeback_rows(container) == [("cancel", "done", 1, None)]
        [s15] = listener.received
        assert "SIU^S15^SIU_S12" in s15
    finally:
        listener.stop()


def test_hl7_errors_says_how_many_there_are_and_which_can_no_longer_be_replayed(tmp_path):
    """Three messages in the error store, the first received long ago: retention has
    since deleted its raw bytes. The listing says how many there are beyond those it
    shows, shows the most recent first on request, and says which cannot be replayed;
    replaying that one says why, in the operator's terms."""
    from adapter.clock import FrozenClock
    from adapter.housekeeping import purge_expired
    from hl7.header import read_header
    from tests.harness import migrated_container

    now = datetime.now(UTC).replace(microsecond=0)
    clock = FrozenClock(now - timedelta(days=400))
    container = migrated_container(settings_for(tmp_path), clock=clock)
    start = now + timedelta(days=2)
    ts = start.strftime("%Y%m%d%H%M%S+0000").encode()
    for control_id in ("OLD1", "NEW1", "NEW2"):
        no_start = siu("S12", control_id, start).replace(b"|^^^" + ts + b"|", b"||").replace(b"|" + ts + b"|", b"||")
        container.intake.writer.write([(read_header(no_start), no_start)])
        container.intake.process_pending()
        clock.set(now)
    purge_expired(container, now=now)
    container.engine.dispose()

    shown, newest = cli_side_by_side(tmp_path, ["hl7", "errors", "--limit", "2"],
                                     ["hl7", "errors", "--limit", "1", "--newest"])
    assert shown.returncode == 0, shown.stderr
    assert "OLD1" in shown.stdout and "NEW1" in shown.stdout and "NEW2" not in shown.stdout
    assert "2 of 3 shown, the oldest first" in shown.stdout
    assert "no: raw deleted after retention" in shown.stdout
    assert "NEW2" in newest.stdout and "OLD1" not in newest.stdout and "1 of 3 shown, the most recent first" in newest.stdout
    replay = cli(tmp_path, "hl7", "replay", "1")
    assert replay.returncode == 1
    assert "not replayable: its raw message was deleted after retention" in " ".join(replay.stdout.split())


def test_replaying_a_message_that_is_not_in_the_error_store_says_so_and_replays_nothing(tmp_path):
    """``hl7 replay`` of a message processed long ago printed "processed" with exit 0,
    which reads as a replay that worked; nothing was replayed."""
    from tests.harness import migrated_container
    from hl7.header import read_header

    container = migrated_container(settings_for(tmp_path))
    booking = siu("S12", "DONE1", datetime.now(UTC) + timedelta(days=2))
    container.intake.writer.write([(read_header(booking), booking)])
    container.intake.process_pending()
    container.engine.dispose()

    replay = cli(tmp_path, "hl7", "replay", "1")
    assert replay.returncode == 1
    assert "1: not replayed: it is processed, not in the error store" in " ".join(replay.stdout.split())


@pytest.mark.parametrize("group", [(), ("hl7",), ("audit",)])
def test_help_wraps_each_command_s_summary_to_the_terminal_not_at_the_docstring_s_line_ends(tmp_path, group):
    """The listing in ``--help`` used to break a summary where its docstring's source
    line ended ("sends due" / "notifications"), leaving half-empty lines."""
    width = 80
    result = cli(tmp_path, *group, "--help", env={"COLUMNS": str(width)})
    assert result.returncode == 0, result.stderr
    panel = result.stdout.split("Commands")[1].splitlines()[1:]
    rows = [line.strip().strip("│").rstrip() for line in panel if line.startswith("│")]
    entries: list[list[str]] = []
    for row in rows:
        if row.startswith("  "):  # no command name: the entry's text goes on
            entries[-1].append(row.strip())
        else:
            _, _, text = row.strip().partition("  ")
            entries.append([text.strip()])
    text_width = max(len(line) for entry in entries for line in entry)
    for entry in entries:
        for line, following in zip(entry, entry[1:]):
            next_word = following.split()[0]
            assert len(line) + 1 + len(next_word) > text_width, f"broken early: {line!r} / {following!r}"
