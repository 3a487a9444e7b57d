"""Write-back over MLLP (adapter.writeback.deliver_over_mllp) against real sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest

from adapter.writeback import WritebackError, deliver_over_mllp
from hl7.facilities import WritebackEndpoint


def test_a_hospital_listener_that_never_reads_fails_the_attempt_within_the_time_out():
    async def scenario() -> None:
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel accepts, nobody reads
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            endpoint = WritebackEndpoint(host="127.0.0.1", port=listener.getsockname()[1])
            payload = b"MSH|^~\\&|ADAPTER|NOTIFY|A|B|2025||SIU^S15^SIU_S12|W1|P|2.5\rNTE|1||" + b"x" * 8_000_000 + b"\r"
            await asyncio.wait_for(deliver_over_mllp(endpoint, payload, timeout=0.5), 10)

    with pytest.raises(WritebackError, match="TimeoutError"):
        asyncio.run(scenario())
