"""A facility's ``senders`` (config/facilities.yaml): its messages are taken only from
the connections named there, by address, client certificate (mutual TLS) or, over
HTTP, API token. One hospital's interface must not send as another: it would message
the other's patients, or cancel their appointments."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from adapter.db import transaction
from adapter.models import InboundMessage
from hl7.client import send_messages
from hl7.mllp import client_ssl_context
from tests.core.test_end_to_end import siu
from tests.harness import running_adapter, settings_for

START = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
SENDERS = """\
  OSP_TEST:
    senders:
      - certificate: client
      - token: test-ehr
  OTHER_HOSP:
    senders:
      - certificate: someone-else
  BY_ADDRESS:
    senders:
      - address: 10.0.0.0/8
  LOCAL:
    senders:
      - address: 127.0.0.1
"""


def config_with_senders(tmp_path: Path) -> Path:
    config = tmp_path / "config"
    shutil.copytree("config", config)
    yaml = (config / "facilities.yaml").read_text()
    (config / "facilities.yaml").write_text(yaml.replace("  LAB_CENTRALE:\n", SENDERS + "  LAB_CENTRALE:\n", 1))
    return config


def from_facility(facility: str, control_id: str) -> bytes:
    return siu("S12", control_id, START).replace(b"|CUP|OSP_TEST|", f"|CUP|{facility}|".encode(), 1)


def refusals(adapter) -> list[dict]:
    with transaction(adapter.container.sessions) as session:
        return [r.details for r in adapter.container.audit.entries(session) if r.action == "hl7_sender_refused"]


def stored(adapter) -> list[str]:
    with transaction(adapter.container.sessions) as session:
        return sorted(session.scalars(select(InboundMessage.control_id)))


def test_over_mllp_a_facility_s_messages_are_taken_only_from_its_senders(pki, tmp_path):
    settings = settings_for(tmp_path, config_dir=config_with_senders(tmp_path), mllp_tls_cert=str(pki.server_cert),
                            mllp_tls_key=str(pki.server_key), mllp_tls_client_ca=str(pki.ca))
    tls = client_ssl_context(pki.ca, pki.client_cert, pki.client_key)  # its certificate's common name: client
    with running_adapter(settings) as adapter:
        results = asyncio.run(send_messages(
            [from_facility("OSP_TEST", "OK1"), from_facility("OTHER_HOSP", "NO1"), from_facility("BY_ADDRESS", "NO2"),
             from_facility("BY_ADDRESS", "NO3"), from_facility("LOCAL", "OK2"), from_facility("UNLISTED", "OK3")],
            "127.0.0.1", adapter.mllp_port, ssl_context=tls))
        assert [r.code.value for r in results] == ["AA", "AR", "AR", "AR", "AA", "AA"]
        refused = results[1].ack.decode()
        assert "ERR|" in refused and "207" in refused and "OTHER_HOSP are not taken from this connection" in refused
        assert stored(adapter) == ["OK1", "OK2", "OK3"]
        # Once per connection and facility, however often the peer sends.
        assert refusals(adapter) == [
            {"facility": "OTHER_HOSP", "peer": "127.0.0.1, TLS client client"},
            {"facility": "BY_ADDRESS", "peer": "127.0.0.1, TLS client client"},
        ]


def test_over_http_a_facility_s_messages_are_taken_only_with_its_senders_token(tmp_path):
    with running_adapter(settings_for(tmp_path, config_dir=config_with_senders(tmp_path))) as adapter:
        def post(role: str, control_id: str) -> str:
            with adapter.client(role) as client:
                answer = client.post("/hl7/v2", content=from_facility("OSP_TEST", control_id),
                                     headers={"Content-Type": "x-application/hl7-v2+er7"})
            assert answer.status_code == 200, answer.text
            return answer.text.split("MSA|")[1][:2]

        assert post("ehr", "H1") == "AA"  # the token named test-ehr
        assert post("admin", "H2") == "AR"
        assert stored(adapter) == ["H1"]
        assert refusals(adapter) == [{"facility": "OSP_TEST", "peer": "127.0.0.1, token test-admin"}]
