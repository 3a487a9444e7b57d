"""SMS length and cost: GSM-7 versus UCS-2 and segment counting (3GPP TS 23.038 §6.2.1,
concatenation overhead per TS 23.040 §9.2.3.24.1).

A message whose every character is in the GSM-7 default alphabet or its extension table is
sent as GSM-7: 160 septets in one part, 153 per part when split; extension characters
(``€ [ ] { } ^ ~ \\ |`` and form feed) take two septets and are never split across parts.
Any other character switches the whole message to UCS-2: 70 UTF-16 units in one part, 67 per
part; a character outside the BMP (most emoji) takes two units and is never split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_PER_PART = 160, 153
UCS2_SINGLE, UCS2_PER_PART = 70, 67


class Encoding(StrEnum):
    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


@dataclass(frozen=True)
class SegmentCount:
    """``chars`` is in the encoding's units (septets for GSM-7, UTF-16 units for UCS-2);
    ``offending`` is the first character that forced UCS-2, and ``offending_index`` its
    position in the text (both ``None`` for GSM-7). An empty text has 0 segments."""

    encoding: Encoding
    segments: int
    chars: int
    offending: str | None = None
    offending_index: int | None = None


def _gsm7_weight(char: str) -> int | None:
    if char in GSM7_BASIC:
        return 1
    if char in GSM7_EXTENSION:
        return 2
    return None


def _parts(weights: list[int], single: int, per_part: int) -> int:
    total = sum(weights)
    if total == 0:
        return 0
    if total <= single:
        return 1
    parts, used = 1, 0
    for weight in weights:
        if used + weight > per_part:
            parts, used = parts + 1, 0
        used += weight
    return parts


def count_segments(text: str) -> SegmentCount:
    """How many SMS parts ``text`` costs, and why.

    >>> count_segments("Risponda 1 per confermare, 2 per annullare: è facile.")
    SegmentCount(encoding=<Encoding.GSM7: 'GSM-7'>, segments=1, chars=53, offending=None, offending_index=None)
    >>> count_segments("L’appuntamento").offending
    '’'
    """
    weights: list[int] = []
    for index, char in enumerate(text):
        weight = _gsm7_weight(char)
        if weight is None:
            units = [2 if ord(c) > 0xFFFF else 1 for c in text]
            return SegmentCount(
                Encoding.UCS2, _parts(units, UCS2_SINGLE, UCS2_PER_PART), sum(units), char, index
            )
        weights.append(weight)
    return SegmentCount(Encoding.GSM7, _parts(weights, GSM7_SINGLE, GSM7_PER_PART), sum(weights))


def estimate_cost(text_or_count: str | SegmentCount, price_per_segment: Decimal) -> Decimal:
    """Segments times the configured price of one segment.

    >>> estimate_cost("Ciao", Decimal("0.0750"))
    Decimal('0.0750')
    """
    count = (
        text_or_count if isinstance(text_or_count, SegmentCount) else count_segments(text_or_count)
    )
    return price_per_segment * count.segments


@dataclass(frozen=True)
class TemplateFitProblem:
    """A rendered sample that needs more parts than allowed. ``sample`` names it (the
    template id, or its position); the text itself is not repeated here."""

    sample: str
    segments: int
    max_segments: int
    encoding: Encoding
    offending: str | None
    offending_index: int | None

    def __str__(self) -> str:
        why = ""
        if self.offending is not None:
            why = (
                f"; character {self.offending!r} (U+{ord(self.offending):04X}) at position "
                f"{self.offending_index} is not in GSM-7 and forces UCS-2"
            )
        return (
            f"{self.sample}: {self.segments} SMS parts ({self.encoding}), "
            f"at most {self.max_segments} allowed{why}"
        )


def check_template_fits(
    rendered_samples: Mapping[str, str] | Iterable[str], max_segments: int
) -> list[TemplateFitProblem]:
    """Every sample (a template rendered with realistic, longest-case values) that renders
    to more than ``max_segments`` parts, with the character that forced UCS-2 if any.

    >>> [str(p) for p in check_template_fits({"it/reminder": "È domani " * 10}, 1)]
    ["it/reminder: 2 SMS parts (UCS-2), at most 1 allowed; character 'È' (U+00C8) at position 0 is not in GSM-7 and forces UCS-2"]
    """
    items = (
        rendered_samples.items()
        if isinstance(rendered_samples, Mapping)
        else ((f"sample {i}", text) for i, text in enumerate(rendered_samples))
    )
    problems = []
    for name, text in items:
        count = count_segments(text)
        if count.segments > max_segments:
            problems.append(
                TemplateFitProblem(
                    name, count.segments, max_segments, count.encoding,
                    count.offending, count.offending_index,
                )
            )
    return problems
