"""HL7 batches received whole (HL7 v2.5 §2.10.3): ``[FHS] BHS {MSH...} BTS [FTS]`` in one
MLLP frame or one ``POST /hl7/v2``, as laboratories send a night's results. Each message
is handled as if it came alone; the answer is a batch of their ACKs, in order, under a
BHS whose BHS-12 names the batch acknowledged (§2.10.3.3, "the receiving system
acknowledges all messages").

>>> raw = b"BHS|^~\\\\&|LAB|OSP|ADAPTER|NOTIFY|20260101||||B7\\rMSH|^~\\\\&|LAB|OSP\\rPID|1\\rBTS|1\\r"
>>> is_batch(raw), [m.decode() for m in messages_of(raw)]
(True, ['MSH|^~\\\\&|LAB|OSP\\rPID|1\\r'])
>>> print(batch_ack(raw, [b"MSH|^~\\\\&|ADAPTER|NOTIFY|LAB|OSP\\rMSA|AA|1\\r"], now="20260102", control_id="X1")
...       .decode().replace("\\r", "\\n"), end="")
BHS|^~\\&|ADAPTER|NOTIFY|LAB|OSP|20260102||||X1|B7
MSH|^~\\&|ADAPTER|NOTIFY|LAB|OSP
MSA|AA|1
BTS|1
"""

from __future__ import annotations

import re

from hl7.client import split_file
from hl7.header import strip_leading

_HEADS = (b"FHS", b"BHS")
_SEGMENT = re.compile(rb"[^\r\n]+")


def is_batch(raw: bytes) -> bool:
    """Whether ``raw`` opens with a file or batch header (after blanks or a byte order mark)."""
    return strip_leading(raw[:64])[:3] in _HEADS


def messages_of(raw: bytes) -> list[bytes]:
    """The messages of a batch, in order, each with the bytes it has in the batch."""
    return split_file(raw)


def batch_ack(raw: bytes, acks: list[bytes], *, now: str, control_id: str) -> bytes:
    """The answer to the batch ``raw``: its FHS and BHS turned round (sender and receiver
    swapped, a new control id in FHS-11/BHS-11, the sender's in FHS-12/BHS-12), the
    ``acks`` of its messages in order, then BTS (how many) and FTS when it had an FHS."""
    heads = {}
    for match in _SEGMENT.finditer(strip_leading(raw)):  # up to the first message, not the whole batch
        line = match.group()
        if line[:3] in _HEADS and line[:3] not in heads:
            heads[line[:3]] = line.decode("latin-1")
        elif line[:3] == b"MSH":
            break
    out = [_turned(heads[name], now, control_id) for name in _HEADS if name in heads]
    if b"BHS" not in heads:  # FHS alone: a batch header is still owed to the messages
        out.append(_turned("BHS" + heads[b"FHS"][3:], now, control_id))
    body = "\r".join(out) + "\r"
    tail = f"BTS|{len(acks)}\r" + ("FTS|1\r" if b"FHS" in heads else "")
    return body.encode("latin-1") + b"".join(ack if ack.endswith(b"\r") else ack + b"\r" for ack in acks) + tail.encode()


def _turned(segment: str, now: str, control_id: str) -> str:
    """An FHS or BHS answered: fields 3-4 and 5-6 swapped, 7 ``now``, 11 ``control_id``,
    12 the incoming 11 (``fields[n - 1]`` is field n: field 1 is the separator)."""
    separator = segment[3:4] or "|"
    fields = segment.split(separator)
    fields += [""] * (12 - len(fields))
    answered = [fields[0], fields[1] or "^~\\&", fields[4], fields[5], fields[2], fields[3], now, "", "", "",
                control_id, fields[10]]
    return separator.join(answered).rstrip(separator)
