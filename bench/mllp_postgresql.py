"""MLLP on PostgreSQL: messages per second and ACK latency through the real adapter
(``ack_timing`` stored: each ACK after its message's durable commit) on PostgreSQL
and on SQLite in the same run, 1 and 8 connections each waiting for its ACK.

PostgreSQL is the server on 127.0.0.1:5432 (a fresh database per run, dropped
after), reached directly and, when ``BENCH_PG_RTT_MS`` is set (e.g. ``0.5``), a
second time through a proxy that delays each packet by half that each way: a
database on another host, where each round trip of the ACK's write costs that
much. Run by hand (``.venv/bin/python -m bench.mllp_postgresql``): ``make bench``
runs bench/mllp.py, on SQLite, and keeps to its time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from bench.common import SECONDS, adapter_process, free_port, header, python_server
from bench.mllp import Load, Messages, measure
from tests.harness import fresh_pg_database

RTT_MS = float(os.environ.get("BENCH_PG_RTT_MS", "0") or 0)

DELAY_PROXY = r"""
import os, queue, socket, threading, time
listen, target, delay = int(os.environ["BENCH_PORT"]), int(os.environ["BENCH_TARGET"]), float(os.environ["BENCH_DELAY_S"])
def pump(source, sink):
    chunks = queue.Queue()
    def read():
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            chunks.put((time.perf_counter() + delay, data))
            if not data:
                return
    def write():
        while True:
            due, data = chunks.get()
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            try:
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return
    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=write, daemon=True).start()
server = socket.create_server(("127.0.0.1", listen))
while True:
    client, _ = server.accept()
    upstream = socket.create_connection(("127.0.0.1", target))
    for each in (client, upstream):
        each.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pump(client, upstream)
    pump(upstream, client)
"""


@contextlib.contextmanager
def postgresql(rtt_ms: float) -> Iterator[str]:
    """A fresh database's URL; with ``rtt_ms``, reached through the delaying proxy."""
    with fresh_pg_database("bench_mllp") as url:
        if not rtt_ms:
            yield url
            return
        port = free_port()
        with python_server(DELAY_PROXY, port, env={"BENCH_TARGET": "5432", "BENCH_DELAY_S": str(rtt_ms / 2000)}):
            yield url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{port}/")


def adapter_on(database_url: str | None, messages: Messages) -> dict[int, Load]:
    with adapter_process(extra_env={"ADAPTER_DATABASE_URL": database_url} if database_url else None) as adapter:
        return {c: measure(adapter.mllp_port, c, messages) for c in (1, 8)}


def main() -> None:
    header("MLLP: the adapter's ACK path on PostgreSQL vs on SQLite (WAL)")
    messages = Messages()
    rows: dict[str, dict[int, Load]] = {}
    with postgresql(0) as url:
        rows["PostgreSQL, local"] = adapter_on(url, messages)
    if RTT_MS:
        with postgresql(RTT_MS) as url:
            rows[f"PostgreSQL, {RTT_MS:g} ms away"] = adapter_on(url, messages)
    rows["SQLite WAL"] = adapter_on(None, messages)

    print(f"\n{'database':28}{'conns':>6}{'msg/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'not AA':>8}")
    for name, by_conn in rows.items():
        for c, load in by_conn.items():
            print(f"{name:28}{c:>6}{load.rate:>10.0f}{load.p(50) * 1e3:>9.2f}{load.p(99) * 1e3:>9.2f}{load.rejected:>8}")
    local, sqlite = rows["PostgreSQL, local"], rows["SQLite WAL"]
    print(f"\nPostgreSQL (local) / SQLite at 1 conn: {local[1].rate / sqlite[1].rate:.2f}, at 8: "
          f"{local[8].rate / sqlite[8].rate:.2f}   ({SECONDS:g} s per figure)")


if __name__ == "__main__":
    main()
