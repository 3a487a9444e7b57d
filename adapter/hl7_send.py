"""``python -m adapter hl7 send``: files or directories of ER7 messages over MLLP,
with a progress bar and a summary of ACK codes; ``--dry-run`` reads them only."""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hl7.client import AckResult, MLLPConnection, send_messages, split_file
from hl7.errors import HL7Error
from hl7.header import read_header

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class NoMessage(Exception):
    """A file named on the command line holds no HL7 message."""


@dataclass(frozen=True)
class Collected:
    """The messages found, in order, each as the bytes it has in its file (they go on
    the wire unchanged, in whatever character set MSH-18 names, or none); how many
    files they came from; the files found in directories that held none (skipped)."""

    messages: list[bytes]
    files: int
    skipped: list[Path]


def _why_empty(path: Path, data: bytes) -> str:
    if data.startswith(_UTF16_BOMS):
        return f"{path}: no HL7 message: the file is UTF-16; save it as UTF-8 or in its MSH-18 character set"
    return f"{path}: no HL7 message (no line starts with MSH)"


def collect(paths: list[Path]) -> Collected:
    """Every message in the given files and (recursively) directories, in order. A
    file named that holds no message raises ``NoMessage``, one line naming it; one
    found in a directory is skipped (a README beside the messages), and listed."""
    files: list[tuple[Path, bool]] = []
    for path in paths:
        if path.is_dir():
            files.extend((p, False) for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append((path, True))
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    messages: list[bytes] = []
    skipped: list[Path] = []
    for file, named in files:
        data = file.read_bytes()
        found = split_file(data)
        if not found and named:
            raise NoMessage(_why_empty(file, data))
        if not found:
            skipped.append(file)
        messages.extend(found)
    return Collected(messages, len(files) - len(skipped), skipped)


def message_type(message: bytes) -> str:
    """MSH-9 as ``SIU^S12``, or why it cannot be read."""
    try:
        header = read_header(message)
    except HL7Error as exc:
        return f"unreadable MSH ({exc})"
    return "^".join(part for part in (header.message_code, header.trigger_event) if part)


def describe(collected: Collected) -> list[str]:
    """What a dry run prints: how many messages in how many files, by type."""
    types = Counter(message_type(message) for message in collected.messages)
    plural = "" if len(collected.messages) == 1 else "s"
    return [f"{len(collected.messages)} message{plural} in {collected.files} file{'' if collected.files == 1 else 's'}: "
            + ", ".join(f"{kind} {count}" for kind, count in types.most_common())]


def _reachable(host: str, port: int, ssl_context: ssl.SSLContext | None, timeout: float) -> str:
    """Empty when an MLLP connection opens, else why not, in one line."""

    async def probe() -> None:
        async with MLLPConnection(host, port, ssl_context=ssl_context, timeout=timeout):
            pass

    try:
        asyncio.run(probe())
    except ConnectionRefusedError:
        return f"cannot connect to the MLLP listener at {host}:{port}: connection refused (is that the port?)"
    except asyncio.TimeoutError:
        return f"cannot connect to the MLLP listener at {host}:{port}: no answer within {timeout:g} s"
    except OSError as exc:
        return f"cannot connect to the MLLP listener at {host}:{port}: {exc.strerror or exc}"
    return ""


def send_files(
    paths: list[Path], *, host: str, port: int, connections: int, rate: float | None,
    ssl_context: ssl.SSLContext | None = None, timeout: float, console: Console, dry_run: bool = False,
) -> int:
    """Send, show progress, print the summary; the exit code is 0 only when every
    message was accepted: AA, or CA in enhanced mode, or sent with MSH-15 NE (no
    ACK expected) or ER and no error ACK came (``AckResult.accepted``); 2 when
    there is nothing to send or the listener cannot be reached. ``dry_run`` reads
    the files and says what they hold, without connecting."""
    try:
        collected = collect(paths)
    except (OSError, NoMessage) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
        return 2
    for path in collected.skipped:
        console.print(f"skipped {escape(str(path))}: no HL7 message in it", soft_wrap=True)
    messages = collected.messages
    if not messages:
        console.print("no messages found (each must start with an MSH segment)")
        return 2
    if dry_run:
        for line in describe(collected):
            console.print(escape(line), soft_wrap=True)
        return 0
    if why := _reachable(host, port, ssl_context, timeout):
        console.print(f"[red]{escape(why)}[/red]", soft_wrap=True)
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
            console.print(f"message {result.index + 1} (MSH-10 {escape(result.control_id or '?')}): {escape(why)}",
                          soft_wrap=True)
    console.print("ACKs: " + ", ".join(f"{code} {count}" for code, count in sorted(codes.items())))
    return 0 if all(result.accepted for result in results) else 1
