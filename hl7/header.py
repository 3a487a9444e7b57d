"""A fast reader for the MSH segment, with no full parse (HL7 v2.5 §2.14.9).

This is what the ACK path reads: separators, who sent it, what it is and its
control id. It splits one line of bytes, so it costs microseconds, not the
milliseconds of a full hl7apy parse (see ``hl7/PARSING.md``).

>>> h = read_header(b"MSH|^~\\\\&|CUP|OSP|ADAPTER|APP|20250101120000||SIU^S12^SIU_S12|42|P|2.5\\r")
>>> (h.message_code, h.trigger_event, h.control_id, h.sender)
('SIU', 'S12', '42', 'CUP^OSP')
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from functools import lru_cache

from hl7.errors import CharsetError, HeaderError

_SEGMENT_ENDS = (b"\r", b"\n")
_BOM = b"\xef\xbb\xbf"


def _windows_1252_table() -> str:
    """Windows-1252 as the WHATWG Encoding Standard reads it: Latin-1, except that
    0x80-0x9F are the typographic characters Windows puts there (’ “ ” € …), the five
    bytes Windows leaves undefined reading as Latin-1 does."""
    chars = []
    for byte in range(256):
        try:
            chars.append(bytes([byte]).decode("cp1252"))
        except UnicodeDecodeError:
            chars.append(chr(byte))
    return "".join(chars)


_WIN1252_DECODE = _windows_1252_table()
_WIN1252_ENCODE = codecs.charmap_build(_WIN1252_DECODE)
LATIN_1 = "hl7_windows_1252"


def _find_latin_1(name: str) -> codecs.CodecInfo | None:
    if name != LATIN_1:
        return None
    return codecs.CodecInfo(
        name=LATIN_1,
        encode=lambda text, errors="strict": codecs.charmap_encode(text, errors, _WIN1252_ENCODE),
        decode=lambda data, errors="strict": codecs.charmap_decode(data, errors, _WIN1252_DECODE),
    )


# ``8859/1`` and undeclared bytes that are not UTF-8 are read as browsers read
# ISO-8859-1 (WHATWG): Windows programs label their text 8859/1 or nothing, and
# write D’Alò with 0x92, a control character in ISO-8859-1 proper. Every byte
# Latin-1 prints reads the same.
codecs.register(_find_latin_1)

# HL7 table 0211 (MSH-18) names → Python codecs, with the spellings senders use
# beside the table's. Empty/ASCII is handled apart.
_CHARSETS: dict[str, str] = {
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "8859/1": LATIN_1,
    "ISO-8859-1": LATIN_1,
    "ISO8859-1": LATIN_1,
    "ISO_8859-1": LATIN_1,
    "LATIN1": LATIN_1,
    "LATIN-1": LATIN_1,
    "WINDOWS-1252": LATIN_1,
    "CP1252": LATIN_1,
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
}


@dataclass(frozen=True)
class Separators:
    """MSH-1 and MSH-2 (HL7 v2.5 §2.5.4). ``truncation`` is v2.7's fifth
    encoding character, empty before."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it appears on the wire."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


@dataclass(frozen=True)
class MessageHeader:
    """What MSH says about a message. Field values are as on the wire (still
    escaped, components joined), except the split-out MSH-9 parts.

    ``sender`` is ``MSH-3^MSH-4`` using each HD's namespace id (HD-1, or HD-2 when
    HD-1 is empty): together with ``control_id`` it identifies a message, and a
    repeat of both is a retransmission (HL7 v2.5 §2.10.1).
    """

    separators: Separators
    sending_application: str  # MSH-3
    sending_facility: str  # MSH-4
    receiving_application: str  # MSH-5
    receiving_facility: str  # MSH-6
    message_datetime: str  # MSH-7
    message_code: str  # MSH-9.1
    trigger_event: str  # MSH-9.2
    message_structure: str  # MSH-9.3
    control_id: str  # MSH-10
    processing_id: str  # MSH-11
    version: str  # MSH-12 (VID-1)
    accept_ack_type: str  # MSH-15: AL, NE, ER, SU or empty
    application_ack_type: str  # MSH-16
    charset: str  # MSH-18, first repetition
    codec: str  # the Python codec the header was (and the body should be) decoded with

    @property
    def sender(self) -> str:
        return f"{self._namespace(self.sending_application)}^{self.facility}"

    @property
    def facility(self) -> str:
        """MSH-4 namespace id: the key into ``config/facilities.yaml``."""
        return self._namespace(self.sending_facility)

    @property
    def enhanced_mode(self) -> bool:
        """Enhanced acknowledgement mode is in use when MSH-15 or MSH-16 is
        valued (HL7 v2.5 §2.9.3); otherwise original mode (§2.9.2)."""
        return bool(self.accept_ack_type or self.application_ack_type)

    def _namespace(self, hd: str) -> str:
        parts = hd.split(self.separators.component)
        return parts[0] or (parts[1] if len(parts) > 1 else "")


def codec_for(charset: str) -> str | None:
    """The Python codec for an MSH-18 value (HL7 table 0211); ``None`` for an
    empty or ASCII charset, which means "try UTF-8, then Latin-1"."""
    name = charset.strip().upper()
    if name in ("", "ASCII"):
        return None
    if name not in _CHARSETS:
        raise CharsetError(f"unsupported character set in MSH-18: {charset!r}", code="103")
    return _CHARSETS[name]


def _first_segment(raw: bytes) -> bytes:
    ends = [i for i in (raw.find(e) for e in _SEGMENT_ENDS) if i >= 0]
    return raw[: min(ends)] if ends else raw


def strip_leading(raw: bytes) -> bytes:
    """``raw`` without a byte order mark and the blanks or line ends before its first segment."""
    if raw.startswith(_BOM):
        raw = raw[3:]
    return raw.lstrip(b"\r\n\t ")


def _is_separator(char: bytes) -> bool:
    """Separators are printable ASCII punctuation (HL7 v2.5 §2.5.4), so an
    ACK that echoes them is readable in any character set."""
    return len(char) == 1 and 0x21 <= char[0] <= 0x7E and not char.isalnum()


def read_separators(raw: bytes) -> Separators:
    """MSH-1 and MSH-2 from the start of a message. Raises ``HeaderError``."""
    raw = strip_leading(raw)
    if not raw.startswith(b"MSH") or len(raw) < 8:
        raise HeaderError("message does not start with an MSH segment")
    end = raw.find(raw[3:4], 4)
    return _separators(raw[3:end] if end >= 0 else raw[3:4])


@lru_cache(maxsize=64)
def _separators(declared: bytes) -> Separators:
    """The separators of MSH-1 and MSH-2 as declared (``|^~\\&``): a sender sends the same
    ones in every message, so each is checked once (the ACK path reads every header)."""
    field = declared[:1]
    if not _is_separator(field) or field == b"\\":
        raise HeaderError(f"invalid field separator in MSH-1: {field!r}", code="102")
    chars = declared[1:].decode("latin-1")
    if not 4 <= len(chars) <= 5 or len(set(chars + field.decode("latin-1"))) != len(chars) + 1:
        raise HeaderError(f"invalid encoding characters in MSH-2: {chars!r}", code="102")
    if not all(_is_separator(c.encode("latin-1")) for c in chars):
        raise HeaderError(f"invalid encoding characters in MSH-2: {chars!r}", code="102")
    return Separators(field.decode("latin-1"), chars[0], chars[1], chars[2], chars[3], chars[4:5])


def read_header(raw: bytes) -> MessageHeader:
    """Read MSH of one message (bytes as framed). Segment ends may be CR, LF or
    CRLF. Raises ``HeaderError`` when the message does not start with a
    well-formed MSH carrying MSH-9 and MSH-10, ``CharsetError`` for an unknown
    MSH-18."""
    return _read_header(raw, lenient=False)


def read_header_leniently(raw: bytes) -> MessageHeader:
    """What MSH says, for answering a message :func:`read_header` refuses: an unknown
    MSH-18 is left out (the fields are read as UTF-8, else Latin-1) and MSH-9 or MSH-10
    may be empty. Raises ``HeaderError`` only when MSH-1 and MSH-2 cannot be read."""
    return _read_header(raw, lenient=True)


def _read_header(raw: bytes, *, lenient: bool) -> MessageHeader:
    sep = read_separators(raw)
    line = _first_segment(strip_leading(raw))
    if b"\x00" in line:  # no HL7 value holds one; PostgreSQL text refuses it
        if not lenient:
            raise HeaderError("MSH contains a NUL byte", code="102")
        line = line.replace(b"\x00", b"")
    fields = line.split(sep.field.encode("latin-1"))
    # fields[0] is "MSH", fields[1] is MSH-2, so MSH-n is fields[n - 1].
    charset_raw = fields[17] if len(fields) > 17 else b""
    charset = charset_raw.decode("latin-1").split(sep.repetition)[0].strip()
    try:
        codec = codec_for(charset)
    except CharsetError:
        if not lenient:
            raise
        charset, codec = "", None
    if codec is None:
        codec = _guess_codec(line)

    # One decode for the line: the separators are ASCII, never inside a character of
    # UTF-8 or of a single-byte set, so splitting after decoding splits the same.
    texts = line.decode(codec, "replace").split(sep.field)

    def f(n: int) -> str:
        return texts[n - 1] if len(texts) >= n else ""

    msh9 = f(9).split(sep.component)
    code = msh9[0].strip()
    if not code and not lenient:
        raise HeaderError("MSH-9 message type is empty", code="101")
    control_id = f(10).strip()
    if not control_id and not lenient:
        raise HeaderError("MSH-10 message control id is empty", code="101")
    return MessageHeader(
        separators=sep,
        sending_application=f(3),
        sending_facility=f(4),
        receiving_application=f(5),
        receiving_facility=f(6),
        message_datetime=f(7),
        message_code=code,
        trigger_event=msh9[1].strip() if len(msh9) > 1 else "",
        message_structure=msh9[2].strip() if len(msh9) > 2 else "",
        control_id=control_id,
        processing_id=f(11).split(sep.component)[0].strip(),
        version=f(12).split(sep.component)[0].strip(),
        accept_ack_type=f(15).strip(),
        application_ack_type=f(16).strip(),
        charset=charset,
        codec=codec,
    )


def _guess_codec(data: bytes) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return LATIN_1
    return "utf-8"


def decode(raw: bytes, header: MessageHeader) -> str:
    """The message as text, decoded per MSH-18 (HL7 v2.5 §2.14.9.18):
    ``UNICODE UTF-8`` strictly as UTF-8, ``8859/n`` as ISO 8859-n, and an empty
    (or ``ASCII``) charset as UTF-8 when the bytes are valid UTF-8, else Latin-1 —
    what Italian hospitals send in practice. Latin-1 is read as Windows-1252 (see
    ``LATIN_1``). Raises ``CharsetError`` when the
    bytes are not valid in the declared character set.

    >>> h = read_header("MSH|^~\\\\&|A|B|||||ADT^A08|1|P|2.5||||||8859/1\\r".encode())
    >>> decode("MSH|^~\\\\&|A|B|||||ADT^A08|1|P|2.5||||||8859/1\\rPID|||1||Nicolò".encode("latin-1"), h)[-6:]
    'Nicolò'
    """
    declared = codec_for(header.charset)
    if declared is None:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode(LATIN_1)
    try:
        return codecs.decode(raw, declared)
    except UnicodeDecodeError as exc:
        raise CharsetError(
            f"bytes at offset {exc.start} are not valid {header.charset} (MSH-18)"
        ) from None
