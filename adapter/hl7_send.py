"""``python -m adapter hl7 send``: files or directories of ER7 messages over MLLP,
with a progress bar and a summary of ACK codes."""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hl7.client import AckResult, send_messages, split_file


def collect(paths: list[Path]) -> list[bytes]:
    """Every message in the given files and (recursively) directories, in order,
    as the bytes it has in its file: they go on the wire unchanged, in whatever
    character set MSH-18 names (or none)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    messages: list[bytes] = []
    for file in files:
        messages.extend(split_file(file.read_bytes()))
    return messages


def send_files(
    paths: list[Path], *, host: str, port: int, connections: int, rate: float | None,
    ssl_context: ssl.SSLContext | None = None, timeout: float, console: Console,
) -> int:
    """Send, show progress, print the summary; the exit code is 0 only when every
    message was accepted: AA, or CA in enhanced mode, or sent with MSH-15 NE (no
    ACK expected) or ER and no error ACK came (``AckResult.accepted``)."""
    try:
        messages = collect(paths)
    except OSError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    if not messages:
        console.print("no messages found (each must start with an MSH segment)")
        return 2
    with Progress(TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("send", total=len(messages))

        def tick(_: AckResult) -> None:
            bar.advance(task)

        results = asyncio.run(
            send_messages(messages, host, port, connections=connections, rate=rate, ssl_context=ssl_context, timeout=timeout,
                          on_ack=tick)
        )
    codes = Counter(result.outcome for result in results)
    for result in results:
        if not result.accepted:
            why = result.error or (result.code.value if result.code else "")
            console.print(f"message {result.index + 1} (MSH-10 {result.control_id or '?'}): {why}")
    console.print("ACKs: " + ", ".join(f"{code} {count}" for code, count in sorted(codes.items())))
    return 0 if all(result.accepted for result in results) else 1
