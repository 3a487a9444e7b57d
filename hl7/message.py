"""A light parsed message: segments, fields, repetitions, components,
subcomponents, with escape sequences decoded on access (HL7 v2.5 §2.5, §2.7).

Splitting is lazy and plain ``str.split``: a 6-segment SIU parses in about
10 µs, against about 7 ms for hl7apy's ``parse_message`` (``hl7/PARSING.md``).
The mapper reads values by position, so no message structure or version
definition is needed; unknown segments (Z-segments included) are kept and
simply not read.

>>> m = parse("MSH|^~\\\\&|CUP|OSP|||||SIU^S12|1|P|2.5\\rPID|||123^^^OSP^MR~RSSMRA80A01H501U^^^NNITA^NN||D\\\\E\\\\'Al\\\\XF2\\\\^Nicol\\\\XC3B2\\\\")
>>> pid = m.segment("PID")
>>> [r.component(1) for r in pid.repetitions(3)]
['123', 'RSSMRA80A01H501U']
>>> pid.value(5, 1), pid.value(5, 2)
("D\\\\'Alò", 'Nicolò')
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from hl7.errors import HeaderError
from hl7.header import Separators, read_separators


def segment_lines(text: str) -> list[str]:
    """``text`` split at its segment ends: CR, LF or CRLF, in any mix. Plain ``str``
    methods, not a regular expression: both hold the GIL for the whole text, and for
    a report of 10 MB the expression took about 45 ms, an ACK's wait, where these
    take a few."""
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return text.split("\r")


def unescape(text: str, sep: Separators, charset_codec: str = "utf-8") -> str:
    """Decode HL7 escape sequences (HL7 v2.5 §2.7): ``\\F\\ \\S\\ \\T\\ \\R\\
    \\E\\`` (and v2.7 ``\\P\\``) to the separators, ``\\Xhh...\\`` to the
    characters those bytes are in the message's character set (or UTF-16 code units, when
    a high byte is NUL), ``\\.br\\`` to a
    line break; highlighting and character-set switches are dropped; anything
    else (local ``\\Z...\\`` escapes, a stray escape character) is kept as written."""
    esc = sep.escape
    if esc not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c != esc:
            out.append(c)
            i += 1
            continue
        end = text.find(esc, i + 1)
        if end < 0:
            out.append(text[i:])
            break
        seq = text[i + 1 : end]
        out.append(_escape_value(seq, sep, charset_codec, text[i : end + 1]))
        i = end + 1
    return "".join(out)


def _escape_value(seq: str, sep: Separators, codec: str, written: str) -> str:
    simple = {
        "F": sep.field,
        "S": sep.component,
        "T": sep.subcomponent,
        "R": sep.repetition,
        "E": sep.escape,
        "P": sep.truncation,
        ".br": "\n",
        "H": "",
        "N": "",
    }
    if seq in simple:
        return simple[seq]
    if seq[:1] == "X" and len(seq) > 1 and len(seq) % 2 == 1:
        try:
            data = bytes.fromhex(seq[1:])
        except ValueError:
            return written
        if len(data) % 2 == 0 and 0 in data[::2]:
            # Dedalus HELIOS and others write a character as its UTF-16 code unit (\X00E0\
            # for à, in an 8859/1 message): no text holds a NUL, so a NUL high byte says so.
            try:
                return data.decode("utf-16-be")
            except UnicodeDecodeError:
                pass
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            return data.decode("latin-1")
    if _SWITCH.fullmatch(seq):
        return ""  # character set switches (\\Cxxyy\\, \\Mxxyyzz\\): not representable, dropped
    return written


_SWITCH = re.compile(r"C[0-9A-Fa-f]{4}|M[0-9A-Fa-f]{4}(?:[0-9A-Fa-f]{2})?")


def escape(text: str, sep: Separators) -> str:
    """The inverse of ``unescape`` for separators and line breaks, for values we
    write into messages (ACK ERR text, outbound write-back)."""
    e = sep.escape
    out = text.replace(e, f"{e}E{e}")
    for ch, code in (
        (sep.field, "F"),
        (sep.component, "S"),
        (sep.subcomponent, "T"),
        (sep.repetition, "R"),
    ):
        out = out.replace(ch, f"{e}{code}{e}")
    if sep.truncation:
        out = out.replace(sep.truncation, f"{e}P{e}")
    out = out.replace("\r\n", "\n").replace("\r", "\n").replace("\n", f"{e}.br{e}")
    if _CONTROL.search(out):  # MLLP's block characters among them: they would cut the frame
        out = _CONTROL.sub(lambda m: f"{e}X{ord(m.group()):02X}{e}", out)
    return out


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tab and line breaks aside


@dataclass(frozen=True)
class Repetition:
    """One repetition of a field: components and their subcomponents, raw."""

    raw: str
    sep: Separators
    codec: str = "utf-8"

    def component(self, n: int, subcomponent: int = 1) -> str:
        """Component ``n`` (1-based), subcomponent ``subcomponent``, unescaped."""
        comps = self.raw.split(self.sep.component)
        if n > len(comps):
            return ""
        subs = comps[n - 1].split(self.sep.subcomponent)
        if subcomponent > len(subs):
            return ""
        return unescape(subs[subcomponent - 1], self.sep, self.codec)

    def components(self) -> list[str]:
        """Every component, unescaped, subcomponents left joined with ``&``."""
        return [unescape(c, self.sep, self.codec) for c in self.raw.split(self.sep.component)]


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment. ``fields[0]`` is the segment name; for MSH, ``fields[1]`` is
    MSH-1 (the field separator) so that ``field(n)`` is always field ``n``."""

    fields: tuple[str, ...]
    sep: Separators
    codec: str = "utf-8"

    @property
    def name(self) -> str:
        return self.fields[0]

    def field(self, n: int) -> str:
        """Field ``n`` as written (escaped, repetitions joined)."""
        return self.fields[n] if n < len(self.fields) else ""

    def repetitions(self, n: int) -> list[Repetition]:
        """Field ``n``'s repetitions; an empty field gives an empty list. MSH-2
        is returned whole, never split."""
        raw = self.field(n)
        if not raw:
            return []
        if self.name == "MSH" and n in (1, 2):
            return [Repetition(raw, self.sep, self.codec)]
        return [Repetition(r, self.sep, self.codec) for r in raw.split(self.sep.repetition)]

    def value(self, n: int, component: int = 1, subcomponent: int = 1, repetition: int = 1) -> str:
        """One unescaped value: field ``n``, repetition, component, subcomponent
        (all 1-based, HL7 position notation ``SEG-n.c.s``)."""
        raw = self.fields[n] if n < len(self.fields) else ""
        if (n == 1 or n == 2) and self.fields[0] == "MSH":
            return raw
        if not raw:
            return ""
        # Split as repetitions() and Repetition.component() do, without building them:
        # the mapper reads ~17 values per message.
        sep = self.sep
        reps = raw.split(sep.repetition)
        if repetition > len(reps):
            return ""
        comps = reps[repetition - 1].split(sep.component)
        if component > len(comps):
            return ""
        subs = comps[component - 1].split(sep.subcomponent)
        if subcomponent > len(subs):
            return ""
        return unescape(subs[subcomponent - 1], sep, self.codec)


@dataclass(frozen=True)
class Message:
    """A parsed message: its separators and segments in order. A segment is kept as
    its text and split into fields when read, so a report of 100,000 OBX segments
    leaves no 100,000 objects behind for the garbage collector to scan (a collection
    stops every thread, the one that sends ACKs too)."""

    sep: Separators
    lines: tuple[str, ...]
    codec: str = "utf-8"
    _first: dict[str, Segment | None] = field(default_factory=dict, compare=False, repr=False)

    @property
    def segments(self) -> Iterator[Segment]:
        """Every segment, in order (read anew on each pass)."""
        return (self._segment(line) for line in self.lines)

    @property
    def msh(self) -> Segment:
        found = self.segment("MSH")
        assert found is not None  # parse() refuses a message without it
        return found

    def segment(self, name: str) -> Segment | None:
        """The first segment called ``name``, or ``None`` (remembered: the mapper asks
        for the same few segments more than once)."""
        if name not in self._first:
            self._first[name] = next((self._segment(line) for line in self.lines if self._named(line, name)), None)
        return self._first[name]

    def all(self, name: str) -> list[Segment]:
        return [self._segment(line) for line in self.lines if self._named(line, name)]

    def _named(self, line: str, name: str) -> bool:
        return line.startswith(name) and (len(line) == len(name) or line[len(name)] == self.sep.field)

    def _segment(self, line: str) -> Segment:
        parts = line.split(self.sep.field)
        if parts[0] == "MSH":
            parts.insert(1, self.sep.field)
        return Segment(tuple(parts), self.sep, self.codec)


def parse(text: str, codec: str = "utf-8") -> Message:
    """Split decoded message text into segments. Segment ends may be CR, LF or
    CRLF; blank lines are skipped. ``codec`` is the message's character set, used
    for ``\\Xhh\\`` escapes. Raises ``HeaderError`` when the text does not start
    with MSH."""
    text = text.lstrip("\ufeff\r\n\t ")
    sep = read_separators(text[:16].encode("latin-1", "replace"))
    message = Message(sep, tuple(line for line in segment_lines(text) if line.strip()), codec)
    if not message.lines or not message._named(message.lines[0], "MSH"):
        raise HeaderError("message does not start with an MSH segment")
    return message
